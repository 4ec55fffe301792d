"""Evaluation: the KV-cache decoder equals HF greedy generate, rows are scored by their task,
summaries carry the right keys, runs write their artifacts, the CLI names what exists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from typer.testing import CliRunner

from worldrep import artifacts, evaluate, tokenizer
from worldrep.checkpoints import select_checkpoints
from worldrep.cli import app
from worldrep.data import DatasetSpec, load_split, make_dataset
from worldrep.errors import WorldrepError
from worldrep.evaluate import evaluate_frame, evaluate_run, greedy_generate, summarize
from worldrep.model import StackedQwen2, from_hf
from worldrep.tasks import get_task


def tiny_model(seed: int = 0, kv_heads: int = 4, hidden: int = 32) -> Qwen2ForCausalLM:
    """A random tiny Qwen2 with the reference init scale (N(0, 0.1)): peaked, tie-free logits."""
    cfg = Qwen2Config(vocab_size=tokenizer.VOCAB_SIZE, hidden_size=hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads,
                      intermediate_size=2 * hidden, max_position_embeddings=128,
                      pad_token_id=tokenizer.PAD, bos_token_id=tokenizer.BOS,
                      eos_token_id=tokenizer.EOS)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) * 0.1)
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
        model.lm_head.weight[tokenizer.EOS] *= 3  # so that some answers stop early
    return model.eval()


def hf_greedy(model, prompts: list[np.ndarray], max_new: int) -> np.ndarray:
    """HF generate on each prompt alone (no padding at all): the ground truth."""
    out = np.full((len(prompts), max_new), tokenizer.PAD, np.int64)
    for i, p in enumerate(prompts):
        with torch.no_grad():
            gen = model.generate(input_ids=torch.tensor(np.asarray(p, np.int64))[None], do_sample=False,
                                 max_new_tokens=max_new, eos_token_id=tokenizer.EOS,
                                 pad_token_id=tokenizer.PAD)
        new = gen[0, len(p):].numpy()
        out[i, : len(new)] = new
    return out


def distance_like_prompts(n: int, seed: int = 0, first_cities: int = 9999) -> np.ndarray:
    g = np.random.default_rng(seed)
    pairs = zip(g.integers(0, first_cities, n), g.integers(0, 9999, n), strict=True)
    ids, _ = tokenizer.encode([f"dist(c_{a:04d},c_{b:04d})=" for a, b in pairs], eos=False)
    return ids


# -- the decoding core ---------------------------------------------------------------------
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_cache_decoder_equals_hf_generate_on_equal_length_prompts(kv_heads):
    model = tiny_model(kv_heads=kv_heads)
    # Few distinct first cities: rows share the '<bos>dist(c_' prefix and a first-city segment.
    ids = distance_like_prompts(24, first_cities=4)
    end, _, _ = evaluate._shared_segment(torch.from_numpy(ids).long(), 8)
    assert end >= 12, "the test should cover the shared-segment path"
    truth = hf_greedy(model, list(ids), 12)
    for batch_size in (1, 7, 24):
        got = greedy_generate(model, ids, 12, batch_size, "cpu")
        np.testing.assert_array_equal(got, truth)
    assert (truth == tokenizer.EOS).any(), "the test should cover rows that stop early"


def test_models_worldrep_cannot_represent_decode_through_hf():
    full = tiny_model(seed=2)
    config = Qwen2Config(**{**full.config.to_dict(), "use_sliding_window": True,
                            "sliding_window": 6, "max_window_layers": 0, "layer_types": None})
    model = Qwen2ForCausalLM(config).eval()  # sliding-window attention: not StackedQwen2's
    model.load_state_dict(full.state_dict())
    assert evaluate._compact(model) is None
    assert isinstance(evaluate._compact(tiny_model(seed=2)), StackedQwen2)
    ids = distance_like_prompts(5, seed=4)
    np.testing.assert_array_equal(greedy_generate(model, ids, 6), hf_greedy(model, list(ids), 6))
    model = tiny_model(seed=2)
    np.testing.assert_array_equal(greedy_generate(model, ids, 6, engine="hf"),
                                  hf_greedy(model, list(ids), 6))


def test_the_compact_model_decodes_as_its_hf_twin():
    """Training evaluates its own compact model; the result is HF generate's on the same
    weights (and the 'hf' engine converts a compact model for HF generate)."""
    hf = tiny_model(seed=4, kv_heads=2)
    compact = from_hf(hf)
    ids = distance_like_prompts(20, seed=5, first_cities=3)
    truth = hf_greedy(hf, list(ids), 8)
    np.testing.assert_array_equal(greedy_generate(compact, ids, 8, 8), truth)
    np.testing.assert_array_equal(greedy_generate(compact, ids, 8, 8, engine="hf"), truth)


def test_cache_decoder_equals_hf_generate_on_mixed_lengths():
    model = tiny_model(seed=3)
    rng = np.random.default_rng(1)
    prompts = [np.r_[tokenizer.BOS, rng.integers(4, 98, rng.integers(1, 25))] for _ in range(30)]
    truth = hf_greedy(model, prompts, 10)
    for batch_size in (4, 30):  # mixed-length batches are left-padded with a mask
        np.testing.assert_array_equal(greedy_generate(model, prompts, 10, batch_size), truth)
    np.testing.assert_array_equal(greedy_generate(model, prompts, 10, 8, engine="hf"), truth)


@pytest.mark.parametrize("mixed", [False, True])
def test_rows_that_stop_leave_the_batch_without_changing_any_ids(monkeypatch, mixed):
    kept = []
    keep = evaluate._CachedDecoder.keep
    monkeypatch.setattr(evaluate._CachedDecoder, "keep",
                        lambda self, rows: kept.append(len(rows)) or keep(self, rows))
    model = tiny_model(seed=0)
    rng = np.random.default_rng(1)
    lengths = rng.integers(8, 14, 30) if mixed else np.full(30, 13)
    prompts = [np.r_[tokenizer.BOS, rng.integers(4, 98, n - 1)] for n in lengths]
    got = greedy_generate(model, prompts, 10, 30)
    assert kept and kept[0] < 30, "the test should cover a batch that shrinks"
    np.testing.assert_array_equal(got, hf_greedy(model, prompts, 10))


def test_generate_output_layout():
    model = tiny_model(seed=5)
    ids = distance_like_prompts(40, seed=2)
    out = greedy_generate(model, ids, 15, 16)
    assert out.shape == (40, 15) and out.dtype == np.int64
    for row in out:  # <eos> kept, then only <pad>
        ends = np.flatnonzero(row == tokenizer.EOS)
        if ends.size:
            assert (row[ends[0] + 1:] == tokenizer.PAD).all()
            assert (row[: ends[0]] != tokenizer.PAD).all()
    # right-padded input with lengths == the list form
    lists = [r[: 5 + i % 9] for i, r in enumerate(ids)]
    padded = np.zeros_like(ids)
    for i, r in enumerate(lists):
        padded[i, : len(r)] = r
    np.testing.assert_array_equal(
        greedy_generate(model, padded, 6, 16, lengths=[len(r) for r in lists]),
        greedy_generate(model, lists, 6, 16))
    with pytest.raises(WorldrepError, match="allowed: cache, hf"):
        greedy_generate(model, ids, 3, engine="fast")


# -- scoring -------------------------------------------------------------------------------
def scripted(outputs: dict[str, str], unfinished: frozenset[str] = frozenset()):
    """A stand-in for greedy_generate that 'generates' fixed text for each prompt."""

    def fake(model, prompt_ids, max_new, batch_size, device, lengths=None, engine="cache"):
        prompts = tokenizer.decode([r[:n] for r, n in zip(prompt_ids, lengths, strict=True)])
        out = np.full((len(prompts), max_new), tokenizer.PAD, np.int64)
        for i, p in enumerate(prompts):
            text = outputs[p]
            ids = list(tokenizer.encode_chars([text])[0][0]) if text else []
            ids = ids + ([] if p in unfinished else [tokenizer.EOS, 50, 51])  # junk after <eos>
            out[i, : min(len(ids), max_new)] = ids[:max_new]
        return out

    return fake


def test_hand_written_outputs_are_scored_by_their_task(monkeypatch, world):
    cases = [  # (text, output, value, valid)
        ("dist(c_0001,c_0002)=769", "769", 0.0, True),
        ("dist(c_0001,c_0003)=769", "770", 1.0, True),
        ("dist(c_0001,c_0004)=769", "0769", 0.0, True),  # leading zeros: still the number
        ("dist(c_0001,c_0005)=5", "3000", 2995.0, True),
        # an error beyond the largest possible one (a stutter) scores as an invalid answer
        ("dist(c_0001,c_0010)=1874", "1891111", None, True),
        ("dist(c_0001,c_0006)=769", "", None, False),  # empty: invalid, failure value
        ("dist(c_0001,c_0007)=769", "76x", None, False),  # extra characters
        ("dist(c_0001,c_0008)=769", "-769", None, False),  # a distance is never negative
        ("dist(c_0001,c_0009)=769", "769)", None, False),
        ("compass(c_0001,c_0002)=NE", "NE", 1.0, True),
        ("compass(c_0001,c_0003)=NE", "SW", 0.0, True),  # wrong but a valid direction
        ("compass(c_0001,c_0004)=NE", "NEE", 0.0, False),
        ("compass(c_0001,c_0005)=NE", "", 0.0, False),
    ]
    failure = get_task("distance").failure_value
    frame = pd.DataFrame({"text": [c[0] for c in cases],
                          "task": [c[0].split("(")[0].replace("dist", "distance")
                                   for c in cases]})
    frame["answer"] = frame["text"].str.split("=").str[-1]
    outputs = {c[0].rsplit("=", 1)[0] + "=": c[1] for c in cases}
    monkeypatch.setattr(evaluate, "greedy_generate", scripted(outputs))
    res = evaluate_frame(None, frame, world, batch_size=4, device="cpu")

    assert list(res.columns) == evaluate.RESULT_COLUMNS
    assert res["row"].tolist() == list(range(len(cases)))
    assert res["output"].tolist() == [c[1] for c in cases]  # decoding stops at <eos>
    assert res["prompt"].tolist() == [c[0].rsplit("=", 1)[0] + "=" for c in cases]
    expected = [failure if v is None else v for _, _, v, _ in cases]
    np.testing.assert_allclose(res["value"], expected)
    assert res["valid"].tolist() == [c[3] for c in cases]
    assert res["finished"].all()
    parsed = res["parsed"].to_numpy()
    np.testing.assert_array_equal(parsed[:5], [769, 770, 769, 3000, 1891111])
    assert np.isnan(parsed[5:]).all()  # invalid rows and categorical tasks parse to NaN


def test_reference_parsing_reads_leading_digits_and_both_valid_rates_are_reported(
        monkeypatch, world):
    """The reference read `=(\\d+)`: the leading digits, whatever follows. worldrep's strict
    default needs the whole output to be the number; both rates are always reported."""
    cases = [("dist(c_0001,c_0002)=769", "769"), ("dist(c_0001,c_0003)=769", "76x"),
             ("dist(c_0001,c_0004)=769", "770,c_1"), ("dist(c_0001,c_0005)=769", "x7"),
             ("compass(c_0001,c_0002)=NE", "NE")]
    frame = pd.DataFrame({"text": [c[0] for c in cases],
                          "task": ["distance"] * 4 + ["compass"]})
    monkeypatch.setattr(evaluate, "greedy_generate",
                        scripted({c[0].rsplit("=", 1)[0] + "=": c[1] for c in cases}))
    failure = get_task("distance").failure_value
    strict = evaluate_frame(None, frame, world, batch_size=8, device="cpu")
    ref = evaluate_frame(None, frame, world, batch_size=8, device="cpu", parse="reference")
    np.testing.assert_allclose(strict["value"], [0, failure, failure, failure, 1])
    np.testing.assert_allclose(ref["value"], [0, 693, 1, failure, 1])
    assert ref["parsed"].tolist()[:3] == [769, 76, 770]
    for res in (strict, ref):  # the same two columns, whichever parser scored
        assert res["valid_strict"].tolist() == [True, False, False, False, True]
        assert res["valid_reference"].tolist() == [True, True, True, False, True]
    summary = evaluate.summarize(ref)["distance"]
    assert summary["valid_rate"] == summary["valid_rate_reference"] == 0.75
    assert summary["valid_rate_strict"] == 0.25
    with pytest.raises(WorldrepError, match="unknown parse 'loose'; allowed: strict, reference"):
        evaluate_frame(None, frame, world, parse="loose")


def test_unfinished_output_is_flagged(monkeypatch, world):
    frame = pd.DataFrame({"text": ["dist(c_0001,c_0002)=12"], "task": ["distance"]})
    prompt = "dist(c_0001,c_0002)="
    monkeypatch.setattr(evaluate, "greedy_generate",
                        scripted({prompt: "1" * 30}, unfinished=frozenset({prompt})))
    res = evaluate_frame(None, frame, world, device="cpu")
    assert res.loc[0, "output"] == "1" * 20  # cut at max_answer_tokens
    assert not res.loc[0, "finished"]
    assert res.loc[0, "answer"] == "12"  # without an answer column: the text after the '='


def test_summary_keys_and_values_per_metric_kind():
    rng = np.random.default_rng(0)
    err = rng.exponential(100, 50)
    results = pd.DataFrame({
        "task": ["distance"] * 50 + ["compass"] * 4 + ["nearest_neighbor"] * 3,
        "value": np.r_[err, [1, 0, 1, 1], [0.5, 1.0, 0.0]],
        "valid": np.r_[np.arange(50) % 5 != 0, [True] * 4, [True, True, False]],
    })
    s = summarize(results)
    assert set(s) == {"distance", "compass", "nearest_neighbor"}
    assert set(s["distance"]) == {"n", "valid_rate", "mean_error", "median_error", "std_error"}
    assert set(s["compass"]) == {"n", "valid_rate", "accuracy"}
    assert set(s["nearest_neighbor"]) == {"n", "valid_rate", "mean_score"}
    assert s["distance"]["n"] == 50 and s["distance"]["valid_rate"] == pytest.approx(0.8)
    assert s["distance"]["mean_error"] == pytest.approx(sum(err) / 50)
    assert s["distance"]["median_error"] == pytest.approx(float(pd.Series(err).median()))
    assert s["distance"]["std_error"] == pytest.approx(float(pd.Series(err).std(ddof=0)))
    assert s["compass"]["accuracy"] == 0.75
    assert s["nearest_neighbor"] == {"n": 3, "valid_rate": pytest.approx(2 / 3),
                                     "mean_score": 0.5}
    json.dumps(s)  # plain JSON types


# -- runs, checkpoints, CLI ----------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A fake training run: checkpoint-0, checkpoint-20, checkpoint-100 and final."""
    run = tmp_path_factory.mktemp("run") / "run"
    for i, name in enumerate(["checkpoint-100", "checkpoint-0", "final", "checkpoint-20"]):
        path = run / "checkpoints" / name
        tiny_model(seed=i).save_pretrained(path)
        tokenizer.save_hf_tokenizer(path)
    (run / "checkpoints" / ".checkpoint-200.tmp-1").mkdir()  # unfinished: ignored
    return run


