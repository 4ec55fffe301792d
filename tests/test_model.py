"""The compact stacked Qwen2 computes HF's Qwen2ForCausalLM; checkpoints are plain HF dirs."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

from worldrep import tokenizer
from worldrep.checkpoints import load_checkpoint, save_checkpoint
from worldrep.errors import WorldrepError
from worldrep.model import (
    ModelSpec,
    StackedQwen2,
    from_hf,
    hf_config,
    init_model,
    init_state_dict,
    select,
    spec_from_hf_config,
    stack,
    to_hf_state_dict,
)

SMALL = ModelSpec(preset="tiny")
GQA = ModelSpec(preset=None, hidden=48, layers=2, heads=4, kv_heads=2, intermediate=96)


pytestmark = pytest.mark.usefixtures("one_thread")


def hf_twin(model: StackedQwen2, k: int = 0) -> Qwen2ForCausalLM:
    hf = Qwen2ForCausalLM(hf_config(model.spec)).eval()
    hf.load_state_dict(to_hf_state_dict(model, k))
    return hf


def random_rows(n: int, t: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token rows of random lengths (>= 2) with their attention mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, tokenizer.VOCAB_SIZE, (n, t), generator=g)
    lengths = torch.randint(2, t + 1, (n,), generator=g)
    lengths[0] = t
    mask = (torch.arange(t) < lengths[:, None]).long()
    return ids * mask, mask


@pytest.mark.parametrize("spec", [ModelSpec(), GQA], ids=["reference", "gqa"])
def test_logits_match_hf_right_padded(spec):
    model = init_model(spec, 3).eval()
    hf = hf_twin(model)
    ids, mask = random_rows(6, 21)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
        got = model(ids[None])[0]  # causal attention alone: pads come after real tokens
    real = mask.bool()
    assert torch.allclose(got[real], want[real], atol=1e-4, rtol=0)


def test_logits_match_hf_left_padded_with_mask():
    model = init_model(SMALL, 4).eval()
    hf = hf_twin(model)
    ids, right = random_rows(5, 17, seed=1)
    # Shift every row to the right end: left padding, as in batched generation.
    lengths = right.sum(1)
    left_ids = torch.zeros_like(ids)
    for i, n in enumerate(lengths.tolist()):
        left_ids[i, ids.shape[1] - n:] = ids[i, :n]
    mask = (left_ids != 0).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        want = hf(input_ids=left_ids, attention_mask=mask, position_ids=positions).logits
        got = model(left_ids[None], attention_mask=mask[None])[0]
    real = mask.bool()
    assert torch.isfinite(got).all()
    assert torch.allclose(got[real], want[real], atol=1e-4, rtol=0)


def test_loss_matches_hf_loss():
    model = init_model(SMALL, 5)
    hf = hf_twin(model)
    ids, mask = random_rows(8, 15, seed=2)
    labels = ids.masked_fill(mask == 0, -100)
    want = hf(input_ids=ids, attention_mask=mask, labels=labels).loss
    got = model.loss(ids[None])[0]
    assert torch.allclose(got, want, atol=1e-5)


def test_stacked_models_are_independent():
    """K models in one forward/backward give each model's own logits, loss and gradients."""
    seeds = [1, 2, 3]
    stacked = init_model(SMALL, seeds)
    singles = [init_model(SMALL, s) for s in seeds]
    ids = torch.stack([random_rows(4, 13, seed=s)[0] for s in seeds])  # [K, B, T]
    loss = stacked.loss(ids)
    loss.sum().backward()
    for k, single in enumerate(singles):
        one = single.loss(ids[k:k + 1])
        one.sum().backward()
        assert torch.allclose(loss[k], one[0], atol=1e-6)
        for p_stacked, p_single in zip(stacked.parameters(), single.parameters(), strict=True):
            assert torch.allclose(p_stacked.grad[k], p_single.grad[0], atol=1e-6)


def test_stack_and_select_round_trip():
    a, b = init_model(SMALL, 1), init_model(SMALL, 2)
    both = stack([a, b])
    assert both.k == 2
    for k, single in enumerate([a, b]):
        picked = select(both, k)
        for x, y in zip(picked.parameters(), single.parameters(), strict=True):
            assert torch.equal(x, y)


def test_init_is_the_reference_init_and_seeded():
    spec = ModelSpec()
    state = init_state_dict(spec, seed=7)
    assert state.keys() == Qwen2ForCausalLM(hf_config(spec)).state_dict().keys()
    weights = torch.cat([v.ravel() for k, v in state.items()
                         if k.endswith("weight") and not k.endswith("norm.weight")])
    assert abs(weights.std().item() - 0.1) < 0.002 and abs(weights.mean().item()) < 0.001
    assert all(v.abs().sum() == 0 for k, v in state.items() if k.endswith(".bias"))
    assert all(torch.equal(v, torch.ones_like(v)) for k, v in state.items()
               if k.endswith("norm.weight"))
    again, other = init_state_dict(spec, seed=7), init_state_dict(spec, seed=8)
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert not torch.equal(state["lm_head.weight"], other["lm_head.weight"])
    # Slot k of a stack is initialised exactly like a single run with that seed.
    stacked = init_model(spec, [8, 7])
    assert torch.equal(to_hf_state_dict(stacked, 1)["lm_head.weight"], state["lm_head.weight"])
    scaled = init_state_dict(ModelSpec(init_scale=0.02), seed=7)
    assert torch.allclose(scaled["lm_head.weight"], state["lm_head.weight"] * 0.2)


