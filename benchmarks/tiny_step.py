"""The CPU studies' training step against this machine's matmul rate.

Every CPU study (quickstart, findings, the learning-speed sweeps) is bounded by how many steps
of a tiny model one core can do. This script measures worldrep's `TrainStep` (batch, forward,
backward, clipped AdamW; exactly what `worldrep train` runs) at the sizes those studies use,
and, in the same run, the rate at which this core multiplies the step's own matmul shapes
(every linear's forward, input-gradient and weight-gradient product), in fp32 and bf16. So
each figure reads as a fraction of the limit for its dtype. FLOPs per step are counted as
6 x parameters x real tokens (a batch of 64 distance rows holds ~1,630).

Contenders (rounds alternate them, so background load hits them alike; medians reported):
  baseline  the default step of worldrep at --baseline (a git revision; default 17ad4b1, the
            step before this benchmark existed: eager, fused SDPA, LM head over every
            position), imported from a snapshot of that revision's sources
  eager     today's step with compile off
  compiled  today's step with torch.compile (one graph for every batch width)
  default   today's step as `compile: auto` resolves on this machine (named in the output)

  python benchmarks/tiny_step.py                              # 64x3 and 64x2 at batch 64, 128
  python benchmarks/tiny_step.py --sizes 64x3:64 --rounds 5 --steps 40
  python benchmarks/tiny_step.py --threads 2                  # one job on both cores
  python benchmarks/tiny_step.py --curves 500                 # loss curves against the landed step

`--curves N` checks today's step instead of timing it: N steps of the findings-size model
(64 x 3, batch 64, answer-only loss) from one initialisation over the same batches, the
landed step (eager fp32, `--baseline`) against today's eager and compiled steps; it prints
the largest difference of the per-step losses, and that the compiled run stopped at N/2 and
resumed (a fresh model, optimizer and compile from the saved weights and optimizer state)
ends with bit-identical weights.

Rates are steps per second of this process's CPU time (with one thread: steps/s on an idle
core), so other jobs on a shared machine change them little; with `--threads 2` and more they
are wall-clock rates (run those on an idle machine). Compile time (the first steps of a compiled contender, cold or warm inductor cache as found)
is printed separately and not in the rates.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import torch

from train_throughput import synthetic_distance_rows as distance_rows  # same directory

REPO = Path(__file__).resolve().parents[1]
BASELINE = "17ad4b1"
LR, WARMUP, TOTAL = 2e-3, 50, 100_000


def snapshot(rev: str) -> str:
    """Import name of worldrep's package at git revision `rev`, unpacked into a temp dir."""
    blob = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev,
                           "src/worldrep"], check=True, capture_output=True).stdout
    root = Path(tempfile.mkdtemp(prefix="worldrep-baseline-"))
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(root, filter="data")
    (root / "src" / "worldrep").rename(root / "worldrep_baseline")
    sys.path.insert(0, str(root))
    return "worldrep_baseline"


class Contender:
    """One step function on its own model, optimizer and batches."""

    def __init__(self, package: str, size: tuple[int, int], batch: int, rows, compile_):
        train = importlib.import_module(f"{package}.train")
        model_mod = importlib.import_module(f"{package}.model")
        hidden, layers = size
        arch = model_mod.ModelSpec(preset=None, hidden=hidden, layers=layers, heads=4,
                                   intermediate=4 * hidden)
        options = {} if compile_ == "auto" else {"compile": compile_}
        spec = train.TrainSpec(data="-", **options)
        try:  # a long run (compile: auto decides by the run's length since 2026-12)
            runtime = train.Runtime.of(spec, TOTAL)
        except TypeError:
            runtime = train.Runtime.of(spec)
        self.compiles = runtime.compile
        model = model_mod.init_model(arch, 42)
        self.params = sum(p[0].numel() for p in model.parameters())
        opt = train.AdamW(model, LR, TOTAL, WARMUP, 0.01)
        self.batches = train.Batcher([train.Rows.from_texts(*rows)], batch, [42])
        step_class = getattr(train, "TrainStep", None) or train.Step  # older copies: Step
        self.step_fn = step_class(model, opt, runtime, [True])
        self.index, self.tokens = 0, []

    def step(self) -> None:
        ids, plen, tokens = self.batches.get(self.index)
        self.step_fn(ids, plen)
        self.tokens.append(int(tokens.sum()))
        self.index += 1

    def timed(self, steps: int, clock=time.process_time) -> float:
        """Steps per second of this process's CPU time (on a machine that other jobs share,
        time-slicing stretches the wall clock but not the CPU time a step needs), or of the
        wall clock (`--threads` > 1: the CPU time of two threads is not the time a step
        takes)."""
        start = clock()
        for _ in range(steps):
            self.step()
        return steps / (clock() - start)