@pytest.fixture(scope="module")
def data_dir(world, tmp_path_factory) -> Path:
    spec = DatasetSpec(task="distance", n_train=10, n_val=5, n_test=30, seed=3)
    return make_dataset(world, spec, tmp_path_factory.mktemp("data") / "dist")


def test_checkpoint_selection(run_dir):
    """One lister for training, evaluation and representations (worldrep.model)."""

    def names(which):
        return [p.name for p in select_checkpoints(run_dir, which)]

    steps = ["checkpoint-0", "checkpoint-20", "checkpoint-100"]
    assert names("all") == steps + ["final"]  # final has its own weights here
    assert names("final") == ["final"]
    assert names("last") == ["final"]  # the newest checkpoint
    assert names("20, final,checkpoint-0,20") == ["checkpoint-20", "final", "checkpoint-0"]
    assert names([100, "final"]) == ["checkpoint-100", "final"]
    assert select_checkpoints(run_dir, "final")[0] == run_dir / "checkpoints" / "final"
    with pytest.raises(WorldrepError, match="available: checkpoint-0, checkpoint-20, "
                                            "checkpoint-100, final"):
        select_checkpoints(run_dir, "checkpoint-7")
    with pytest.raises(WorldrepError, match="no run directory"):
        select_checkpoints(run_dir / "nope", "final")


