"""Training steps/s: worldrep's loop against Hugging Face baselines, same data, same machine.

Contenders (reference model: hidden 128, 6 layers, 4 heads, MLP 512; batch 128; distance rows):
  trainer    HF Trainer as the reference ran it: raw text rows, a collator that tokenises every
             batch with the HF tokenizer (dynamic padding), 2 dataloader workers, linear warmup
             schedule, clipping 1.0 (fp16 AMP on CUDA, as the reference). Needs `accelerate`.
  hf-bare    the HF Qwen2ForCausalLM module in a minimal loop over pre-tokenised batches
             (fused torch AdamW, clipping, the same schedule).
  worldrep   worldrep.train's loop: Batcher + TrainStep + AdamW exactly as `worldrep train` runs
             them, a pack of one (on CUDA: bf16 autocast, torch.compile, one CUDA graph per
             batch shape).
  worldrep-eager  (CUDA only) the same loop without compile and graphs.
  worldrep-fp32   (CPU) the same loop in fp32; plain `worldrep` uses precision auto, i.e. bf16
             autocast on CPUs with native bf16 (AVX512-BF16/AMX), fp32 elsewhere.
  worldrep-tensorboard  the worldrep loop writing a TensorBoard record (six scalars) after
             every step, ten times the loop's default rate: what logging costs (`--only
             worldrep,worldrep-tensorboard`).

Each contender runs `--warmup` steps, then `--steps` timed steps; rounds alternate contenders
so that background load hits them alike, and the median round is reported.

  python benchmarks/train_throughput.py                     # CPU: trainer, hf-bare, worldrep(-fp32)
  python benchmarks/train_throughput.py --device cuda       # GPU: worldrep, worldrep-eager, hf-bare

Packing (`--pack 1,7`; on CUDA the default K list is 1,7,42): K independent runs of the
reference model, each with its own rows (a permutation of the data), seed and learning rate,
trained as one pack (worldrep.train: the K-run Batcher, a stacked TrainStep, per-model AdamW)
against the same K runs trained one after another, each as a pack of one. Both are
reported in model-steps/s. On CPU the two are timed step by step in alternation (medians), so a
shared machine's changing load hits both alike; on CUDA in blocks of timed steps.

  python benchmarks/train_throughput.py --pack 1,7          # CPU: packed vs one after another
  python benchmarks/train_throughput.py --device cuda --pack 1,7,42

The CUDA path needs only torch, transformers, numpy and worldrep (rows are synthesised with
numpy when the world data cannot be built there).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from worldrep import tokenizer
from worldrep.model import ModelSpec, hf_config, init_model, to_hf_state_dict

BATCH = 128


# -- data ------------------------------------------------------------------------------------
def real_distance_rows(n: int, seed: int):
    """Rows of a real distance dataset (world built in a temp dir)."""
    from worldrep.data import DatasetSpec, load_split, make_dataset
    from worldrep.world import WorldConfig, make_world

    with tempfile.TemporaryDirectory() as tmp:
        world = make_world(Path(tmp) / "world", WorldConfig())
        out = make_dataset(world, DatasetSpec(task="distance", n_train=n, n_val=0, n_test=0,
                                             seed=seed), Path(tmp) / "distance")
        frame = load_split(out, "train", columns=["text", "prompt_len"])
    return frame["text"].to_numpy().astype(str), frame["prompt_len"].to_numpy()


def synthetic_distance_rows(n: int, seed: int):
    """Distance rows with the real format and length distribution, from numpy alone."""
    g = np.random.default_rng(seed)
    xy = np.stack([g.integers(-1800, 1800, 6204), g.integers(-550, 750, 6204)], axis=1)
    a, b = g.integers(0, 6204, (2, n))
    dist = np.rint(np.hypot(*(xy[a] - xy[b]).T)).astype(np.int64)
    ids = [np.char.zfill(v.astype(str), 4) for v in (a, b)]
    prompt = np.char.add(np.char.add(np.char.add(np.char.add("dist(c_", ids[0]), ",c_"), ids[1]),
                         ")=")
    texts = np.char.add(prompt, dist.astype(str))
    return texts, np.char.str_len(prompt) + 1


def distance_rows(n: int, seed: int, synthetic: bool):
    if not synthetic:
        try:
            return real_distance_rows(n, seed), "real distance dataset"
        except ImportError as err:
            print(f"(world data unavailable here: {err}; using synthetic distance rows)")
    return synthetic_distance_rows(n, seed), "synthetic distance rows"


# -- contenders --------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(step, warmup: int, steps: int, device) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps / (time.perf_counter() - start)


def run_worldrep(texts, prompt_len, device, warmup, steps, eager=False,
                 precision="auto", track=()) -> float:
    from worldrep.tracking import Trackers
    from worldrep.train import AdamW, Batcher, Rows, Runtime, TrainSpec, TrainStep

    options = {"compile": False, "cuda_graphs": False} if eager else {}
    spec = TrainSpec(data="-", device=str(device), precision=precision, **options)
    rt = Runtime.of(spec)
    rows = Rows.from_texts(texts, prompt_len, rt.device)
    model = init_model(ModelSpec(), spec.seed, device=rt.device)
    o = spec.optimizer
    total = warmup + steps
    opt = AdamW(model, 3e-4, total, o.warmup_steps, o.weight_decay, o.betas, o.eps,
                o.grad_clip)
    batcher = Batcher([rows], BATCH, [spec.seed], rt.pad_multiple)
    stepper = TrainStep(model, opt, rt, [False])
    state = {"step": 0}
    logdir = tempfile.TemporaryDirectory() if track else None
    trackers = Trackers(list(track), Path(logdir.name), "bench", {}, 0) if track else None

    def step():
        ids, plen, _ = batcher.get(state["step"])
        stepper(ids, plen)
        state["step"] += 1
        if track:  # a training record every step (the loop's default is every 10): worst case
            trackers.log({"step": state["step"], "loss": 1.0, "lr": 3e-4, "grad_norm": 0.5,
                          "steps_per_s": 1.0, "tokens_per_s": 1.0, "epoch": 0.1})

    for _ in range(warmup):
        step()
    shapes = len(stepper.graphs)
    rate = _timed(step, 0, steps, rt.device)
    if len(stepper.graphs) > shapes:
        print(f"  (note: {len(stepper.graphs) - shapes} new batch shape(s) were compiled and "
              "captured inside the timed steps; raise --warmup)")
    assert np.isfinite(stepper.flush()).all()
    if track:
        trackers.close()
        logdir.cleanup()
    return rate


def _hf_model(device, spec: ModelSpec | None = None):
    from transformers import Qwen2ForCausalLM

    spec = spec or ModelSpec()
    model = Qwen2ForCausalLM(hf_config(spec))
    model.load_state_dict(to_hf_state_dict(init_model(spec, 42)))
    return model.to(device).train()


def _hf_optimizer(model, total):
    decay = [p for n, p in model.named_parameters() if n.endswith("proj.weight")
             or n.endswith("embed_tokens.weight") or n == "lm_head.weight"]
    rest = [p for p in model.parameters() if all(p is not q for q in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": rest, "weight_decay": 0.0}], lr=3e-4, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / 50 if s < 50 else max(0.0, (total - s) / max(1, total - 50)))
    return opt, sched


def run_hf_bare(texts, prompt_len, device, warmup, steps, spec: ModelSpec | None = None,
                batch: int = BATCH) -> float:
    from worldrep.train import Batcher, Rows

    rows = Rows.from_texts(texts, prompt_len, device)
    batcher = Batcher([rows], batch, [42])
    model = _hf_model(device, spec)
    opt, sched = _hf_optimizer(model, warmup + steps)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    state = {"step": 0}

    def step():
        ids = batcher.get(state["step"])[0][0]
        mask = ids != tokenizer.PAD
        with autocast:
            loss = model(input_ids=ids, attention_mask=mask.long(),
                         labels=ids.masked_fill(~mask, -100)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        state["step"] += 1

    return _timed(step, warmup, steps, device)


class _TextRows(torch.utils.data.Dataset):
    def __init__(self, texts):
        self.texts = texts

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        return {"text": str(self.texts[i])}


class _Collator:
    """The reference collator: tokenise each batch, pad to its longest row, mask the pads."""

    def __init__(self, tok):
        self.tok = tok

    def __call__(self, batch):
        enc = self.tok([b["text"] + "<eos>" for b in batch], padding=True, return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": labels}


def run_trainer(texts, prompt_len, device, warmup, steps) -> float:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            times.append(time.perf_counter())

    tok = tokenizer.build_hf_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=BATCH, max_steps=warmup + steps,
            learning_rate=3e-4, weight_decay=0.01, warmup_steps=50, lr_scheduler_type="linear",
            max_grad_norm=1.0, logging_steps=10, save_strategy="no", eval_strategy="no",
            report_to="none", dataloader_num_workers=2, remove_unused_columns=False, seed=42,
            data_seed=42, fp16=device.type == "cuda", use_cpu=device.type == "cpu",
            disable_tqdm=True)
        trainer = Trainer(model=_hf_model(device), args=args, train_dataset=_TextRows(texts),
                          data_collator=_Collator(tok), processing_class=tok,
                          callbacks=[Clock()])
        trainer.train()
    return steps / (times[-1] - times[warmup - 1])


# -- packing: K runs at once vs one after another ---------------------------------------------
def _pack_data(texts, prompt_len, k: int):
    """K data sets: run i sees the rows in its own fixed permutation (its own data)."""
    perms = [np.random.default_rng(1000 + i).permutation(len(texts)) for i in range(k)]
    return [(np.asarray(texts)[p], np.asarray(prompt_len)[p]) for p in perms]


def _packed_step(texts, prompt_len, device, k: int, total: int, stack: int | None = None,
                 seeds: list[int] | None = None):
    """One step of K runs trained as one pack (own rows, seeds and learning rates), stacked
    as train_packed stacks them (models_per_stack: all on CUDA, one at a time on CPU)."""
    from worldrep.train import AdamW, Batcher, Rows, Runtime, TrainSpec, TrainStep, models_per_stack

    rt = Runtime.of(TrainSpec(data="-", device=str(device)))
    spec = ModelSpec()
    if seeds is None:
        rows = [Rows.from_texts(t, p, rt.device) for t, p in _pack_data(texts, prompt_len, k)]
        seeds = list(range(42, 42 + k))
    else:
        rows = [Rows.from_texts(texts, prompt_len, rt.device)]
    per = min(k, stack) if stack else models_per_stack(k, rt.device)
    stacks = []
    for first in range(0, k, per):
        part = seeds[first:first + per]
        model = init_model(spec, part, device=rt.device)
        opt = AdamW(model, [3e-4 * (1 + 0.1 * (s - 42)) for s in part], total, 50, 0.01)
        batcher = Batcher(rows[first:first + per], BATCH, part, rt.pad_multiple)
        stacks.append((batcher, TrainStep(model, opt, rt, [False] * len(part))))
    state = {"step": 0}

    def step():
        for batcher, stepper in stacks:
            ids, plen, _ = batcher.get(state["step"])
            stepper(ids, plen)
        state["step"] += 1

    return step, [stepper for _, stepper in stacks], per


def _single_step(texts, prompt_len, device, seed: int, total: int):
    """One step of a single run (a pack of one)."""
    step, _, _ = _packed_step(texts, prompt_len, device, 1, total, seeds=[seed])
    return step


def run_packed(texts, prompt_len, device, warmup, steps, k: int, stack=None) -> float:
    """Model-steps/s of K runs trained as one pack (a block of timed steps)."""
    step, steppers, _ = _packed_step(texts, prompt_len, device, k, warmup + steps, stack)
    for _ in range(warmup):
        step()
    shapes = sum(len(s.graphs) for s in steppers)
    rate = _timed(step, 0, steps, device)
    if sum(len(s.graphs) for s in steppers) > shapes:
        print("  (note: new batch shapes were compiled and captured inside the timed steps; "
              "raise --warmup)")
    assert all(np.isfinite(s.flush()).all() for s in steppers)
    return k * rate


def run_interleaved(texts, prompt_len, device, warmup, steps, k: int,
                    stack: int | None = None) -> tuple[float, float]:
    """(packed, one after another) model-steps/s of the same K runs, timed step by step in
    alternation (a pack step, then one step of each single run), so that a machine whose load
    changes from minute to minute slows both alike. Medians over the timed steps."""
    total = warmup + steps
    packed, steppers, per = _packed_step(texts, prompt_len, device, k, total, stack)
    print(f"  K={k}: {per} model(s) per stacked step")
    singles = [_single_step(t, p, device, 42 + i, total)
               for i, (t, p) in enumerate(_pack_data(texts, prompt_len, k))]
    for _ in range(warmup):
        packed()
        for one in singles:
            one()
    pack_s, alone_s = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        packed()
        t1 = time.perf_counter()
        for one in singles:
            one()
        alone_s.append(time.perf_counter() - t1)
        pack_s.append(t1 - t0)
    assert all(np.isfinite(s.flush()).all() for s in steppers)
    return k / statistics.median(pack_s), k / statistics.median(alone_s)


def pack_main(args, texts, prompt_len, device, warmup, steps) -> dict:
    """CPU: packed and one-after-another interleaved step by step. CUDA (a dedicated device):
    blocks of timed steps; one after another is K x a single run's rate (measured at K=1)."""
    ks = [int(x) for x in args.pack.split(",")]
    cuda = device.type == "cuda"
    print(f"packing: K runs as one pack vs one after another; {warmup} warm-up + {steps} "
          f"timed steps, {args.rounds} rounds" + ("" if cuda else ", interleaved step by step"))
    rates: dict[str, list[float]] = {}

    def note(name: str, rate: float, r: int) -> None:
        rates.setdefault(name, []).append(rate)
        print(f"  round {r + 1} {name:18s} {rate:9.2f} model-steps/s", flush=True)

    for r in range(args.rounds):
        for k in ks:
            if cuda:
                note(f"packed K={k}", run_packed(texts, prompt_len, device, warmup, steps, k,
                                                 args.stack), r)
                if k == 1:
                    note("sequential K=1", run_worldrep(texts, prompt_len, device, warmup,
                                                        steps), r)
            else:
                packed, alone = run_interleaved(texts, prompt_len, device, warmup, steps, k,
                                                args.stack)
                note(f"packed K={k}", packed, r)
                note(f"sequential K={k}", alone, r)
    result = {n: statistics.median(v) for n, v in rates.items()}
    print("\nmedian model-steps/s:")
    for name, rate in result.items():
        print(f"  {name:18s} {rate:9.2f}")
    for k in ks:
        seq = result.get(f"sequential K={k}", result.get("sequential K=1"))
        if seq:
            print(f"packed K={k} / one after another: {result[f'packed K={k}'] / seq:.2f}x")
    return {"rates": rates, "median": result}


