import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from worldrep.artifacts import read_manifest
from worldrep.data import DatasetSpec, build_rows, load_split, make_dataset
from worldrep.errors import WorldrepError
from worldrep.mixing import MixSource, MixSpec, make_mixture
from worldrep.tasks import get_task, task_names

SMALL = dict(n_train=600, n_val=50, n_test=200)


@pytest.mark.parametrize("name", task_names())
def test_every_task_splits_disjoint_and_deterministic(world, name):
    spec = DatasetSpec(task=name, **SMALL)
    a, _ = build_rows(world, spec)
    b, _ = build_rows(world, spec)
    for split in a:
        assert a[split].to_pandas().equals(b[split].to_pandas()), f"{name} {split} differs"
    assert [a[s].num_rows for s in ("train", "validation", "test")] == [600, 50, 200]
    # no exact text shared between splits, and no repeated text inside a split
    texts = {s: set(a[s]["text"].to_pylist()) for s in a}
    assert len(texts["train"]) == 600 and len(texts["test"]) == 200
    assert not texts["train"] & texts["test"]
    assert not texts["train"] & texts["validation"]
    assert not texts["validation"] & texts["test"]


@pytest.mark.parametrize("name", task_names())
def test_prompt_ends_at_the_tasks_answer_separator(world, name):
    splits, _ = build_rows(world, DatasetSpec(task=name, n_train=200, n_val=0, n_test=0))
    frame = splits["train"].to_pandas()
    task = get_task(name)
    for text, plen, answer in zip(frame.text, frame.prompt_len, frame.answer, strict=True):
        prompt = text[: plen - 1]
        assert prompt.endswith("=") or prompt.endswith(",")
        if name != "randomwalk":  # the walk's first city belongs to the prompt
            assert text[plen - 1:] == answer
    assert text.startswith(task.prefix)


def test_distance_pairs_never_shared_across_splits_in_either_order(world):
    splits, _ = build_rows(world, DatasetSpec(task="distance", n_train=20_000, n_val=128,
                                              n_test=5_000))
    def pairs(split):
        c = np.array(splits[split]["cities"].to_pylist())
        return set(map(tuple, np.sort(c, axis=1).tolist()))
    train, val, test = pairs("train"), pairs("validation"), pairs("test")
    assert len(train) == 20_000
    assert not train & test and not train & val and not val & test


def test_byte_identical_across_processes(world_dir, tmp_path):
    code = ("import sys; from worldrep.data import DatasetSpec, make_dataset;"
            "make_dataset(sys.argv[1], DatasetSpec(task='distance', n_train=3000, n_test=100),"
            " sys.argv[2])")
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", code, str(world_dir), str(tmp_path / name)],
                       check=True, env={"PYTHONHASHSEED": "random", "PATH": ""})
    for split in ("train", "validation", "test"):
        assert ((tmp_path / "a" / f"{split}.parquet").read_bytes()
                == (tmp_path / "b" / f"{split}.parquet").read_bytes())


def test_require_group_in_every_item(world):
    splits, _ = build_rows(world, DatasetSpec(task="distance", pool="all", require="Atlantis",
                                              n_train=5000, n_val=10, n_test=500))
    atl = set(world.ids[world.groups == "Atlantis"].tolist())
    for split in splits.values():
        for cities in split["cities"].to_pylist():
            assert atl & set(cities)


def test_world_pool_excludes_atlantis(world):
    splits, _ = build_rows(world, DatasetSpec(task="distance", n_train=5000, n_val=0, n_test=0))
    atl = set(world.ids[world.groups == "Atlantis"].tolist())
    ids = set(np.concatenate(splits["train"]["cities"].to_pylist()).tolist())
    assert not ids & atl


def test_columns_and_meta(world, tmp_path):
    out = make_dataset(world, DatasetSpec(task="distance", n_train=100, n_val=5, n_test=10),
                       tmp_path / "d")
    frame = load_split(out, "test")
    assert list(frame.columns) == ["text", "task", "prompt_len", "n_tokens", "answer", "value",
                                   "cities"]
    row = frame.iloc[0]
    assert row.text.startswith("dist(c_") and row.n_tokens == len(row.text) + 2
    assert row.text.endswith("=" + row.answer) and row.value == float(row.answer)
    assert (out / "manifest.json").is_file() and (out / "spec.yaml").is_file()


ERRORS = [
    (dict(task="nosuch"), "unknown task 'nosuch'; allowed: distance"),
    (dict(task="distance", n_train=-1), "n_train"),
    (dict(task="distance", pool="Lemuria"), "unknown city group 'Lemuria'"),
    (dict(task="distance", pool="region:Narnia"), "unknown region 'Narnia'; allowed: Africa"),
    (dict(task="distance", pool="bounds:0,1,0,1"), "selects no city"),
    (dict(task="distance", pool="Atlantis", n_train=5000, n_val=0, n_test=0),
     "only 4950 distinct items exist"),
    (dict(task="distance", params={"bogus": 1}), "unknown key 'bogus'"),
]