def test_checkpoint_loads_with_plain_transformers(tmp_path):
    model = init_model(GQA, 9)
    out = save_checkpoint(model, tmp_path / "ckpt", info={"step": 12})
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert json.loads((out / "worldrep.json").read_text())["step"] == 12
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert isinstance(hf, Qwen2ForCausalLM) and hf.config.num_key_value_heads == 2
    enc = tok(["dist(c_0865,c_4879)=769<eos>"], return_tensors="pt")
    want_ids, _ = tokenizer.encode(["dist(c_0865,c_4879)=769"])
    assert enc.input_ids[0].tolist() == want_ids[0].tolist()
    with torch.no_grad():
        want = hf(**enc).logits
        got = model(enc.input_ids[None])[0]
    assert torch.allclose(got, want, atol=1e-4)
    back = load_checkpoint(out)
    assert back.spec.arch() == GQA.arch()
    for x, y in zip(back.parameters(), model.parameters(), strict=True):
        assert torch.equal(x, y)
    assert from_hf(hf).spec.arch() == GQA.arch()


def test_presets_and_parameter_counts():
    assert ModelSpec().n_params == 1_601_920  # the reference, counted from HF's module
    assert sum(p.numel() for p in Qwen2ForCausalLM(hf_config(GQA)).parameters()) \
        == GQA.n_params
    assert round(ModelSpec(preset="wide").n_params / 1e6, 2) == 6.35
    assert round(ModelSpec(preset="narrow").n_params / 1e6, 2) == 0.41
    wider = ModelSpec(preset="wider")
    assert (wider.hidden, wider.heads, wider.kv_heads, wider.intermediate) == (512, 16, 16, 2048)
    custom = ModelSpec(preset="reference", layers=10)
    assert (custom.hidden, custom.layers) == (128, 10)


@pytest.mark.parametrize("fields, message", [
    ({"preset": "huge"}, "preset"),
    ({"preset": None, "hidden": 64}, "needs 'layers'"),
    ({"hidden": 100, "heads": 3}, "divisible"),
    ({"heads": 4, "kv_heads": 3}, "divisible by kv_heads"),
    ({"vocab": 100}, "vocab must be 98"),
    ({"hiden": 64}, "unknown key"),
])
def test_model_spec_errors(fields, message):
    from worldrep.config import parse_config

    with pytest.raises(WorldrepError, match=message):
        parse_config(ModelSpec, fields, where="model")


def test_unsupported_checkpoint_options_are_errors():
    config = hf_config(SMALL).to_dict()
    config["tie_word_embeddings"] = True
    with pytest.raises(WorldrepError, match="tie_word_embeddings"):
        spec_from_hf_config(config)
    with pytest.raises(WorldrepError, match="not a Qwen2ForCausalLM"):
        spec_from_hf_config({**hf_config(SMALL).to_dict(), "model_type": "llama"})


def test_bf16_autocast_on_cpu_stays_close_to_fp32():
    """Under CPU bf16 autocast, attention runs in fp32 (see model.attention); the loss and
    its gradients stay close to fp32's."""
    model = init_model(SMALL, 6)
    ids, _ = random_rows(8, 20, seed=3)
    exact = model.loss(ids[None])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        approx = model.loss(ids[None])
    assert approx.dtype == torch.float32 and torch.isfinite(approx).all()
    assert torch.allclose(approx, exact, atol=2e-2)
    grad = torch.autograd.grad(approx.sum(), model.lm_head)[0]
    want = torch.autograd.grad(exact.sum(), model.lm_head)[0]
    assert torch.nn.functional.cosine_similarity(grad.ravel(), want.ravel(), dim=0) > 0.99


@pytest.mark.parametrize("spec", [SMALL, GQA], ids=["tiny", "gqa"])
def test_hidden_from_a_start_position_is_the_tail_of_the_full_hidden_states(spec):
    """`start` skips the last block's earlier queries and MLP: the later positions' states,
    the answer-only loss and every gradient stay those of the whole sequence."""
    model = init_model(spec, [6, 7])
    ids = torch.stack([random_rows(5, 19, seed=s)[0] for s in (3, 4)])
    mask = (ids != 0).long()
    with torch.no_grad():
        for start in (1, 7, 18):
            assert torch.allclose(model.hidden(ids, start=start), model.hidden(ids)[:, :, start:],
                                  atol=1e-6, rtol=0)
            assert torch.allclose(model.hidden(ids, mask, start=start),
                                  model.hidden(ids, mask)[:, :, start:], atol=1e-6, rtol=0)
    plen = torch.tensor([[9, 11, 12, 10, 13], [14, 9, 9, 16, 12]])
    first = int(plen.min()) - 1

    def loss_and_grads(first):
        model.zero_grad()
        loss = model.loss(ids, plen, first)
        loss.sum().backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    whole, skipped = loss_and_grads(0), loss_and_grads(first)
    assert torch.allclose(whole[0], skipped[0], atol=1e-6, rtol=0)
    for g_whole, g_skipped in zip(whole[1], skipped[1], strict=True):
        assert torch.allclose(g_whole, g_skipped, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="every_layer"):
        model.hidden(ids, start=3, every_layer=True)
