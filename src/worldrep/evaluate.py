"""Evaluation: batched greedy decoding with a KV cache, per-row scoring, per-task summaries.

The prompt of a row is `<bos>` + its text up to and including the task's answer `=`; the model
continues greedily until `<eos>` or the task's answer budget (`max_answer_tokens`, `<eos>`
included). The decoding core runs the model's own forward (`StackedQwen2.extend`, the one
implementation of attention and RoPE in worldrep) over a preallocated KV cache and returns the
same ids as HF `generate(do_sample=False)`:

- prompts are sorted by length, then lexicographically, so a batch almost always holds prompts
  of one length (no padding, no mask) that share prefixes; a batch that mixes lengths is
  left-padded with a mask and per-row positions, as HF does;
- a prefix every row shares (`<bos>dist(c_`) is computed once, and a following segment that
  many rows repeat (a task's first city) once per distinct value, then copied to the rows;
- in the last layer only the last prompt position goes through attention and the MLP
  (`extend`), and a decoding step (one query per row) attends with plain batched products
  (`model.attention`), which on a CPU beat the fused kernel's bookkeeping.

HF `generate` stays as the reference engine (`engine='hf'`), used by the tests and the speed
benchmark, and for HF models that worldrep cannot represent.

Every row is scored by its task (`task.score`): an unparseable answer is invalid and scored
with the reference failure value, so means stay comparable with the reference numbers. Per
task, `summarize` reports `n`, `valid_rate` and, by the task's metric kind:

- 'error':    `mean_error`, `median_error`, `std_error` (absolute error, lower is better);
- 'accuracy': `accuracy` (share of exactly correct answers);
- 'score':    `mean_score` (the task's score in [0, 1], higher is better).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
import pydantic
import torch
import yaml

from . import artifacts, tokenizer
from .checkpoints import checkpoint_hash, checkpoint_order, load_checkpoint, select_checkpoints
from .config import Strict, parse_config
from .devices import resolve_device
from .errors import WorldrepError
from .model import StackedQwen2, from_hf, to_hf
from .tasks import get_task
from .tasks.common import PARSERS, parse_int, parse_whole_int

CPU_BATCH_SIZE = 256  # measured: larger batches are no faster on a CPU (caches)
GPU_BATCH_SIZE = 8192
ENGINES = ("cache", "hf")


# -- devices and prompts -------------------------------------------------------------------
def _prompt_matrix(prompt_ids, lengths=None) -> tuple[np.ndarray, np.ndarray]:
    """(ids [n, L] int64 right-padded, lengths [n]) from a 2-D array or a list of sequences."""
    if isinstance(prompt_ids, np.ndarray | torch.Tensor) and np.ndim(prompt_ids) == 2:
        ids = np.asarray(prompt_ids.cpu() if isinstance(prompt_ids, torch.Tensor) else prompt_ids,
                         dtype=np.int64)
        lens = (np.full(len(ids), ids.shape[1], np.int64) if lengths is None
                else np.asarray(lengths, np.int64))
    else:
        rows = [np.asarray(r, np.int64).ravel() for r in prompt_ids]
        lens = np.array([len(r) for r in rows], np.int64)
        ids = np.zeros((len(rows), int(lens.max()) if len(rows) else 0), np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
    if len(lens) and lens.min() < 1:
        raise WorldrepError("every prompt needs at least one token (e.g. <bos>)")
    return ids, lens


# -- the decoding core ---------------------------------------------------------------------
class _Cache:
    """Key and value buffers [batch, kv heads, length, dim] per layer. One buffer serves every
    batch of a call: fresh 100-MB allocations per batch cost page faults."""

    def __init__(self, model: StackedQwen2):
        self.model, self.keys, self.values = model, [], []

    def get(self, batch: int, length: int) -> tuple[list, list]:
        have = (self.keys[0].shape[0], self.keys[0].shape[2]) if self.keys else (0, 0)
        if batch > have[0] or length > have[1]:
            s, ref = self.model.spec, self.model.embed
            shape = (max(batch, have[0]), s.kv_heads, max(length, have[1]), s.head_dim)
            self.keys = [torch.empty(shape, dtype=ref.dtype, device=ref.device)
                         for _ in range(s.layers)]
            self.values = [torch.empty_like(k) for k in self.keys]
        return ([k[:batch, :, :length] for k in self.keys],
                [v[:batch, :, :length] for v in self.values])


class _CachedDecoder:
    """Decodes one batch over a KV cache with the model's own forward (`extend`).

    `prefill` writes the prompt keys/values, `step` appends one token per row. The cache is
    [batch, kv head, position, dim], so each row and head reads its keys contiguously.
    Left-padded rows carry a key mask and per-row positions, as HF `generate` treats an
    attention mask (positions count real tokens only).

    Prompts of one length share work: the prefix common to every row is computed once, and
    a segment after it that many rows repeat (a task's first city) once per distinct value;
    their keys/values are then copied to the rows that share them.
    """

    def __init__(self, cache: _Cache, batch: int, total_len: int):
        self.model = cache.model
        self.keys, self.values = cache.get(batch, total_len)
        self.length = 0
        self.key_ok = None  # [B, total_len] bool, only for left-padded batches
        self.pad = None  # [B] left padding per row

    def prefill(self, ids: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        """Write the prompts' keys/values; logits of each row's last prompt token."""
        if pad is None:
            return self._prefill_shared(ids)
        B, S = ids.shape
        total = self.keys[0].shape[2]
        self.pad = pad
        self.key_ok = torch.arange(total, device=ids.device)[None] >= pad[:, None]
        pos = (torch.arange(S, device=ids.device)[None] - pad[:, None]).clamp(min=0)
        causal = torch.ones(S, S, dtype=torch.bool, device=ids.device).tril()
        # A pad query attends to itself only, so it stays finite and never reaches a real row.
        eye = torch.eye(S, dtype=torch.bool, device=ids.device)
        return self._forward(ids, pos, (causal & (self.key_ok[:, None, :S] | eye))[:, None])

    def _prefill_shared(self, ids: torch.Tensor) -> torch.Tensor:
        B, S = ids.shape
        at = torch.arange(S, device=ids.device)
        common = _shared_prefix(ids)
        if common:
            self._forward(ids[:1, :common], at[:common], None, False)
            self._spread(slice(0, common), torch.zeros(B, dtype=torch.long, device=ids.device))
        end, first, inverse = _shared_segment(ids, common)
        if end:
            self._forward(ids[first, common:end], at[common:end], None, False)
            self._spread(slice(common, end), inverse)
        start = self.length
        return self._forward(ids[:, start:], at[start:], None)

    def _spread(self, positions: slice, source: torch.Tensor) -> None:
        """Row r's keys/values at `positions` become those computed for row source[r]."""
        for cache in (*self.keys, *self.values):
            cache[: len(source), :, positions] = cache[: int(source.max()) + 1, :, positions][source]

    def keep(self, rows: torch.Tensor) -> None:
        """Continue with these rows only (they move to the front of the cache, in order)."""
        for cache in (*self.keys, *self.values):
            cache[: len(rows), :, : self.length] = cache[rows, :, : self.length]
        if self.pad is not None:
            self.pad, self.key_ok = self.pad[rows], self.key_ok[rows]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        t = self.length
        if self.pad is None:
            return self._forward(tokens[:, None], torch.arange(t, t + 1, device=tokens.device),
                                 None)
        return self._forward(tokens[:, None], (t - self.pad)[:, None],
                             self.key_ok[:, None, None, : t + 1])

    def _forward(self, ids, positions, mask, logits: bool = True) -> torch.Tensor | None:
        out = self.model.extend(ids, self.keys, self.values, self.length, positions, mask,
                                logits)
        self.length += ids.shape[1]
        return out


def _shared_prefix(ids: torch.Tensor) -> int:
    """Length of the prefix every row shares (at most all but the last token), 0 if < 2."""
    if ids.shape[0] < 2:
        return 0
    same = (ids == ids[:1]).all(dim=0)
    n = int(same.long().cumprod(0).sum())
    n = min(n, ids.shape[1] - 1)
    return n if n >= 2 else 0


def _shared_segment(ids: torch.Tensor, start: int):
    """(end, first, inverse): positions start..end-1 are computed once per distinct prefix
    ids[:, :end] (rows `first`; row r uses distinct prefix inverse[r]), with `end` chosen to
    save the most work; end = 0 when that saves too little to pay for the copies."""
    B, S = ids.shape
    if B < 8 or S - start < 3:
        return 0, None, None
    rows = ids[:, : S - 1].cpu().numpy()
    order = np.lexsort(rows.T[::-1])
    differ = rows[order][1:] != rows[order][:-1]
    # Column where each sorted row first differs from the one before it.
    first_diff = np.where(differ.any(axis=1), differ.argmax(axis=1), S - 1)
    ends = np.arange(start + 1, S - 1)
    distinct = 1 + np.searchsorted(np.sort(first_diff), ends, side="left")
    saved = (ends - start) * (B - distinct)
    if not len(ends) or saved.max() < 0.1 * B * (S - start):
        return 0, None, None
    end = int(ends[saved.argmax()])
    new_group = np.r_[True, first_diff < end]
    inverse = np.empty(B, np.int64)
    inverse[order] = np.cumsum(new_group) - 1
    to = ids.device
    return end, torch.from_numpy(order[new_group]).to(to), torch.from_numpy(inverse).to(to)


def _decode_batch_cache(cache: _Cache, ids: np.ndarray, lens: np.ndarray, max_new: int,
                        device: torch.device) -> np.ndarray:
    width = int(lens.max())
    pad = width - lens
    left = np.zeros((len(ids), width), np.int64)
    cols = np.arange(width)[None] - pad[:, None]
    take = cols >= 0
    left[take] = ids[np.nonzero(take)[0], cols[take]]
    x = torch.from_numpy(left).to(device)
    decoder = _CachedDecoder(cache, len(ids), width + max_new)
    pad_t = torch.from_numpy(pad).to(device) if pad.any() else None
    logits = decoder.prefill(x, pad_t)
    out = torch.full((len(ids), max_new), tokenizer.PAD, dtype=torch.long, device=device)
    rows = torch.arange(len(ids), device=device)  # batch rows still in the decoder
    done = torch.zeros(len(ids), dtype=torch.bool, device=device)
    for j in range(max_new):
        token = logits.argmax(-1).masked_fill(done, tokenizer.PAD)
        out[rows, j] = token
        done |= token == tokenizer.EOS
        finished = int(done.sum())
        if j + 1 == max_new or finished == len(rows):
            break
        if 2 * finished >= len(rows):
            # Once half the rows have stopped, the rest decode alone: a few rambling answers
            # (an early checkpoint's) no longer drag a whole batch through the budget.
            keep = torch.nonzero(~done).squeeze(1)
            decoder.keep(keep)
            rows, token, done = rows[keep], token[keep], done[keep]
        logits = decoder.step(token)
    return out.cpu().numpy()


def _decode_batch_hf(model, ids: np.ndarray, lens: np.ndarray, max_new: int,
                     device: torch.device) -> np.ndarray:
    """HF `generate` (greedy, left padding): the reference path and the speed baseline."""
    width = int(lens.max())
    left = np.full((len(ids), width), tokenizer.PAD, np.int64)
    mask = np.zeros((len(ids), width), np.int64)
    for i, n in enumerate(lens):
        left[i, width - n:] = ids[i, :n]
        mask[i, width - n:] = 1
    gen = model.generate(
        input_ids=torch.from_numpy(left).to(device), attention_mask=torch.from_numpy(mask).to(device),
        do_sample=False, max_new_tokens=max_new, eos_token_id=tokenizer.EOS,
        pad_token_id=tokenizer.PAD)
    new = gen[:, width:].cpu().numpy()
    out = np.full((len(ids), max_new), tokenizer.PAD, np.int64)
    out[:, : new.shape[1]] = new
    return out


def _compact(model) -> StackedQwen2 | None:
    """The model as worldrep's own module, or None when it is not one worldrep can represent
    (then it decodes through HF `generate`)."""
    if isinstance(model, StackedQwen2):
        return model
    try:
        return from_hf(model).to(next(model.parameters()).device)
    except (WorldrepError, AttributeError, KeyError):
        return None


def greedy_generate(model, prompt_ids, max_new: int, batch_size: int | None = None,
                    device: str | torch.device | None = None, *, lengths=None,
                    engine: str = "cache") -> np.ndarray:
    """Greedy continuations of prompts: int64 [n, max_new], `<eos>` kept, `<pad>` after it.

    `model` is a (K=1) `StackedQwen2` or an HF causal LM. `prompt_ids` is a 2-D array of
    equal-length prompts (or right-padded ones with `lengths`) or a list of id sequences.
    Prompts are decoded `batch_size` at a time (default: 256 on a CPU, 8192 on a GPU), the
    model on `device` (default: where it is); the output keeps the input order.
    `engine='hf'` runs HF `generate` instead of the KV-cache loop.
    """
    if engine not in ENGINES:
        raise WorldrepError(f"unknown engine '{engine}'; allowed: {', '.join(ENGINES)}")
    if device is None:
        device = next(model.parameters()).device
    else:
        device = resolve_device(device)
        model.to(device)
    batch_size = batch_size or default_batch_size(device)
    if max_new < 1 or batch_size < 1:
        raise WorldrepError(f"max_new and batch_size must be >= 1 (got {max_new}, {batch_size})")
    ids, lens = _prompt_matrix(prompt_ids, lengths)
    compact = _compact(model) if engine == "cache" else None
    if compact is not None:
        decode, runner = _decode_batch_cache, _Cache(compact)
    else:
        decode = _decode_batch_hf
        runner = to_hf(model) if isinstance(model, StackedQwen2) else model
    out = np.full((len(ids), max_new), tokenizer.PAD, np.int64)
    # By length, then lexicographically: batches share prefixes (and rarely need padding).
    order = np.lexsort((*ids.T[::-1], lens))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                out[rows] = decode(runner, ids[rows], lens[rows], max_new, device)
    finally:
        model.train(was_training)
    return out


# -- scoring a frame -----------------------------------------------------------------------
RESULT_COLUMNS = ["row", "task", "prompt", "answer", "output", "parsed", "value", "valid",
                  "finished", "valid_strict", "valid_reference"]


def _prompts_and_answers(task, texts: np.ndarray, answers: np.ndarray | None):
    cut = task.prompt_chars(texts)
    bad = np.flatnonzero((cut < 2) | (cut > np.char.str_len(texts)))
    if bad.size:
        raise WorldrepError(f"{task.name}: row text '{texts[bad[0]]}' has no answer '=' where "
                            f"the task expects one ({bad.size} such rows)")
    prompts = np.strings.slice(texts, 0, cut)
    if answers is None:
        answers = np.strings.slice(texts, cut, None)
    return prompts, answers


def evaluate_frame(model, frame: pd.DataFrame, world, batch_size: int | None = None,
                   device: str | torch.device | None = None, *, engine: str = "cache",
                   parse: str = "strict") -> pd.DataFrame:
    """Generate and score every row of `frame` (columns text, task; answer if present).

    Returns one row per input row, in input order: row (position in `frame`), task, prompt,
    answer, output (generated text without <eos>), parsed (the number the output spells,
    numeric tasks, NaN otherwise), value (error / 1-0 correct / score, failure value when
    invalid), valid, finished (whether <eos> came within the task's answer budget).
    `engine` is greedy_generate's ('hf': HF `generate`, the reference path). `parse` is how
    numeric answers are read ('strict': the whole output; 'reference': its leading digits);
    valid_strict and valid_reference say whether each parser could read the output.
    """
    if parse not in PARSERS:
        raise WorldrepError(f"unknown parse '{parse}'; allowed: {', '.join(PARSERS)}")
    missing = [c for c in ("text", "task") if c not in frame.columns]
    if missing:
        raise WorldrepError(f"rows to evaluate lack column(s) {', '.join(missing)}; "
                            f"they have: {', '.join(map(str, frame.columns))}")
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    batch_size = batch_size or default_batch_size(device)
    texts_all = frame["text"].to_numpy().astype(str)
    tasks_all = frame["task"].to_numpy().astype(str)
    answers_all = frame["answer"].to_numpy().astype(str) if "answer" in frame.columns else None
    parts = []
    for name in pd.unique(tasks_all):
        task = get_task(name)
        rows = np.flatnonzero(tasks_all == name)
        prompts, answers = _prompts_and_answers(
            task, texts_all[rows], None if answers_all is None else answers_all[rows])
        ids, lengths = tokenizer.encode(prompts, bos=True, eos=False)
        generated = greedy_generate(model, ids, task.max_answer_tokens, batch_size, device,
                                    lengths=lengths, engine=engine)
        outputs = np.array(tokenizer.decode(generated), dtype=str)
        checks = {p: task.score(world, prompts, answers, outputs, parse=p) for p in PARSERS}
        value, valid = checks[parse]
        valid = np.asarray(valid, bool)
        if task.metric == "error":
            parsed = parse_whole_int(outputs) if parse == "strict" else parse_int(outputs)
        else:
            parsed = np.full(len(rows), np.nan)
        parts.append(pd.DataFrame({
            "row": rows, "task": name, "prompt": prompts, "answer": answers, "output": outputs,
            "parsed": np.where(valid, parsed, np.nan), "value": np.asarray(value, np.float64),
            "valid": valid, "finished": (generated == tokenizer.EOS).any(axis=1),
            **{f"valid_{p}": np.asarray(checks[p][1], bool) for p in PARSERS}}))
    if not parts:
        return pd.DataFrame({c: [] for c in RESULT_COLUMNS})
    return pd.concat(parts, ignore_index=True).sort_values("row", kind="stable",
                                                          ignore_index=True)[RESULT_COLUMNS]


def summarize(results: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per task: n, valid_rate and mean/median/std_error ('error' tasks), accuracy
    ('accuracy' tasks) or mean_score ('score' tasks). Invalid rows count with their
    failure value."""
    summary = {}
    for name in pd.unique(results["task"]):
        rows = results[results["task"] == name]
        value = rows["value"].to_numpy(np.float64)
        entry = {"n": int(len(rows)), "valid_rate": float(rows["valid"].mean())}
        for p in PARSERS:  # how often each parser could read the answers
            if f"valid_{p}" in rows:
                entry[f"valid_rate_{p}"] = float(rows[f"valid_{p}"].mean())
        metric = get_task(name).metric
        if metric == "error":
            entry.update(mean_error=float(value.mean()), median_error=float(np.median(value)),
                         std_error=float(value.std()))
        elif metric == "accuracy":
            entry["accuracy"] = float(value.mean())
        else:
            entry["mean_score"] = float(value.mean())
        untrained = untrained_level(metric, rows["answer"]) if "answer" in rows else None
        if untrained is not None:
            entry["untrained"] = untrained
        summary[str(name)] = entry
    return summary


def untrained_level(metric: str, answers: pd.Series) -> float | None:
    """The headline metric of the best constant answer on these rows: the plateau of a model
    that has learned the answers' format and distribution but nothing of the cities (the
    median for an absolute error, the most common answer for accuracy). None where the
    metric has no such level (scores, answers that are not numbers)."""
    if len(answers) == 0:
        return None
    if metric == "accuracy":
        return float(answers.astype(str).value_counts().iloc[0] / len(answers))
    if metric == "error":
        values = pd.to_numeric(answers, errors="coerce").to_numpy(np.float64)
        if np.isnan(values).any():
            return None
        return float(np.abs(values - np.median(values)).mean())
    return None


def format_summary(summary: dict[str, dict[str, float]]) -> str:
    """One line per task: n, valid rate and the task's headline metric."""
    lines = []
    for name, m in summary.items():
        key = next(k for k in ("mean_error", "accuracy", "mean_score") if k in m)
        extra = f"  median_error {m['median_error']:.4g}" if key == "mean_error" else ""
        lines.append(f"  {name:<16} n {m['n']:>7}  valid {m['valid_rate']:.3f}  "
                     f"{key} {m[key]:.4g}{extra}")
    return "\n".join(lines)


# -- evaluating a run ----------------------------------------------------------------------
def default_batch_size(device: torch.device) -> int:
    return CPU_BATCH_SIZE if device.type == "cpu" else GPU_BATCH_SIZE


def _siblings(path: Path, most: int = 12) -> str:
    """'; <parent> holds: a, b, ...' to point at what does exist next to a missing path."""
    parent = path.parent
    if not parent.is_dir():
        return f"; {parent} does not exist either"
    names = sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    shown = ", ".join(names[:most]) + (", ..." if len(names) > most else "")
    return f"; {parent} holds: {shown or 'no directories'}"


def load_eval_frame(data_dir: str | Path, split: str = "test", limit: int | None = None
                    ) -> pd.DataFrame:
    """The rows to evaluate: the first `limit` rows of a dataset split, in order."""
    from .data import SPLITS

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise WorldrepError(f"no dataset directory at {data_dir}{_siblings(data_dir)}")
    from .data import check_dataset, read_table

    check_dataset(data_dir)
    present = [s for s in SPLITS if (data_dir / f"{s}.parquet").is_file()]
    if split not in present:
        raise WorldrepError(f"dataset {data_dir} has no split '{split}'; available: "
                            f"{', '.join(present) or 'none'}")
    if limit is not None and limit < 1:
        raise WorldrepError(f"limit must be a positive number of rows (got {limit})")
    frame = read_table(data_dir / f"{split}.parquet", ["text", "task"], optional=("answer",))
    return frame.iloc[:limit].reset_index(drop=True) if limit else frame


def _combined_summary(eval_dir: Path, like: dict) -> dict:
    """checkpoint -> task -> metrics over every finished checkpoint evaluation in `eval_dir`
    made from the same run, dataset, split and limit."""
    same = ("run", "dataset_hash", "split", "limit", "parse")
    combined = {}
    for sub in sorted((p for p in eval_dir.iterdir() if artifacts.is_complete(p)),
                      key=lambda p: checkpoint_order(p.name)):
        try:
            spec = yaml.safe_load((sub / artifacts.SPEC).read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if all(spec.get(k) == like[k] for k in same):
            combined[sub.name] = json.loads((sub / "summary.json").read_text())
    return combined


class EvalSpec(Strict):
    """How `evaluate_run` evaluates a run's checkpoints on a dataset split (the command line's
    options and a study's eval steps are this spec)."""

    # Settings that change how fast an evaluation goes, not what it finds.
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("batch_size", "device", "threads")

    split: str = "test"  # train, validation or test
    # final, last, all, or names and steps (checkpoint-20 or 20) as a comma list or a list
    checkpoints: str | list[str | int] = "final"
    limit: int | None = None  # the first N rows only
    # how numeric answers are read: the whole output (strict) or, as the reference, its
    # leading digits; both valid rates are reported either way
    parse: Literal["strict", "reference"] = "strict"
    batch_size: int | None = pydantic.Field(None, ge=1)  # prompts decoded at once
    device: str = "auto"
    threads: int | None = pydantic.Field(None, ge=1)  # CPU threads (on a busy CPU, 1 is fastest)

    @pydantic.field_validator("split")
    @classmethod
    def _split(cls, v):
        from .data import SPLITS

        if v not in SPLITS:
            raise ValueError(f"unknown split '{v}'; available: {', '.join(SPLITS)}")
        return v

    @pydantic.field_validator("limit")
    @classmethod
    def _limit(cls, v):
        if v is not None and v < 1:
            raise ValueError("limit must be a positive number of rows")
        return v

    @pydantic.field_validator("device", mode="before")
    @classmethod
    def _device(cls, v):
        return str(v)  # a torch.device too


def evaluate_run(run_dir: str | Path, data_dir: str | Path, spec: EvalSpec | None = None, *,
                 out: str | Path | None = None, force: bool = False, **settings) -> Path:
    """Evaluate checkpoints of a run on a dataset split as `spec` says (or the EvalSpec of
    `settings`: split, checkpoints, limit, parse, batch_size, device, threads); returns the
    evaluation directory.

    Writes <out>/<checkpoint>/{eval.parquet, summary.json, spec.yaml, manifest.json} per
    checkpoint (default out: RUN_DIR/evals/<dataset name>-<split>) and <out>/summary.json
    (checkpoint -> task -> metrics, every checkpoint evaluated there on the same rows). A
    checkpoint already evaluated with the same weights, rows and split is not redone unless
    `force`. `threads` sets torch's CPU threads for the call. `parse` reads numeric answers
    whole ('strict') or by their leading digits ('reference', as the reference did).
    """
    given = {**(spec.model_dump() if spec is not None else {}), **settings}
    spec = parse_config(EvalSpec, given, where="evaluation")
    run_dir, data_dir = Path(run_dir), Path(data_dir)
    chosen = select_checkpoints(run_dir, spec.checkpoints)
    frame = load_eval_frame(data_dir, spec.split, spec.limit)
    from .data import dataset_world

    world = dataset_world(data_dir)
    device = resolve_device(spec.device)
    eval_dir = Path(out) if out is not None else run_dir / "evals" / f"{data_dir.name}-{spec.split}"
    # What was evaluated, by content: the run's identity, the rows, each checkpoint's weights.
    run_file = run_dir / "run.json"
    base = {"run": json.loads(run_file.read_text()).get("hash") if run_file.is_file() else None,
            "dataset_hash": artifacts.read_manifest(data_dir).get("hash"), "split": spec.split,
            "limit": spec.limit, "parse": spec.parse}
    where = {"run_dir": str(run_dir), "dataset": str(data_dir)}  # for people; not hashed
    before = torch.get_num_threads()
    try:
        if spec.threads:
            torch.set_num_threads(spec.threads)
        for checkpoint in chosen:
            record = {**base, "checkpoint": checkpoint.name,
                      "weights_hash": checkpoint_hash(checkpoint)}
            target = eval_dir / checkpoint.name
            if force or not artifacts.is_complete(target) or \
                    artifacts.read_manifest(target).get("hash") != artifacts.spec_hash(record):
                _evaluate_checkpoint(checkpoint, frame, world, record, target, spec, device,
                                     where)
    finally:
        torch.set_num_threads(before)
    artifacts.write_json_atomic(eval_dir / "summary.json", _combined_summary(eval_dir, base))
    return eval_dir


def _evaluate_checkpoint(checkpoint: Path, frame, world, record: dict, target: Path,
                         spec: EvalSpec, device: torch.device, where: dict) -> None:
    start = time.time()
    model = load_checkpoint(checkpoint, device).eval()
    results = evaluate_frame(model, frame, world, spec.batch_size, device, parse=spec.parse)
    with artifacts.artifact_dir(target, "eval") as tmp:
        results.to_parquet(tmp / "eval.parquet", index=False)
        artifacts.write_json_atomic(tmp / "summary.json", summarize(results))
        artifacts.write_spec(tmp, record)
        artifacts.write_manifest(tmp, "eval", record, rows=len(results), device=str(device),
                                 seconds=round(time.time() - start, 2), **where)