def test_evaluate_run_writes_artifacts_and_limit_takes_first_rows(run_dir, data_dir, tmp_path):
    out = evaluate_run(run_dir, data_dir, checkpoints="0,final", limit=7, out=tmp_path / "ev")
    test_rows = load_split(data_dir, "test")
    for name in ("checkpoint-0", "final"):
        sub = out / name
        assert artifacts.is_complete(sub) and (sub / "spec.yaml").is_file()
        res = pd.read_parquet(sub / "eval.parquet")
        assert len(res) == 7
        assert (res["prompt"] + res["answer"]).tolist() == test_rows["text"][:7].tolist()
        summary = json.loads((sub / "summary.json").read_text())
        assert summary == json.loads(json.dumps(summarize(res)))
        assert summary["distance"]["n"] == 7
    combined = json.loads((out / "summary.json").read_text())
    assert list(combined) == ["checkpoint-0", "final"]
    assert set(combined["final"]["distance"]) >= {"mean_error", "median_error", "std_error"}

    # Same run, rows and weights: nothing is redone; a new checkpoint joins the summary.
    before = (out / "final" / "manifest.json").stat().st_mtime_ns
    evaluate_run(run_dir, data_dir, checkpoints="final,20", limit=7, out=tmp_path / "ev")
    assert (out / "final" / "manifest.json").stat().st_mtime_ns == before
    combined = json.loads((out / "summary.json").read_text())
    assert list(combined) == ["checkpoint-0", "checkpoint-20", "final"]

    threads = torch.get_num_threads()
    evaluate_run(run_dir, data_dir, checkpoints="final", limit=7, out=out, force=True,
                 threads=1)
    assert (out / "final" / "manifest.json").stat().st_mtime_ns != before
    assert torch.get_num_threads() == threads  # restored
    assert json.loads((out / "final" / "summary.json").read_text()) == combined["final"]