CONTENDERS = {"trainer": run_trainer, "hf-bare": run_hf_bare, "worldrep": run_worldrep,
              "worldrep-eager": lambda *a: run_worldrep(*a, eager=True),
              "worldrep-fp32": lambda *a: run_worldrep(*a, precision="fp32"),
              "worldrep-tensorboard": lambda *a: run_worldrep(*a, track=("tensorboard",))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per round")
    parser.add_argument("--rounds", type=int, default=None, help="default 3 on CPU, 1 on CUDA")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--only", default=None, help="comma-separated contenders")
    parser.add_argument("--synthetic", action="store_true", help="numpy-made distance rows")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--pack", nargs="?", const="", default=None,
                        help="packing mode: comma-separated pack sizes K (default 1,7; "
                             "CUDA 1,7,42)")
    parser.add_argument("--stack", type=int, default=None,
                        help="packing mode: models per stacked step (default: as train_packed)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    steps = args.steps or (500 if cuda else 20)
    warmup = args.warmup or (30 if cuda else 3)
    args.rounds = args.rounds or (1 if cuda else 3)
    names = (args.only.split(",") if args.only else
             ["worldrep", "worldrep-eager", "hf-bare"] if cuda else
             ["trainer", "hf-bare", "worldrep", "worldrep-fp32", "worldrep-tensorboard"])
    (texts, prompt_len), source = distance_rows(args.rows, 42, args.synthetic or cuda)
    lengths = tokenizer.token_length(texts)
    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{where}; torch {torch.__version__}; {source}: {len(texts)} rows, "
          f"{lengths.min()}-{lengths.max()} tokens; batch {BATCH}; reference model; "
          f"{warmup} warm-up + {steps} timed steps x {args.rounds} rounds")
    from worldrep.train import Runtime, TrainSpec

    auto = Runtime.of(TrainSpec(data="-", device=str(device)))
    print(f"worldrep precision auto -> {auto.autocast or torch.float32}, compile {auto.compile}, "
          f"CUDA graphs {auto.graphs}")

    if args.pack is not None:
        args.pack = args.pack or ("1,7,42" if cuda else "1,7")
        packed = pack_main(args, texts, prompt_len, device, warmup, steps)
        if args.json:
            Path(args.json).write_text(json.dumps({"device": where, "steps": steps,
                                                   "warmup": warmup, **packed}, indent=1))
        return 0 if all(math.isfinite(v) for v in packed["median"].values()) else 1

    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:
            try:
                rate = CONTENDERS[name](texts, prompt_len, device, warmup, steps)
            except ImportError as err:
                print(f"  {name}: skipped ({err}; e.g. pip install accelerate)")
                names = [n for n in names if n != name]
                continue
            except Exception:  # keep measuring the others; show why this one failed
                traceback.print_exc()
                print(f"  {name}: failed (traceback above)")
                names = [n for n in names if n != name]
                continue
            rates[name].append(rate)
            print(f"  round {r + 1} {name:15s} {rate:8.2f} steps/s", flush=True)
    result = {n: statistics.median(v) for n, v in rates.items() if v}
    print("\nmedian steps/s:")
    for name, rate in result.items():
        print(f"  {name:15s} {rate:8.2f}")
    for base in ("trainer", "hf-bare"):
        if "worldrep" in result and base in result:
            print(f"worldrep / {base}: {result['worldrep'] / result[base]:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": where, "rates": rates,
                                               "median": result, "steps": steps,
                                               "warmup": warmup}, indent=1))
    return 0 if result and all(math.isfinite(v) for v in result.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
