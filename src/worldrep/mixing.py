"""Mixtures: rows drawn from several task datasets, per split, seeded and shuffled.

`sample` takes `n` training rows of each source without replacement (the validation and test
splits take the same fraction, rounded up, so a small component still contributes rows unless
`n_val`/`n_test` say otherwise); `concat` takes every row. A source listed twice is drawn once
for the sum of its requests, so no row is duplicated. Each row keeps a `source` column.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pydantic

from . import artifacts
from .config import Strict
from .data import SPLITS, check_dataset, dataset_meta, dataset_world, write_dataset
from .errors import WorldrepError
from .seeding import rng as make_rng


class MixSource(Strict):
    path: str
    n: int | None = pydantic.Field(None, ge=0)  # training rows; None = all
    n_val: int | None = pydantic.Field(None, ge=0)
    n_test: int | None = pydantic.Field(None, ge=0)
    name: str | None = None  # label in the `source` column; default: the directory name

    @property
    def label(self) -> str:
        return self.name or Path(self.path).name


class MixSpec(Strict):
    sources: list[MixSource] = pydantic.Field(min_length=1)
    mode: Literal["sample", "concat"] = "sample"
    seed: int = 42
    shuffle: bool = True


def parse_source(text: str) -> dict:
    """'[LABEL=]DIR[:N]' from the command line (the label defaults to the directory's name)."""
    label, sep, rest = text.partition("=")
    out = {"name": label} if sep and label else {}
    text = rest if sep else text
    path, sep, n = text.rpartition(":")
    if sep and n.isdigit():
        return {**out, "path": path, "n": int(n)}
    return {**out, "path": text}


def split_sizes(src: MixSource, sizes: dict[str, int], mode: str) -> dict[str, int]:
    """Rows per split that `src` gives a mixture, from its dataset's `sizes` per split."""
    if mode == "concat":
        return dict(sizes)
    n_train = sizes["train"] if src.n is None else src.n
    if n_train > sizes["train"]:
        raise WorldrepError(f"mixture source {src.path}: n={n_train} but it has only "
                            f"{sizes['train']} training rows; allowed: n <= {sizes['train']}")
    frac = n_train / sizes["train"] if sizes["train"] else 0.0
    out = {"train": n_train}
    for split, explicit in (("validation", src.n_val), ("test", src.n_test)):
        want = math.ceil(sizes[split] * frac) if explicit is None else explicit
        if want > sizes[split]:
            raise WorldrepError(f"mixture source {src.path}: {split} asks {want} rows, it has "
                                f"{sizes[split]}")
        out[split] = want
    return out


def mixture_sizes(sources: list[MixSource], sizes: list[dict[str, int] | None],
                  mode: str) -> dict[str, int]:
    """Rows per split of a mixture whose sources' datasets have `sizes` rows per split (None:
    not known, that source is passed over). An error names the first source ('sources[i]')
    that cannot give what it is asked, alone or with the other draws from its dataset."""
    total = dict.fromkeys(SPLITS, 0)
    asked: dict[str, dict[str, int]] = {}
    for i, (src, have) in enumerate(zip(sources, sizes, strict=True)):
        if have is None:
            continue
        try:
            got = split_sizes(src, have, mode)
        except WorldrepError as err:
            raise WorldrepError(f"'sources[{i}]': {err}") from None
        mine = asked.setdefault(src.path, dict.fromkeys(got, 0))
        for split, n in got.items():
            total[split] += n
            mine[split] += n
            if mine[split] > have[split]:
                raise WorldrepError(
                    f"'sources[{i}]': '{src.path}' is asked {mine[split]} {split} rows in all "
                    f"(it is listed more than once) but has {have[split]}; set n_val/n_test of "
                    "the smaller draws (e.g. 0) or make the dataset larger")
    return total


def _source_ids(spec: MixSpec) -> dict[str, str]:
    """Each source path's content hash (its manifest's): what seeds and identifies it."""
    ids = {}
    for src in spec.sources:
        if not artifacts.is_complete(src.path):
            raise WorldrepError(f"mixture source {src.path} is not a finished dataset "
                                f"(missing manifest.json)")
        check_dataset(src.path)
        ids[src.path] = artifacts.read_manifest(src.path)["hash"]
    return ids


def build_mixture(spec: MixSpec) -> tuple[dict[str, pa.Table], dict]:
    ids = _source_ids(spec)
    metas = {src.path: dataset_meta(src.path) for src in spec.sources}
    worlds = {m.get("world_hash") for m in metas.values()}
    if len(worlds) > 1:
        raise WorldrepError("mixture sources come from different worlds: "
                            + ", ".join(f"{p} ({m.get('world_hash')})" for p, m in metas.items()))
    # Repeated sources (by content, whatever their paths) share one draw without replacement.
    by_source: dict[str, list[tuple[MixSource, dict[str, int]]]] = {}
    for src in spec.sources:
        sizes = metas[src.path]["sizes"]
        by_source.setdefault(ids[src.path], []).append((src, split_sizes(src, sizes, spec.mode)))
    out: dict[str, list[pa.Table]] = {s: [] for s in SPLITS}
    for source_id, requests in by_source.items():
        path = requests[0][0].path
        for split in SPLITS:
            table = pq.read_table(Path(path) / f"{split}.parquet")
            total = sum(sizes[split] for _, sizes in requests)
            if total > table.num_rows:
                raise WorldrepError(f"mixture: {path} is listed {len(requests)} times asking "
                                    f"{total} {split} rows in all; it has {table.num_rows}")
            # Seeded by the source's content, never by where it lies.
            g = make_rng(spec.seed, "mix", source_id, split)
            order = (np.arange(table.num_rows) if spec.mode == "concat"
                     else g.permutation(table.num_rows)[:total])
            start = 0
            for src, sizes in requests:
                part = table.take(order[start:start + sizes[split]])
                start += sizes[split]
                out[split].append(part.append_column(
                    "source", pa.array([src.label] * part.num_rows, pa.string())))
    tables = {}
    for split, parts in out.items():
        table = pa.concat_tables(parts, promote_options="default")
        if spec.shuffle:
            table = table.take(make_rng(spec.seed, "mix", "shuffle", split)
                               .permutation(table.num_rows))
        tables[split] = table
    first = metas[spec.sources[0].path]
    meta = {"mode": spec.mode, "world_hash": first.get("world_hash"),
            "sources": [{"label": s.label, "hash": ids[s.path],
                         "sizes": split_sizes(s, metas[s.path]["sizes"], spec.mode)}
                        for s in spec.sources]}
    return tables, meta


def identity(spec: MixSpec) -> dict:
    """What a mixture is: its settings and its sources by label and content, no paths."""
    ids = _source_ids(spec)
    sources = [{**s.model_dump(mode="json", exclude={"path", "name"}), "label": s.label,
                "hash": ids[s.path]} for s in spec.sources]
    return {"mixture": {**spec.model_dump(mode="json", exclude={"sources"}), "sources": sources}}


def make_mixture(spec: MixSpec, out: str | Path) -> Path:
    tables, meta = build_mixture(spec)
    world = dataset_world(spec.sources[0].path)
    return write_dataset(out, tables, identity(spec), meta, world, kind="mixture")