def test_an_evaluation_is_named_by_its_inputs_not_their_paths(run_dir, data_dir, tmp_path):
    import shutil

    run2 = Path(shutil.copytree(run_dir, tmp_path / "moved" / "run"))
    data2 = Path(shutil.copytree(data_dir, tmp_path / "moved" / "dist"))
    a = evaluate_run(run_dir, data_dir, checkpoints="final", limit=3, out=tmp_path / "a")
    b = evaluate_run(run2, data2, checkpoints="final", limit=3, out=tmp_path / "b")
    assert (a / "final" / "spec.yaml").read_text() == (b / "final" / "spec.yaml").read_text()
    ma, mb = (artifacts.read_manifest(d / "final") for d in (a, b))
    assert ma["hash"] == mb["hash"] and mb["run_dir"] == str(run2)  # paths: for people only
    assert str(tmp_path) not in (b / "final" / "spec.yaml").read_text()


def test_evaluate_run_default_location_and_decoding_matches_model(run_dir, data_dir):
    out = evaluate_run(run_dir, data_dir, split="validation", checkpoints="final")
    assert out == run_dir / "evals" / "dist-validation"
    res = pd.read_parquet(out / "final" / "eval.parquet")
    rows = load_split(data_dir, "validation")
    model = Qwen2ForCausalLM.from_pretrained(run_dir / "checkpoints" / "final")
    ids, _ = tokenizer.encode(res["prompt"].to_numpy(), bos=True, eos=False)
    truth = tokenizer.decode(hf_greedy(model, list(ids), get_task("distance").max_answer_tokens))
    assert res["output"].tolist() == truth
    assert len(res) == len(rows)


