"""Representation extraction from tiny random Qwen2 checkpoints, against per-prompt HF passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Qwen2ForCausalLM

from analysis_fakes import tiny_model
from worldrep.analysis.reps import (
    RepSpec,
    city_rows,
    extract_representations,
    extract_run,
    load_reps,
    prompts,
    read_positions,
    reps_series,
)
from worldrep.checkpoints import list_checkpoints, select_checkpoints
from worldrep.errors import WorldrepError
from worldrep.tasks import get_task
from worldrep.tokenizer import build_hf_tokenizer, encode


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    for seed, name in enumerate(["checkpoint-900", "checkpoint-10000"]):
        tiny_model(seed).save_pretrained(run / "checkpoints" / name)
    tiny_model(1).save_pretrained(run / "checkpoints" / "final")  # same weights as the last
    return run


def names(paths) -> list[str]:
    return [p.name for p in paths]


def test_timeline_orders_numerically_and_drops_a_final_that_repeats_the_last_step(run_dir,
                                                                                 tmp_path):
    assert names(list_checkpoints(run_dir)) == ["checkpoint-900", "checkpoint-10000"]
    assert names(select_checkpoints(run_dir, "final")) == ["final"]  # still there by name
    other = tmp_path / "run2" / "checkpoints"
    tiny_model(0).save_pretrained(other / "checkpoint-5")
    tiny_model(3).save_pretrained(other / "final")
    assert names(list_checkpoints(other.parent)) == ["checkpoint-5", "final"]
    assert names(select_checkpoints(other.parent, "last")) == ["final"]
    # The trainer records each checkpoint's step: a final at the last step is a duplicate.
    (other / "final" / "worldrep.json").write_text('{"step": 5}')
    assert names(list_checkpoints(other.parent)) == ["checkpoint-5"]
    assert names(select_checkpoints(other.parent, "last")) == ["checkpoint-5"]
    (other / "final" / "worldrep.json").write_text('{"step": 6}')
    assert names(list_checkpoints(other.parent)) == ["checkpoint-5", "final"]
    with pytest.raises(WorldrepError, match="no checkpoint 'checkpoint-7'"):
        select_checkpoints(other.parent, "checkpoint-7")
    with pytest.raises(WorldrepError, match="holds no checkpoint"):
        list_checkpoints(tmp_path)


def test_prompts_and_positions_come_from_the_tokens():
    texts = prompts("distance", np.array([7, 1234]))
    assert texts.tolist() == ["dist(c_0007,", "dist(c_1234,"]
    ids, _ = encode(texts, eos=False)
    pos = read_positions("distance", ids, ["last_digit", "delimiter", "c"])
    assert pos == {"last_digit": 11, "delimiter": 12, "c": 6}  # the reference's 11 and 12
    inside = get_task("inside")
    ids, _ = encode(prompts("inside", np.array([4321])), eos=False)
    where = read_positions("inside", ids, ["last_digit", "delimiter"])
    assert encode([inside.first_delimiter], bos=False, eos=False)[0][0, 0] == ids[0, where["delimiter"]]
    assert encode(["1"], bos=False, eos=False)[0][0, 0] == ids[0, where["last_digit"]]


def test_extraction_matches_single_prompt_forward_passes(run_dir, world, tmp_path):
    ckpt = run_dir / "checkpoints" / "checkpoint-900"
    # Default cities: everyone with a 4-digit id >= 1000 (the reference filter).
    np.testing.assert_array_equal(world.ids[city_rows(world, RepSpec())],
                                  np.sort(world.ids[world.ids >= 1000]))
    spec = RepSpec(layers=[2, 5], batch_size=100, cities="region:Western Europe")
    out = extract_representations(ckpt, world, spec, tmp_path / "reps")
    reps = load_reps(out)
    europe = (world.cities["region"] == "Western Europe").to_numpy()
    expected_ids = np.sort(world.ids[europe & (world.ids >= 1000)])
    np.testing.assert_array_equal(reps.ids, expected_ids)
    assert reps.vectors.shape == (len(expected_ids), 2, 2, 16)
    assert reps.features().shape == (len(expected_ids), 64)
    assert not reps.synthetic.any()
    # Independent path: the HF tokenizer and one forward pass per prompt.
    model = Qwen2ForCausalLM.from_pretrained(ckpt).eval()
    tok = build_hf_tokenizer()
    for row in (0, 123, len(expected_ids) - 1):
        text = f"dist(c_{reps.ids[row]:04d},"
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        for li, layer in enumerate([2, 5]):
            np.testing.assert_allclose(reps.vectors[row, li, 0], hs[layer][0, -2], atol=1e-5)
            np.testing.assert_allclose(reps.vectors[row, li, 1], hs[layer][0, -1], atol=1e-5)
    # Features are position-major: [last_digit: l2, l5 | delimiter: l2, l5].
    np.testing.assert_array_equal(reps.features([5], ["delimiter"]), reps.vectors[:, 1, 1])
    np.testing.assert_array_equal(reps.features()[:, 16:32], reps.vectors[:, 1, 0])


def test_extraction_settings_and_errors(run_dir, world, tmp_path):
    ckpt = run_dir / "checkpoints" / "checkpoint-900"
    out = extract_representations(ckpt, world, RepSpec(cities="Atlantis", min_id=0,
                                                       positions=["delimiter"]), tmp_path / "a")
    reps = load_reps(out)
    assert len(reps.ids) == 100 and reps.synthetic.all() and reps.vectors.shape[2] == 1
    with pytest.raises(WorldrepError, match=r"layers \[7\] do not exist"):
        extract_representations(ckpt, world, RepSpec(layers=[7]), tmp_path / "b")
    assert not (tmp_path / "b").exists()
    with pytest.raises(WorldrepError, match="no model checkpoint"):
        extract_representations(tmp_path, world, RepSpec(), tmp_path / "b")
    with pytest.raises(Exception, match="non-empty list without repeats"):
        RepSpec(layers=[5, 5])


def test_representations_are_named_by_their_inputs_not_their_paths(run_dir, world_dir,
                                                                    tmp_path):
    import shutil

    from worldrep import artifacts

    spec = RepSpec(cities="region:Japan")
    ckpt = run_dir / "checkpoints" / "checkpoint-900"
    moved = Path(shutil.copytree(ckpt, tmp_path / "moved" / "ckpt"))
    world2 = Path(shutil.copytree(world_dir, tmp_path / "moved" / "world"))
    a = extract_representations(ckpt, world_dir, spec, tmp_path / "a")
    b = extract_representations(moved, world2, spec, tmp_path / "b")
    ma, mb = artifacts.read_manifest(a), artifacts.read_manifest(b)
    assert ma["hash"] == mb["hash"] and mb["checkpoint"] == str(moved)
    assert (a / "spec.yaml").read_text() == (b / "spec.yaml").read_text()


def test_extract_run_writes_each_checkpoint_once(run_dir, world, tmp_path):
    spec = RepSpec(cities="region:Japan")
    done = extract_run(run_dir, world, spec, tmp_path / "reps")
    assert list(done) == ["checkpoint-900", "checkpoint-10000"]
    assert list(reps_series(tmp_path / "reps")) == ["checkpoint-900", "checkpoint-10000"]
    stamp = (done["checkpoint-900"] / "manifest.json").stat().st_mtime_ns
    extract_run(run_dir, world, spec, tmp_path / "reps")  # finished dirs are kept
    assert (done["checkpoint-900"] / "manifest.json").stat().st_mtime_ns == stamp
    a, b = (load_reps(p).vectors for p in done.values())
    assert not np.allclose(a, b)  # different weights, different vectors
    with pytest.raises(WorldrepError, match="no checkpoint 'nope'"):
        extract_run(run_dir, world, spec, tmp_path / "x", checkpoints="nope")
