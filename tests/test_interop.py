"""worldrep checkpoints open in nnsight and TransformerLens, which see the same residual
stream as worldrep's reps.npz; the worked example of docs/interop.md runs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from worldrep import tokenizer
from worldrep.analysis.reps import RepSpec, extract_representations, load_reps, prompts
from worldrep.data import DatasetSpec, make_dataset
from worldrep.train import TrainSpec, train

DOCS = Path(__file__).resolve().parents[1] / "docs" / "interop.md"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    """A tiny model trained a little on distance rows, and its representations of every city
    (layer 1: after the first block; layer 2: the final norm's output)."""
    root = tmp_path_factory.mktemp("interop")
    data = make_dataset(world, DatasetSpec(task="distance", n_train=400, n_val=16, n_test=16),
                        root / "data")
    final = train(TrainSpec(data=str(data), model={"preset": "tiny"}, batch_size=16, steps=30,
                            progress=False, track=[], eval={"every": 1.0, "rows_per_task": 4}),
                  root / "run")
    reps = extract_representations(final, world, RepSpec(task="distance", layers=[1, 2],
                                                         cities="all"), root / "reps")
    return final, load_reps(reps)


def _inputs(reps) -> tuple[torch.Tensor, list[int]]:
    ids, _ = tokenizer.encode(prompts("distance", reps.ids), eos=False)
    positions = list(reps.meta.get("token_positions") or [])
    if not positions:  # last digit and delimiter of `<bos>dist(c_XXXX,`
        positions = [ids.shape[1] - 2, ids.shape[1] - 1]
    return torch.from_numpy(ids.astype(np.int64)), positions


def test_nnsight_sees_worldreps_residual_stream(trained):
    nnsight = pytest.importorskip("nnsight")
    final, reps = trained
    lm = nnsight.TransformersModel(str(final), task="text-generation", dispatch=True)
    ids, positions = _inputs(reps)
    with torch.no_grad(), lm.trace(ids):
        block1 = lm.model.layers[0].output.save()
        last = lm.model.norm.output.save()
    got = np.stack([block1[:, positions].numpy(), last[:, positions].numpy()], axis=1)
    np.testing.assert_allclose(got, reps.vectors, rtol=1e-5, atol=1e-5)


def test_transformer_lens_sees_worldreps_residual_stream(trained):
    bridge_mod = pytest.importorskip("transformer_lens.model_bridge")
    final, reps = trained
    bridge = bridge_mod.TransformerBridge.boot_transformers(str(final), device="cpu")
    ids, positions = _inputs(reps)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids)
    got = np.stack([cache["blocks.0.hook_resid_post"][:, positions].numpy(),
                    cache["ln_final.hook_out"][:, positions].numpy()], axis=1)
    np.testing.assert_allclose(got, reps.vectors, rtol=1e-4, atol=1e-4)


def test_the_patching_example_of_the_docs_runs(trained, world, tmp_path):
    import importlib.util

    pytest.importorskip("nnsight")
    final, _ = trained
    code = re.search(r"```python\n(import numpy as np\n.*?)```", DOCS.read_text(), re.S).group(1)
    # nnsight reads a trace's source back from its file: the example runs as a module
    (tmp_path / "interop_example.py").write_text(code)
    spec = importlib.util.spec_from_file_location("interop_example", tmp_path / "interop_example.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    scope = vars(example)
    cities = world.cities
    atlantis = int(cities[cities["group"] == "Atlantis"]["city_id"].iloc[0])
    w1, w2 = (int(c) for c in cities[(cities["group"] == "world")
                                     & (cities["city_id"] >= 1000)]["city_id"].iloc[:2])
    result = scope["patch_city"](final, cities, a=atlantis, b=w1, w=w2)
    assert set(result) == {"clean", "patched", "dist(a, w)", "dist(b, w)"}
    assert isinstance(result["clean"], str) and isinstance(result["patched"], str)
    assert result["dist(a, w)"] > 0 and result["dist(b, w)"] > 0
