"""Task datasets: unique items drawn once and sliced into train / validation / test.

Splits never share an item: items are drawn from one seeded stream, duplicates (by the task's
item identity) are dropped and refilled, and the unique stream is cut into the three splits.
Tasks with balanced labels get exactly their target share of each label in every split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pydantic

from . import artifacts, tokenizer
from .config import Strict, parse_config
from .errors import WorldrepError
from .pools import select
from .seeding import rng as make_rng
from .tasks import get_task
from .tasks.base import Items, Sampling, Task
from .world import World, load_world

SPLITS = ("train", "validation", "test")
WORLD_FILE = "cities.parquet"  # a dataset's copy of its world's city table


class DatasetSpec(Strict):
    task: str
    n_train: int = pydantic.Field(1_000_000, ge=0)
    n_val: int = pydantic.Field(128, ge=0)
    n_test: int = pydantic.Field(10_000, ge=0)
    seed: int = 42
    pool: str = "world"  # which cities may appear (see worldrep.pools)
    require: str | None = None  # every item includes >= 1 city of this selection
    true_ratio: float = pydantic.Field(0.5, gt=0, lt=1)  # share of the first label, balanced tasks
    params: dict[str, Any] = pydantic.Field(default_factory=dict)  # task-specific settings

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": self.n_train, "validation": self.n_val, "test": self.n_test}


def _hash_rows(keys: np.ndarray) -> np.ndarray:
    """64-bit hash of each key row (splitmix-style mixing; collisions ~1e-7 at 1M rows)."""
    h = np.full(len(keys), 0x9E3779B97F4A7C15, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(keys.shape[1]):
            h ^= keys[:, j].astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) + (h << np.uint64(6)) + (h >> np.uint64(2))
            h *= np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(31)
    return h


class _UniqueStream:
    """Accumulates items from repeated draws, dropping any item already seen."""

    def __init__(self):
        self.parts: list[Items] = []
        self.seen = np.zeros(0, np.uint64)
        self.answers: list[np.ndarray] = []

    def add(self, task: Task, items: Items, answers: np.ndarray) -> None:
        h = _hash_rows(task.item_keys(items))
        _, first = np.unique(h, return_index=True)
        keep = np.sort(first)
        keep = keep[~np.isin(h[keep], self.seen)]
        self.seen = np.concatenate([self.seen, h[keep]])
        self.parts.append(items.take(keep))
        self.answers.append(answers[keep])

    @property
    def count(self) -> int:
        return len(self.seen)

    def result(self) -> tuple[Items, np.ndarray]:
        return Items.concat(self.parts), np.concatenate(self.answers)


def _check_possible(task: Task, s: Sampling, spec: DatasetSpec, p, total: int) -> None:
    possible = task.n_possible(s, p)
    if total > possible:
        raise WorldrepError(
            f"{task.name}: {total} unique items requested (train+validation+test) but only "
            f"{int(possible)} distinct items exist for pool '{spec.pool}'"
            + (f" with require '{spec.require}'" if spec.require else "")
            + f"; allowed: at most {int(possible)}")


def _sampling(world: World, spec: DatasetSpec) -> tuple[Task, Sampling, Any]:
    task = get_task(spec.task)
    p = parse_config(task.Params, spec.params, where=f"params of task '{task.name}'")
    pool = select(world, spec.pool)
    required = select(world, spec.require) if spec.require else None
    if len(pool) == 0:
        raise WorldrepError(f"the pool '{spec.pool}' selects no city")
    if required is not None and len(required) == 0:
        raise WorldrepError(f"the required group '{spec.require}' selects no city")
    return task, Sampling(world, pool, required), p


def check_size(world: World, spec: DatasetSpec) -> None:
    """That the world holds as many distinct items as the splits ask (before any work)."""
    task, s, p = _sampling(world, spec)
    _check_possible(task, s, spec, p, sum(spec.sizes.values()))


def draw_unique(task: Task, s: Sampling, spec: DatasetSpec, p, total: int,
                g: np.random.Generator) -> tuple[Items, np.ndarray]:
    """`total` distinct items (answers alongside), label-balanced for balanced tasks."""
    _check_possible(task, s, spec, p, total)
    labels = task.balanced_labels
    want = _label_targets(total, labels, spec.true_ratio) if labels else None
    stream = _UniqueStream()
    batch = max(1024, int(total * 1.05))
    for _ in range(200):
        items = task.sample(s, batch, g, p)
        answers = task.answers(s, items, p)
        if want is not None:
            items, answers = _keep_needed(task, items, answers, stream, want)
        stream.add(task, items, answers)
        have = stream.count
        if want is None and have >= total:
            break
        if want is not None:
            counts = _label_counts(task, stream, want)
            if all(h >= w for h, w in zip(counts, want, strict=True)):
                break
            # size the next batch by the label that is still short, not by the total
            short = max(w - h for h, w in zip(counts, want, strict=True))
            batch = max(1024, 2 * short + 1024)
        else:
            batch = max(1024, 2 * (total - have) + 1024)
    else:
        raise WorldrepError(f"{task.name}: could not find {total} distinct items in the pool "
                            f"'{spec.pool}' (found {stream.count}); ask for fewer rows")
    items, answers = stream.result()
    if want is None:
        return items.take(np.arange(total)), answers[:total]
    return _balanced_order(task, items, answers, spec, g)


def _label_targets(total: int, labels: tuple[str, ...], ratio: float) -> tuple[int, int]:
    first = int(round(total * ratio))
    return first, total - first


def _label_counts(task, stream: _UniqueStream, want) -> tuple[int, int]:
    labels = task.labels(np.concatenate(stream.answers)) if stream.answers else np.array([])
    first = int((labels == task.balanced_labels[0]).sum())
    return first, len(labels) - first


def _keep_needed(task, items, answers, stream, want):
    """Drop surplus items of a label already filled, so memory stays bounded."""
    have = _label_counts(task, stream, want)
    labels = task.labels(answers)
    is_first = labels == task.balanced_labels[0]
    keep_first = np.flatnonzero(is_first)[: max(0, 2 * (want[0] - have[0]) + 64)]
    keep_other = np.flatnonzero(~is_first)[: max(0, 2 * (want[1] - have[1]) + 64)]
    keep = np.sort(np.concatenate([keep_first, keep_other]))
    return items.take(keep), answers[keep]


def _balanced_order(task, items, answers, spec: DatasetSpec, g):
    """Each split gets exactly its share of each label, shuffled within the split."""
    labels = task.labels(answers)
    first = np.flatnonzero(labels == task.balanced_labels[0])
    other = np.flatnonzero(labels != task.balanced_labels[0])
    order = []
    for n in spec.sizes.values():
        n_first = int(round(n * spec.true_ratio))
        take = np.concatenate([first[:n_first], other[: n - n_first]])
        first, other = first[n_first:], other[n - n_first:]
        order.append(g.permutation(take))
    index = np.concatenate(order)
    return items.take(index), answers[index]


def build_rows(world: World, spec: DatasetSpec) -> tuple[dict[str, pd.DataFrame], dict]:
    """Generate the three splits of a task dataset in memory."""
    task, s, p = _sampling(world, spec)
    g = make_rng(spec.seed, "dataset", task.name, spec.pool, spec.require or "")
    total = sum(spec.sizes.values())
    items, answers = draw_unique(task, s, spec, p, total, g)
    texts = task.format(s, items, answers)
    values = task.values(answers)
    splits, start = {}, 0
    for split, n in spec.sizes.items():
        sl = slice(start, start + n)
        splits[split] = _frame(task, world, items.take(np.arange(start, start + n)), texts[sl],
                               answers[sl], values[sl])
        start += n
    return splits, {"task": task.name, "params": p.model_dump(mode="json")}


def _frame(task: Task, world: World, items: Items, texts, answers, values) -> pa.Table:
    texts = np.asarray(texts).astype(str)
    cities = items.cities
    counts = (cities >= 0).sum(axis=1)
    ids = world.ids[cities[cities >= 0]].astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.table({
        "text": pa.array(texts, pa.string()),
        "task": pa.array(np.full(len(texts), task.name), pa.string()),
        "prompt_len": (task.prompt_chars(texts) + 1).astype(np.int16),  # + <bos>
        "n_tokens": tokenizer.token_length(texts).astype(np.int16),
        "answer": pa.array(np.asarray(answers).astype(str), pa.string()),
        "value": np.asarray(values, np.float64),
        "cities": pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids)),
    })


def _as_table(frame: pd.DataFrame | pa.Table) -> pa.Table:
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(
        frame, preserve_index=False)
    return table.replace_schema_metadata(None)  # plain parquet: no pandas dtype hints


def write_dataset(out: str | Path, splits: dict[str, pd.DataFrame], spec: dict,
                  meta: dict, world: World, kind: str = "dataset") -> Path:
    """Write the splits, with a copy of the world's city table: a dataset is scored against
    its own cities wherever it is moved (it never points at another directory)."""
    with artifacts.artifact_dir(out, kind) as tmp:
        for split, frame in splits.items():
            pq.write_table(_as_table(frame), tmp / f"{split}.parquet")
        pq.write_table(_as_table(world.cities), tmp / WORLD_FILE)
        lengths = np.concatenate([np.asarray(f["n_tokens"]) for f in splits.values()])
        stats = {
            "sizes": {k: len(v) for k, v in splits.items()},
            "tasks": sorted(set().union(*(set(np.unique(np.asarray(f["task"])))
                                          for f in splits.values()))),
            "max_len": int(lengths.max()) if len(lengths) else 0,
            "min_len": int(lengths.min()) if len(lengths) else 0,
            "avg_len": round(float(lengths.mean()), 2) if len(lengths) else 0.0,
            **meta,
        }
        (tmp / "meta.json").write_text(json.dumps(stats, indent=1, default=str))
        artifacts.write_spec(tmp, spec)
        artifacts.write_manifest(tmp, kind, spec, **{"sizes": stats["sizes"]})
    return Path(out)


def make_dataset(world: World | str | Path, spec: DatasetSpec, out: str | Path) -> Path:
    """Generate a task dataset and write it as an artifact directory."""
    if not isinstance(world, World):
        world = load_world(world)
    splits, meta = build_rows(world, spec)
    full_spec = {"dataset": spec.model_dump(mode="json"), "world_hash": world.hash}
    meta.update({"world_hash": world.hash, "seed": spec.seed})
    return write_dataset(out, splits, full_spec, meta, world)


# -- reading -------------------------------------------------------------------------------
DATASET_KINDS = ("dataset", "mixture")


def check_dataset(path: str | Path) -> Path:
    """A finished, untampered dataset or mixture directory, else a WorldrepError naming it."""
    path = Path(path)
    if not artifacts.is_complete(path):
        raise WorldrepError(f"no finished dataset at {path} (missing manifest.json); make one "
                            "with `worldrep data make` or `worldrep data mix`")
    try:
        kind = artifacts.read_manifest(path).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind not in DATASET_KINDS:
        raise WorldrepError(f"{path} is a {kind or 'unreadable'} artifact, not a dataset or "
                            "mixture; give the directory `worldrep data make` or `data mix` "
                            "wrote")
    artifacts.verify(path)
    return path


def read_table(file: Path, columns: list[str] | None = None, optional: tuple[str, ...] = ()
               ) -> pd.DataFrame:
    """A parquet file (`columns`, and those of `optional` it has), or a WorldrepError saying
    it is unreadable or lacks columns."""
    try:
        names = pq.read_schema(file).names
    except (OSError, pa.ArrowException) as err:
        raise WorldrepError(f"{file} is not a readable parquet file ({str(err)[:120]})") from None
    missing = [c for c in columns or [] if c not in names]
    if missing:
        raise WorldrepError(f"{file} lacks the columns {', '.join(missing)} (it has "
                            f"{', '.join(names) or 'none'}); make the dataset again")
    if columns is not None:
        columns = list(columns) + [c for c in optional if c in names and c not in columns]
    try:
        return pd.read_parquet(file, columns=columns)
    except (OSError, pa.ArrowException) as err:
        raise WorldrepError(f"{file} is not a readable parquet file ({str(err)[:120]})") from None


def load_split(path: str | Path, split: str = "train", columns: list[str] | None = None
               ) -> pd.DataFrame:
    path = Path(path)
    if split not in SPLITS:
        raise WorldrepError(f"unknown split '{split}'; allowed: {', '.join(SPLITS)}")
    check_dataset(path)
    return read_table(path / f"{split}.parquet", columns)


def dataset_meta(path: str | Path) -> dict:
    path = check_dataset(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as err:
        raise WorldrepError(f"{path / 'meta.json'} cannot be read ({type(err).__name__}); "
                            "make the dataset again") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("sizes"), dict):
        raise WorldrepError(f"{path / 'meta.json'} holds no split sizes; make the dataset again")
    return meta


def dataset_world(path: str | Path) -> World:
    """The world a dataset (or mixture) was generated from: its own copy of the cities."""
    path = Path(path)
    if not (path / WORLD_FILE).is_file():
        raise WorldrepError(f"dataset {path} holds no {WORLD_FILE}; it was written by an older "
                            "worldrep: make it again")
    meta = dataset_meta(path)
    return World(read_table(path / WORLD_FILE), hash=meta["world_hash"])