def test_evaluate_run_input_errors(run_dir, data_dir, tmp_path):
    (tmp_path / "dist-other").mkdir()
    with pytest.raises(WorldrepError, match="no dataset directory .* holds: dist-other"):
        evaluate_run(run_dir, tmp_path / "missing")
    with pytest.raises(WorldrepError, match="unknown device"):
        evaluate_run(run_dir, data_dir, device="tpu-ish", limit=2, out=tmp_path / "e")
    with pytest.raises(WorldrepError, match="limit must be"):
        evaluate_run(run_dir, data_dir, limit=0, out=tmp_path / "e")
    (tmp_path / "bare").mkdir()
    with pytest.raises(WorldrepError, match="holds no checkpoint"):
        evaluate_run(tmp_path / "bare", data_dir)
    broken = tmp_path / "broken" / "checkpoints" / "final"
    tiny_model().save_pretrained(broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(WorldrepError, match="cannot load the checkpoint"):
        evaluate_run(tmp_path / "broken", data_dir, out=tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_cli_eval_and_its_errors(run_dir, data_dir, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["eval", str(run_dir), "--data", str(data_dir), "--limit", "3",
                              "--checkpoints", "final", "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert "distance" in res.output and "mean_error" in res.output
    assert len(pd.read_parquet(tmp_path / "ev" / "final" / "eval.parquet")) == 3

    res = runner.invoke(app, ["eval", str(run_dir), "--data", str(data_dir),
                              "--checkpoints", "checkpoint-5"])
    assert res.exit_code == 2
    assert "available: checkpoint-0, checkpoint-20, checkpoint-100, final" in res.output

    res = runner.invoke(app, ["eval", str(run_dir), "--data", str(data_dir), "--split", "dev"])
    assert res.exit_code == 2 and "available: train, validation, test" in res.output
