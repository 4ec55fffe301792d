"""City representations: the residual stream of a checkpoint at a city's id, for every city.

For each city the prompt is `<bos>` + task prefix + `c_XXXX` + the delimiter after the first
city (e.g. `<bos>dist(c_1234,`). One forward pass of the model's own module per batch returns
every layer at once (`StackedQwen2.hidden(..., every_layer=True)`: layer l is the residual
stream after block l; the last layer is, as HF's hidden_states and the reference, the output of
the final RMSNorm). Read positions are found from the tokenised prompt, not hard-coded, so a
different prefix or delimiter cannot misalign them.

The artifact is a directory with `reps.npz`: city ids and a copy of their city table (so every
analysis can select cities without the world), the layers and positions read, and the vectors
[n_cities, n_layers, n_positions, hidden] in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
import pydantic

from .. import artifacts, tokenizer
from ..config import Strict
from ..errors import WorldrepError, choices
from ..pools import select
from ..world import World, load_world

REPS_FILE = "reps.npz"
CITY_COLUMNS = ("city_id", "name", "x", "y", "country", "region", "group")
# Offsets from the end of `c_XXXX`: where each named token sits relative to the id.
Position = Literal["c", "underscore", "digit1", "digit2", "digit3", "last_digit", "delimiter"]
_OFFSET_FROM_ID_END = {"c": -6, "underscore": -5, "digit1": -4, "digit2": -3, "digit3": -2,
                       "last_digit": -1, "delimiter": 0}


class RepSpec(Strict):
    """Which prompt, which cities, which layers and positions (reference defaults)."""

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("batch_size", "device")
    task: str = "distance"  # whose prefix and first delimiter form the prompt
    layers: list[int] = pydantic.Field(default_factory=lambda: [5])
    positions: list[Position] = pydantic.Field(
        default_factory=lambda: ["last_digit", "delimiter"])
    cities: str = "all"  # selector (worldrep.pools) of the cities to read
    min_id: int = pydantic.Field(1000, ge=0)  # reference: drop ids below 1000 (a separate cluster)
    batch_size: int = pydantic.Field(2048, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @pydantic.field_validator("layers", "positions")
    @classmethod
    def _non_empty_unique(cls, v):
        if not v or len(set(v)) != len(v):
            raise ValueError(f"must be a non-empty list without repeats, got {v}")
        return v


@dataclass
class Reps:
    """Loaded representations: one row per city, aligned with `cities`."""

    cities: pd.DataFrame  # CITY_COLUMNS, one row per city, in vector order
    layers: np.ndarray  # int [n_layers]
    positions: np.ndarray  # str [n_positions]
    vectors: np.ndarray  # float32 [n, n_layers, n_positions, hidden]
    meta: dict

    @property
    def ids(self) -> np.ndarray:
        return self.cities["city_id"].to_numpy(np.int64)

    @property
    def xy(self) -> np.ndarray:
        return self.cities[["x", "y"]].to_numpy(np.float64)

    @property
    def synthetic(self) -> np.ndarray:
        return self.cities["group"].to_numpy(str) != "world"

    def world(self) -> World:
        """The stored city table as a World, so `pools.select` works on it."""
        return World(self.cities)

    def select(self, selector: str) -> np.ndarray:
        """Rows (into this Reps) of the cities matching a pools selector."""
        return select(self.world(), selector)

    def features(self, layers: list[int] | None = None,
                 positions: list[str] | None = None) -> np.ndarray:
        """[n, d] float32: chosen positions x layers concatenated (position-major, as in the
        reference's `representations_flat`). None means everything stored."""
        li = self._index(self.layers.tolist(), layers, "layer")
        pi = self._index(self.positions.tolist(), positions, "position")
        v = self.vectors[:, li][:, :, pi]  # [n, L, P, h]
        return np.ascontiguousarray(v.transpose(0, 2, 1, 3).reshape(len(v), -1))

    def _index(self, have: list, want: list | None, what: str) -> list[int]:
        if want is None:
            return list(range(len(have)))
        missing = [w for w in want if w not in have]
        if missing:
            raise WorldrepError(f"{what}(s) {missing} not in these representations "
                                f"({self.meta.get('source', '')}); allowed: {choices(have)}")
        return [have.index(w) for w in want]

    def take(self, rows: np.ndarray) -> Reps:
        return Reps(self.cities.iloc[rows].reset_index(drop=True), self.layers, self.positions,
                    self.vectors[rows], self.meta)


# -- prompts ---------------------------------------------------------------------------------
def prompts(task_name: str, city_ids: np.ndarray) -> np.ndarray:
    """Compact prompt texts, e.g. 'dist(c_1234,' (no <bos>)."""
    from ..tasks import get_task

    task = get_task(task_name)
    ids = np.char.zfill(np.asarray(city_ids, np.int64).astype(str), 4)
    return np.char.add(np.char.add(task.prefix + "c_", ids), task.first_delimiter)


def read_positions(task_name: str, ids: np.ndarray, names: list[str]) -> dict[str, int]:
    """Token index of each named position, located in the tokenised prompt itself."""
    from ..tasks import get_task

    task = get_task(task_name)
    id_end = 1 + len(task.prefix) + 6  # <bos> + prefix + 'c_XXXX' (exclusive end)
    expected = tokenizer.encode_chars(["c_"])[0][0]
    if ids.shape[1] != id_end + len(task.first_delimiter) or np.any(
            ids[:, id_end - 6:id_end - 4] != expected):
        raise WorldrepError(f"task '{task_name}': prompts do not tokenise as <bos> + prefix "
                            f"'{task.prefix}' + 'c_XXXX' + '{task.first_delimiter}'")
    digits = ids[:, id_end - 4:id_end]
    if not np.all((digits >= tokenizer.VOCAB.index("0")) & (digits <= tokenizer.VOCAB.index("9"))):
        raise WorldrepError("city ids must be written with exactly 4 digits (c_0000..c_9999)")
    # The delimiter position is the prompt's last token (a multi-character delimiter ends there).
    last = ids.shape[1] - 1
    return {n: (last if n == "delimiter" else id_end + _OFFSET_FROM_ID_END[n]) for n in names}


# -- extraction ------------------------------------------------------------------------------
def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise WorldrepError("device 'cuda' requested but no GPU is available; allowed: auto, cpu")
    return name


def hidden_at(model, ids: np.ndarray, layers: list[int], positions: list[int],
              batch_size: int) -> np.ndarray:
    """float32 [n, n_layers, n_positions, hidden]: residual streams of a (K=1) StackedQwen2
    at token positions."""
    import torch

    n_layers = model.spec.layers
    bad = [layer for layer in layers if not 0 <= layer <= n_layers]
    if bad:
        raise WorldrepError(f"layers {bad} do not exist in this model; allowed: 0 (embeddings) "
                            f"to {n_layers} (final block, after the final norm)")
    device = model.embed.device
    pos = torch.as_tensor(positions, device=device)
    out = np.empty((len(ids), len(layers), len(positions), model.spec.hidden), np.float32)
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            batch = torch.as_tensor(ids[start:start + batch_size].astype(np.int64), device=device)
            hs = model.hidden(batch[None], every_layer=True)
            picked = torch.stack([hs[layer][0][:, pos] for layer in layers], dim=1)
            out[start:start + len(batch)] = picked.float().cpu().numpy()
    return out


def city_rows(world: World, spec: RepSpec) -> np.ndarray:
    rows = select(world, spec.cities)
    rows = rows[world.ids[rows] >= spec.min_id]
    if len(rows) == 0:
        raise WorldrepError(f"no city matches cities='{spec.cities}' with id >= {spec.min_id}")
    return rows


def extract_representations(checkpoint_dir: str | Path, world_dir: str | Path | World,
                            spec: RepSpec | None = None, out: str | Path = "reps") -> Path:
    """Read every selected city's representation from one checkpoint into `out/reps.npz`."""
    from ..checkpoints import checkpoint_hash, load_checkpoint

    spec = spec or RepSpec()
    world = world_dir if isinstance(world_dir, World) else load_world(world_dir)
    rows = city_rows(world, spec)
    ids, _ = tokenizer.encode(prompts(spec.task, world.ids[rows]), eos=False)
    where = read_positions(spec.task, ids, list(spec.positions))
    model = load_checkpoint(checkpoint_dir, _device(spec.device)).eval()
    vectors = hidden_at(model, ids, spec.layers, [where[p] for p in spec.positions],
                        spec.batch_size)
    cities = world.cities.iloc[rows][list(CITY_COLUMNS)].reset_index(drop=True)
    # Inputs by content (paths are recorded for people in the manifest, not hashed).
    full_spec = {"reps": spec.model_dump(mode="json"),
                 "checkpoint_hash": checkpoint_hash(checkpoint_dir), "world_hash": world.hash}
    return save_reps(out, cities, spec.layers, list(spec.positions), vectors, full_spec,
                     token_positions=[where[p] for p in spec.positions],
                     checkpoint=str(checkpoint_dir),
                     world=str(world.path) if world.path else None)


def extract_run(run_dir: str | Path, world_dir: str | Path | World, spec: RepSpec | None = None,
                out: str | Path = "reps", checkpoints: str = "all") -> dict[str, Path]:
    """Representations of several checkpoints of a run (`worldrep.checkpoints.select_checkpoints`:
    all, last, final, or a comma list), one artifact dir each: out/<name>/.

    Finished directories (with a manifest) are kept, so an interrupted sweep resumes.
    """
    from ..checkpoints import select_checkpoints

    spec = spec or RepSpec()
    chosen = select_checkpoints(run_dir, checkpoints)
    world = world_dir if isinstance(world_dir, World) else load_world(world_dir)
    done = {}
    for path in chosen:
        target = Path(out) / path.name
        if not artifacts.is_complete(target):
            extract_representations(path, world, spec, target)
        done[path.name] = target
    return done


def writes_series(source: str | Path, checkpoint: str) -> bool:
    """Whether `extract` writes a series (one reps directory per checkpoint, out/<name>/)
    rather than one reps directory: for a run's checkpoints 'all' or a comma list."""
    return not (Path(source) / "config.json").is_file() and (
        checkpoint == "all" or "," in checkpoint)


def extract(source: str | Path, world_dir: str | Path | World, spec: RepSpec | None = None,
            out: str | Path = "reps", checkpoint: str = "last") -> Path | dict[str, Path]:
    """Representations of a checkpoint directory, or of a run's checkpoints: `checkpoint` is
    last, final, checkpoint-N, a comma list or all (see `writes_series`). The one place that
    chooses: the command line and the study's reps steps both call it."""
    from ..checkpoints import select_checkpoints

    if writes_series(source, checkpoint):
        return extract_run(source, world_dir, spec, out, checkpoint)
    if not (Path(source) / "config.json").is_file():
        source = select_checkpoints(source, checkpoint)[0]
    return extract_representations(source, world_dir, spec, out)


def save_reps(out: str | Path, cities: pd.DataFrame, layers, positions, vectors: np.ndarray,
              spec: dict, **extra) -> Path:
    """Write a reps artifact directory (also used by tests to store synthetic representations)."""
    missing = [c for c in CITY_COLUMNS if c not in cities.columns]
    if missing:
        raise WorldrepError(f"city table lacks columns {missing}; needed: {', '.join(CITY_COLUMNS)}")
    vectors = np.asarray(vectors, np.float32)
    if vectors.shape[:3] != (len(cities), len(layers), len(positions)):
        raise WorldrepError(f"vectors have shape {vectors.shape}; expected "
                            f"({len(cities)}, {len(layers)}, {len(positions)}, hidden)")
    arrays = {f"city_{c}": cities[c].to_numpy() for c in CITY_COLUMNS}
    arrays = {k: (v.astype(str) if v.dtype == object else v) for k, v in arrays.items()}
    with artifacts.artifact_dir(out, "representations") as tmp:
        artifacts.save_npz(tmp / REPS_FILE, vectors=vectors, layers=np.asarray(layers, np.int64),
                 positions=np.asarray(positions, str), **arrays)
        artifacts.write_spec(tmp, spec)
        artifacts.write_manifest(tmp, "representations", spec, n_cities=len(cities),
                                 shape=list(vectors.shape), **extra)
    return Path(out)


def reps_file(path: str | Path) -> Path:
    """The reps.npz of a reps directory (or the file itself), which must be finished."""
    path = Path(path)
    if path.is_file():
        return path
    if not (path / REPS_FILE).is_file() or not artifacts.is_complete(path):
        raise WorldrepError(f"no finished representations at {path} (expected {REPS_FILE} and "
                            "manifest.json; make them with `worldrep analyze reps`)")
    return path / REPS_FILE


def load_reps(path: str | Path) -> Reps:
    file = reps_file(path)
    with np.load(file, allow_pickle=False) as z:
        cities = pd.DataFrame({c: z[f"city_{c}"] for c in CITY_COLUMNS})
        return Reps(cities, z["layers"], z["positions"], z["vectors"], {"source": str(file)})


def reps_series(path: str | Path) -> dict[str, Path]:
    """Checkpoint name -> reps dir for a directory written by `extract_run`, in step order."""
    from ..checkpoints import checkpoint_order

    path = Path(path)
    subdirs = [p for p in path.iterdir() if p.is_dir() and (p / REPS_FILE).is_file()] \
        if path.is_dir() else []
    if not subdirs:
        raise WorldrepError(f"{path} holds no checkpoint representations (<name>/{REPS_FILE})")
    return {p.name: p for p in sorted(subdirs, key=lambda p: checkpoint_order(p.name))}


def is_series(path: str | Path) -> bool:
    """Whether `path` is a series of reps directories (`extract_run`'s), not one reps
    artifact (a directory with reps.npz, or the file itself)."""
    path = Path(path)
    return not (path.is_file() or (path / REPS_FILE).is_file())


def last_reps(path: str | Path) -> Path:
    """One reps artifact as itself, or the last checkpoint's of a series."""
    return list(reps_series(path).values())[-1] if is_series(path) else Path(path)


def by_checkpoint(label: str, path: str | Path) -> dict[str, Path]:
    """{label: path} for one reps artifact; {label/checkpoint: dir} for a series."""
    if not is_series(path):
        return {label: Path(path)}
    return {f"{label}/{name}": p for name, p in reps_series(path).items()}