def matmul_limit(size: tuple[int, int], tokens: int, dtype, reps: int) -> float:
    """GFLOP/s of the step's linear-layer products at this size (all three of each layer's
    linears: forward, input gradient, weight gradient), weighted by their FLOPs."""
    hidden, _ = size
    inter, vocab = 4 * hidden, 98
    shapes = []
    for n_in, n_out in ((hidden, 3 * hidden), (hidden, hidden), (hidden, 2 * inter),
                        (inter, hidden), (hidden, vocab)):
        shapes += [(tokens, n_in, n_out), (tokens, n_out, n_in), (n_out, tokens, n_in)]
    flops = seconds = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(1, m, k, dtype=dtype), torch.randn(1, k, n, dtype=dtype)
        for _ in range(3):
            torch.bmm(a, b)
        start = time.process_time()
        for _ in range(reps):
            torch.bmm(a, b)
        seconds += time.process_time() - start
        flops += 2.0 * m * k * n * reps
    return flops / seconds / 1e9


def measure(size, batch, names, args, packages, rows) -> dict:
    contenders, compile_s = {}, {}
    for name in names:
        package, compile_ = packages[name]
        c = Contender(package, size, batch, rows, compile_)
        start = time.perf_counter()
        for _ in range(args.warmup):
            c.step()
        compile_s[name] = time.perf_counter() - start
        contenders[name] = c
    rates: dict[str, list[float]] = {n: [] for n in names}
    clock = time.process_time if args.threads == 1 else time.perf_counter
    for _ in range(args.rounds):
        for name, c in contenders.items():
            rates[name].append(c.timed(args.steps, clock))
    tokens = float(np.mean(contenders[names[0]].tokens))
    params = contenders[names[0]].params
    gflop = 6 * params * tokens / 1e9
    limits = {"fp32": matmul_limit(size, int(tokens), torch.float32, 20),
              "bf16": matmul_limit(size, int(tokens), torch.bfloat16, 2)}
    median = {n: statistics.median(v) for n, v in rates.items()}
    return {"size": f"{size[0]}x{size[1]}", "batch": batch, "tokens": tokens, "params": params,
            "gflop_per_step": gflop, "limit_gflops": limits, "rates": rates,
            "median": median, "warmup_s": compile_s,
            "compiled": {n: contenders[n].compiles for n in names}}


def report(r: dict, base: str | None) -> None:
    print(f"\nhidden {r['size']}, batch {r['batch']}: {r['params']:,} parameters, "
          f"{r['tokens']:.0f} tokens/step, {r['gflop_per_step']:.2f} GFLOP/step; matmul limit "
          f"fp32 {r['limit_gflops']['fp32']:.0f} GFLOP/s, bf16 {r['limit_gflops']['bf16']:.0f}")
    print(f"  {'contender':10s} {'steps/s':>8s} {'GFLOP/s':>8s} {'of fp32':>8s} "
          f"{'vs base':>8s} {'warm-up s':>9s}")
    for name, rate in r["median"].items():
        ratio = rate / r["median"][base] if base in r["median"] else float("nan")
        gflops = rate * r["gflop_per_step"]
        compiled = " (compiled)" if r["compiled"][name] else ""
        print(f"  {name:10s} {rate:8.2f} {gflops:8.1f} "
              f"{gflops / r['limit_gflops']['fp32']:8.0%} {ratio:7.2f}x "
              f"{r['warmup_s'][name]:9.1f}{compiled}")


