"""Training rows on the device, and the batch of every run of a pack at every step."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import tokenizer
from ..errors import WorldrepError
from ..seeding import rng as make_rng


@dataclass
class Rows:
    """Pre-tokenised rows: ids uint8 [N, L] (right-padded, <bos> ... <eos>) on the device."""

    ids: torch.Tensor
    lengths: np.ndarray  # int64 [N]
    prompt_len: np.ndarray  # int64 [N], tokens up to and including the answer '='

    def __len__(self) -> int:
        return len(self.lengths)

    @staticmethod
    def from_texts(texts, prompt_len, device="cpu") -> Rows:
        ids, lengths = tokenizer.encode(np.asarray(texts))
        return Rows(torch.from_numpy(ids).to(device), lengths.astype(np.int64),
                    np.asarray(prompt_len, np.int64))


def load_rows(data_dir: str | Path, split: str, max_positions: int, device) -> Rows:
    """A dataset split as `Rows`, checked to fit the model's positions."""
    from ..data import load_split

    frame = load_split(data_dir, split, columns=["text", "prompt_len"])
    rows = Rows.from_texts(frame["text"].to_numpy(), frame["prompt_len"].to_numpy(), device)
    longest = int(rows.lengths.max()) if len(rows) else 0
    if longest > max_positions:
        raise WorldrepError(f"{data_dir}/{split}: a row has {longest} tokens but the model "
                            f"takes at most {max_positions} positions (model.max_positions)")
    return rows


class Batcher:
    """Batch `step` of K runs as one [K, B, T] tensor.

    Run k's rows at step s are perm[b*B:(b+1)*B] of its own rows, where (e, b) = divmod(s, its
    steps per epoch) and perm is the permutation drawn from (seed_k, e): the data position is
    just the step number. The last batch of an epoch is short, not dropped: empty rows fill it
    (they carry no loss). T is the widest run's longest row, rounded up to `pad_multiple` (on
    CUDA every shape is a captured graph). All runs' rows live in one table (runs on the same
    `Rows` share it), so a step is one gather.
    """

    def __init__(self, rows: list[Rows], batch_size: int, seeds: list[int],
                 pad_multiple: int = 1):
        tables = list({id(r): r for r in rows}.values())
        width = max(t.ids.shape[1] for t in tables)
        device = tables[0].ids.device
        starts = dict(zip(map(id, tables), np.cumsum([0] + [len(t) for t in tables]),
                          strict=False))
        self.table = torch.cat([F.pad(t.ids, (0, width - t.ids.shape[1])) for t in tables]
                               + [torch.zeros(1, width, dtype=torch.uint8, device=device)])
        self.prompt = torch.cat([torch.from_numpy(t.prompt_len) for t in tables]
                                + [torch.zeros(1, dtype=torch.int64)]).to(device)
        self.rows, self.seeds, self.offsets = rows, seeds, [int(starts[id(r)]) for r in rows]
        self.batch_size, self.pad_multiple = batch_size, pad_multiple
        self.per_epoch = [math.ceil(len(r) / batch_size) for r in rows]
        self._epochs: dict[int, tuple] = {}  # run -> (epoch, index, widths, tokens) per batch

    def order(self, k: int, epoch: int) -> np.ndarray:
        return make_rng(self.seeds[k], "train-order", epoch).permutation(len(self.rows[k]))

    def _epoch(self, k: int, epoch: int) -> tuple:
        if self._epochs.get(k, (None,))[0] != epoch:
            perm, n, size = self.order(k, epoch), self.per_epoch[k], self.batch_size
            pad = n * size - len(perm)
            empty = len(self.table) - 1
            index = np.concatenate([perm + self.offsets[k], np.full(pad, empty)]).reshape(n, size)
            lengths = np.concatenate([self.rows[k].lengths[perm], np.zeros(pad, np.int64)])
            lengths = lengths.reshape(n, size)
            m = self.pad_multiple
            widths = np.minimum(-(-lengths.max(axis=1) // m) * m, self.table.shape[1])
            self._epochs[k] = (epoch, torch.from_numpy(index).to(self.table.device), widths,
                               lengths.sum(axis=1))
        return self._epochs[k]

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(ids [K, B, T] int64, prompt_len [K, B] int64, real tokens per run [K])."""
        picks, widths, tokens = [], [], []
        for k, n in enumerate(self.per_epoch):
            epoch, b = divmod(step, n)
            _, index, width, count = self._epoch(k, epoch)
            picks.append(index[b])
            widths.append(width[b])
            tokens.append(count[b])
        index = torch.stack(picks)
        return self.table[index, :int(max(widths))].long(), self.prompt[index], np.asarray(tokens)