@pytest.mark.parametrize("kwargs,message", ERRORS)
def test_bad_requests_fail_clearly_and_leave_nothing(world, tmp_path, kwargs, message):
    from worldrep.config import parse_config

    with pytest.raises(WorldrepError, match=message.replace("(", r"\(")):
        make_dataset(world, parse_config(DatasetSpec, kwargs), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_unknown_spec_key_names_allowed_keys():
    from worldrep.config import parse_config

    with pytest.raises(WorldrepError, match="unknown key 'n_trian'.*allowed keys: task, n_train"):
        parse_config(DatasetSpec, {"task": "distance", "n_trian": 5})


# -- mixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_sets(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    a = make_dataset(world, DatasetSpec(task="distance", n_train=1000, n_val=20, n_test=100),
                     root / "world")
    b = make_dataset(world, DatasetSpec(task="distance", pool="all", require="Atlantis",
                                        n_train=500, n_val=20, n_test=100), root / "atlantis")
    return a, b


def test_sample_mixture_counts_sources_and_shuffle(two_sets, tmp_path):
    a, b = two_sets
    out = make_mixture(MixSpec(sources=[{"path": str(a), "n": 200}, {"path": str(b), "n": 500}],
                               seed=3), tmp_path / "m")
    train = load_split(out, "train")
    assert len(train) == 700
    assert train.source.value_counts().to_dict() == {"atlantis": 500, "world": 200}
    assert train.source.iloc[:50].nunique() == 2  # shuffled, not blocks
    src_a = set(load_split(a, "train").text)
    assert set(train[train.source == "world"].text) <= src_a
    val = load_split(out, "validation")
    assert (val.source == "world").sum() == 4  # ceil(20 * 200/1000): small parts keep rows


def test_same_source_twice_draws_without_duplicates(two_sets, tmp_path):
    a, _ = two_sets
    out = make_mixture(MixSpec(sources=[{"path": str(a), "n": 600},
                                        {"path": str(a), "n": 400, "name": "again"}]),
                       tmp_path / "m")
    train = load_split(out, "train")
    assert len(train) == 1000 and train.text.is_unique


def test_concat_and_determinism(two_sets, tmp_path):
    a, b = two_sets
    spec = MixSpec(sources=[{"path": str(a)}, {"path": str(b)}], mode="concat")
    make_mixture(spec, tmp_path / "m1")
    make_mixture(spec, tmp_path / "m2")
    assert len(load_split(tmp_path / "m1", "test")) == 200
    for split in ("train", "validation", "test"):
        t1 = pq.read_table(tmp_path / "m1" / f"{split}.parquet")
        assert t1.equals(pq.read_table(tmp_path / "m2" / f"{split}.parquet"))


def test_mixture_errors(two_sets, tmp_path):
    a, _ = two_sets
    with pytest.raises(WorldrepError, match="n=5000 but it has only 1000 training rows"):
        make_mixture(MixSpec(sources=[{"path": str(a), "n": 5000}]), tmp_path / "m")
    with pytest.raises(WorldrepError, match="not a finished dataset"):
        make_mixture(MixSpec(sources=[{"path": str(tmp_path / "nope")}]), tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("ratio", [0.3, 0.7])
@pytest.mark.parametrize("name", ["inside", "crossing"])
def test_unbalanced_true_ratio_exact_per_split(world, name, ratio):
    spec = DatasetSpec(task=name, n_train=1000, n_val=20, n_test=200, true_ratio=ratio)
    splits, _ = build_rows(world, spec)
    for split, n in spec.sizes.items():
        answers = splits[split]["answer"].to_pylist()
        assert answers.count("TRUE") == round(n * ratio), split


def test_mixture_is_the_same_bytes_wherever_its_sources_lie(two_sets, tmp_path):
    """Seeded by the sources' content, never their paths: copies of the same sources in other
    directories give byte-identical splits (the draw once depended on the path)."""
    import shutil

    a, b = two_sets
    moved = tmp_path / "elsewhere" / "deeper"
    moved.mkdir(parents=True)
    a2, b2 = shutil.copytree(a, moved / "x"), shutil.copytree(b, moved / "y")
    outs = []
    for i, (pa, pb) in enumerate([(a, b), (a2, b2)]):
        spec = MixSpec(sources=[MixSource(path=str(pa), n=300, name="first"),
                                MixSource(path=str(pb), n=200, name="second")])
        outs.append(make_mixture(spec, tmp_path / f"mix{i}"))
    for name in ("train.parquet", "validation.parquet", "test.parquet", "cities.parquet",
                 "meta.json", "spec.yaml"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    assert read_manifest(outs[0])["hash"] == read_manifest(outs[1])["hash"]