def curves(steps: int, rows, baseline: str) -> dict:
    """Loss curves from one init over the same batches: the landed step (eager fp32, the
    `baseline` revision), today's eager step and today's compiled step; a compiled resume at
    N/2."""
    from worldrep import train

    def run(package: str, compile_: bool, start: int, end: int, state=None):
        c = Contender(package, (64, 3), 64, rows, compile_)
        if state is not None:
            c.step_fn.opt.load_state_dict(state)
        c.index, losses = start, []
        for _ in range(start, end):
            c.step()
            losses.append(float(c.step_fn.flush()[0, 0]))
        return losses, c.step_fn.opt.state_dict()

    landed, _ = run(snapshot(baseline), False, 0, steps)
    eager, _ = run("worldrep", False, 0, steps)
    compiled, final = run("worldrep", True, 0, steps)
    _, half = run("worldrep", True, 0, steps // 2)
    _, resumed = run("worldrep", True, steps // 2, steps, half)
    identical = all(torch.equal(final[k], resumed[k]) for k in train.AdamW.STATE)
    result = {"steps": steps, "landed": landed, "eager": eager, "compiled": compiled,
              "resume_identical": identical}
    print(f"{steps} steps from one init: loss landed eager {landed[0]:.4f} -> {landed[-1]:.4f}, "
          f"eager {eager[0]:.4f} -> {eager[-1]:.4f}, compiled {compiled[0]:.4f} -> "
          f"{compiled[-1]:.4f}")
    for name, curve in (("eager", eager), ("compiled", compiled)):
        diff = np.abs(np.array(landed) - np.array(curve))
        result[f"max_diff_{name}"] = float(diff.max())
        print(f"  {name} against the landed eager step: largest per-step difference "
              f"{diff.max():.2e} (step {int(diff.argmax()) + 1}), mean {diff.mean():.2e}, "
              f"first step {diff[0]:.1e}")
    print(f"  compiled resume at {steps // 2}: {'bit-identical' if identical else 'DIFFERS'}")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="64x3:64,64x3:128,64x2:64",
                        help="comma-separated HIDDENxLAYERS:BATCH")
    parser.add_argument("--only", default="baseline,eager,compiled,default")
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the baseline")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=8, help="untimed steps (compile here)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--curves", type=int, default=None,
                        help="check compiled against eager over this many steps, no timing")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.curves:
        result = curves(args.curves, distance_rows(20_000, 0), args.baseline)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        return 0 if result["resume_identical"] else 1
    names = args.only.split(",")
    packages = {"eager": ("worldrep", False), "compiled": ("worldrep", True),
                "default": ("worldrep", "auto")}
    if "baseline" in names:
        try:
            packages["baseline"] = (snapshot(args.baseline), "auto")
        except (subprocess.CalledProcessError, FileNotFoundError) as err:
            print(f"baseline skipped: no git revision {args.baseline} here ({err})")
            names.remove("baseline")
    rows = distance_rows(20_000, 0)
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "CPU") if Path("/proc/cpuinfo").exists() \
        else "CPU"
    from worldrep.train.runtime import _cpu_has_bf16

    print(f"{cpu}; {args.threads} thread(s); native bf16: {_cpu_has_bf16()}; "
          f"torch {torch.__version__}; {args.rounds} rounds x {args.steps} steps")
    results = []
    for item in args.sizes.split(","):
        dims, batch = item.split(":")
        size = tuple(int(v) for v in dims.split("x"))
        results.append(measure(size, int(batch), names, args, packages, rows))
        report(results[-1], "baseline")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu, "threads": args.threads,
                                               "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
