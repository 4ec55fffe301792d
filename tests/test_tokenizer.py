import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from worldrep import tokenizer as tok

ALPHABET = tok.CHARS


def test_reference_vocabulary_order():
    assert tok.VOCAB_SIZE == 98
    assert tok.VOCAB[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    expected = {"(": 11, ")": 12, ",": 15, ";": 20, "=": 22, "_": 56, "c": 60, "0": 88, "9": 97,
                "A": 26, "T": 45, "W": 48, "a": 58, "z": 83, "!": 4, "~": 87}
    for ch, i in expected.items():
        assert tok.VOCAB[i] == ch


def test_reference_example_ids():
    ids, lengths = tok.encode(["dist(c_0865,c_4879)=769"])
    assert lengths.tolist() == [25]
    assert ids[0].tolist() == [2, 61, 66, 76, 77, 11, 60, 56, 88, 96, 94, 93, 15, 60, 56, 92, 96,
                               95, 97, 12, 22, 95, 94, 97, 3]


def test_padding_and_flags():
    ids, lengths = tok.encode(["ab", "abcd"], bos=False, eos=True)
    assert lengths.tolist() == [3, 5]
    assert ids.tolist() == [[58, 59, 3, 0, 0], [58, 59, 60, 61, 3]]


def test_non_ascii_is_unk():
    ids, _ = tok.encode(["aé"], bos=False, eos=False)
    assert ids[0].tolist() == [58, tok.UNK]


@given(st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=40), min_size=1, max_size=20))
def test_round_trip(texts):
    ids, lengths = tok.encode(texts)
    assert tok.decode(ids) == texts
    np.testing.assert_array_equal(lengths, tok.token_length(texts))


def test_hf_tokenizer_same_ids(tmp_path, world):
    from transformers import AutoTokenizer

    from worldrep.data import DatasetSpec, build_rows

    tok.save_hf_tokenizer(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    texts = ["dist(c_0865,c_4879)=769", "cross(c_0001,c_0002;c_0003,c_0004)=TRUE", "rw(5,2)=c_1"]
    splits, _ = build_rows(world, DatasetSpec(task="distance", n_train=50, n_val=0, n_test=0))
    texts += splits["train"]["text"].to_pylist()
    ids, lengths = tok.encode(texts)
    for text, row, n in zip(texts, ids, lengths, strict=True):
        assert hf(text + "<eos>")["input_ids"] == row[:n].tolist()
        assert hf.decode(row[:n], skip_special_tokens=True) == text
    assert hf("dist(c_08")["input_ids"][0] == tok.BOS
    assert hf.pad_token_id == 0 and hf.eos_token_id == 3 and hf.bos_token_id == 2
