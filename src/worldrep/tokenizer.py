"""The reference character tokenizer as a lookup table.

98 ids: `<pad>`=0, `<unk>`=1, `<bos>`=2, `<eos>`=3, then the 94 printable ASCII characters in
the reference order (punctuation, upper case, lower case, digits last). Encoding a batch of
compact task texts is one numpy byte view plus one table lookup; the HF export gives the same
ids for any task row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<eos>"]
CHARS = (
    "!\"#$%&'()*+,-./:;<=>?@"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "[\\]^_`"
    "abcdefghijklmnopqrstuvwxyz"
    "{|}~"
    "0123456789"
)
VOCAB: list[str] = SPECIAL_TOKENS + list(CHARS)
VOCAB_SIZE = len(VOCAB)
assert VOCAB_SIZE == 98

# byte value -> token id; byte 0 is numpy's padding of fixed-width strings and maps to <pad>.
_BYTE_TO_ID = np.full(256, UNK, dtype=np.uint8)
_BYTE_TO_ID[0] = PAD
for _i, _c in enumerate(CHARS):
    _BYTE_TO_ID[ord(_c)] = _i + len(SPECIAL_TOKENS)
# token id -> byte; specials decode to nothing (0 bytes are stripped).
_ID_TO_BYTE = np.zeros(256, dtype=np.uint8)
for _i, _c in enumerate(CHARS):
    _ID_TO_BYTE[_i + len(SPECIAL_TOKENS)] = ord(_c)

EQUALS_ID = int(_BYTE_TO_ID[ord("=")])


def _as_bytes(texts: Sequence[str] | np.ndarray) -> np.ndarray:
    arr = np.asarray(texts)
    if arr.dtype.kind == "S":
        return arr
    try:
        return arr.astype("S")
    except UnicodeEncodeError:
        # Characters outside ASCII become <unk> (byte 0x7f is not in the vocabulary).
        return np.array([t.encode("ascii", errors="replace").replace(b"?", b"\x7f")
                         if not t.isascii() else t.encode() for t in arr.tolist()])


def encode_chars(texts: Sequence[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Character ids (no bos/eos), right-padded with <pad>: (ids [n, L] uint8, lengths [n])."""
    raw = _as_bytes(texts)
    n = len(raw)
    width = raw.dtype.itemsize if n else 0
    if n == 0 or width == 0:
        return np.zeros((n, 0), np.uint8), np.zeros(n, np.int64)
    codes = np.frombuffer(raw.tobytes(), dtype=np.uint8).reshape(n, width)
    lengths = np.char.str_len(raw).astype(np.int64)
    return _BYTE_TO_ID[codes], lengths


def encode(texts: Sequence[str] | np.ndarray, bos: bool = True,
           eos: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Encode compact texts to uint8 ids with <bos>/<eos>: (ids [n, L] right-padded, lengths)."""
    chars, lengths = encode_chars(texts)
    n, width = chars.shape
    start = int(bos)
    ids = np.zeros((n, width + start + int(eos)), dtype=np.uint8)
    if bos:
        ids[:, 0] = BOS
    ids[:, start:start + width] = chars
    if eos:
        ids[np.arange(n), lengths + start] = EOS
    return ids, lengths + start + int(eos)


def decode(ids: np.ndarray | Sequence[Sequence[int]], stop_at_eos: bool = True) -> list[str]:
    """Decode rows of ids to compact text; special tokens are dropped, <eos> ends a row."""
    out = []
    for row in ids:
        row = np.asarray(row, dtype=np.int64)
        if stop_at_eos:
            ends = np.flatnonzero(row == EOS)
            if ends.size:
                row = row[: ends[0]]
        row = row[(row >= 0) & (row < 256)]
        out.append(_ID_TO_BYTE[row.astype(np.uint8)].tobytes().replace(b"\x00", b"").decode())
    return out


def token_length(texts: Sequence[str] | np.ndarray) -> np.ndarray:
    """Tokens per text including <bos> and <eos>: one character is one token."""
    return np.char.str_len(_as_bytes(texts)).astype(np.int64) + 2


def build_hf_tokenizer():
    """A PreTrainedTokenizerFast with the same ids; `tok(text)` prepends <bos>.

    A full training row is `tok(text + "<eos>")`; special tokens written literally are
    recognised, and decoding joins characters without spaces.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    # Spaces are separators, not tokens, as in the reference ("d i s t" == "dist").
    core.pre_tokenizer = pre_tokenizers.Split(" ", behavior="removed")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        pad_token="<pad>", model_max_length=512, clean_up_tokenization_spaces=False)
    return tok


def save_hf_tokenizer(directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build_hf_tokenizer().save_pretrained(directory)
    (directory / "vocab_mapping.json").write_text(json.dumps(
        {"vocab": {t: i for i, t in enumerate(VOCAB)}, "id_to_token": VOCAB,
         "special_tokens": SPECIAL_TOKENS, "vocab_size": VOCAB_SIZE}, indent=1))
