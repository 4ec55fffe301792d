"""The GPU check: one prepared run (at most ~8 minutes on one GPU) that writes one JSON file.

    python3 benchmarks/gpu_check.py --out gpu_check.json      # on the GPU machine
    python3 benchmarks/gpu_check.py --dry-run --out /tmp/x.json   # tiny sizes on the CPU

It checks and measures, in one process, with the reference model (hidden 128, 6 layers) at
batch 128 on synthetic distance rows (the real format and lengths, made with numpy):

1. correctness: the compiled CUDA-graph step against the eager step, both under bf16 autocast,
   over 200 steps on the same batches, for one run and for a pack of 7 (in which one run
   waits for 20 steps: the active mask must hold in the replayed graph too). Per-step losses
   and final weights must agree within bf16 tolerance, step counts exactly;
2. single-run steps/s: worldrep's step (compiled, one CUDA graph) against a plain HF training
   loop (Qwen2ForCausalLM, fused torch AdamW, bf16 autocast) in the same process;
3. packed model-steps/s for K = 1, 7 and 42 (K = 1 is the single run of 2);
4. evaluation rows/s: greedy decoding and scoring of distance rows with the KV-cache engine,
   with an answer budget of 5 tokens (a trained model) and 20 (the worst case), and HF
   `generate` on the same rows as the baseline.

Targets on one H100/H200: >= 800 steps/s for one run, >= 2,000 model-steps/s for 7 or more
packed runs. It prints a table and exits 1 if a correctness check fails.

The GPU machine's Python has torch, numpy, pandas and transformers but not pydantic, which
worldrep's specs need: run `benchmarks/gpu_wheels.sh` where pip can download (it puts the
wheels in .whl/, which git ignores), carry .whl/ to the machine, and this script installs them
into /tmp/site on its first line of work (`--no-index`: no network needed there).
`--dry-run` runs every part at tiny sizes on the CPU (the test suite does, so the script
cannot rot), with a stand-in for the graph capture that replays by calling the step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
SITE = "/tmp/site"
TARGETS = {"single": 800.0, "packed": 2000.0}


class Sizes(NamedTuple):
    model: str
    batch: int
    check_steps: int
    wait: tuple[int, int]  # steps in which the last run of the checked pack is inactive
    warmup: int
    timed: int
    packs: tuple[int, ...]
    rows: int
    eval_rows: int
    hf_eval_rows: int


FULL = Sizes("reference", 128, 200, (100, 120), 30, 500, (1, 7, 42), 100_000, 65_536, 16_384)
DRY = Sizes("tiny", 8, 8, (3, 5), 2, 3, (1, 2, 3), 200, 24, 8)


def bootstrap() -> None:
    """worldrep from this checkout; pydantic from the carried wheels where it is missing."""
    sys.path.insert(0, str(REPO / "src"))
    try:
        import pydantic  # noqa: F401
        return
    except ImportError:
        pass
    wheels = sorted(str(p) for p in (REPO / ".whl").glob("*.whl"))
    if not wheels:
        raise SystemExit("pydantic is missing and no wheels were carried: run "
                         "benchmarks/gpu_wheels.sh where pip can download, and carry .whl/")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--no-compile", "--target", SITE, *wheels], check=True)
    sys.path.insert(0, SITE)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def runtime(device, fast: bool, bf16: bool = True):
    """`worldrep train`'s runtime on CUDA (fast: compiled, one CUDA graph per batch shape;
    bf16 autocast), or the same step eager, or eager in fp32."""
    import torch

    from worldrep.train import Runtime

    cuda = device.type == "cuda"
    return Runtime(device, torch.bfloat16 if bf16 else None, compile=fast and cuda,
                   graphs=fast, pad_multiple=8 if cuda else 1)


def stack(k: int, sizes: Sizes, rt, rows):
    """K runs as `train_packed` stacks them: own seeds (so own data orders) and learning
    rates, every other run with the answer-only loss."""
    from worldrep.model import ModelSpec, init_model
    from worldrep.train import AdamW, Batcher, TrainStep

    seeds = list(range(42, 42 + k))
    model = init_model(ModelSpec(preset=sizes.model), seeds, device=rt.device)
    opt = AdamW(model, [3e-4 * (1 + 0.1 * i) for i in range(k)], 10_000, 20, 0.01)
    step = TrainStep(model, opt, rt, [i % 2 == 1 for i in range(k)])
    return opt, step, Batcher([rows] * k, sizes.batch, seeds, rt.pad_multiple)


def trajectory(k: int, sizes: Sizes, rt, rows) -> tuple[dict, tuple]:
    """Per-step losses [steps, K], final weights and update counts of K runs over the check
    steps (in a pack the last run waits for `sizes.wait`), and the stack itself."""
    import numpy as np
    import torch

    opt, step, batches = stack(k, sizes, rt, rows)
    losses, frozen = [], None
    for s in range(sizes.check_steps):
        waits = k > 1 and sizes.wait[0] <= s < sizes.wait[1]
        opt.set_active([not (waits and i == k - 1) for i in range(k)])
        if k > 1 and s == sizes.wait[0]:
            frozen = opt.flat[k - 1].clone()
        step(*batches.get(s)[:2])
        losses.append(step.flush()[0])  # one step's sums: its losses (0 while waiting)
        if k > 1 and s == sizes.wait[1] - 1:
            frozen = bool(torch.equal(frozen, opt.flat[k - 1]))
    return ({"losses": np.array(losses), "weights": opt.flat.float().cpu(),
             "updates": opt.updates.cpu(), "frozen": frozen}, (opt, step, batches))


def deviation(a: dict, b: dict) -> dict:
    counted = b["losses"] > 0
    loss = abs(a["losses"] - b["losses"])[counted] / b["losses"][counted]
    weights = (a["weights"] - b["weights"]).norm(dim=1) / b["weights"].norm(dim=1)
    return {"loss_max": float(loss.max()), "loss_mean": float(loss.mean()),
            "weights": float(weights.max())}


def agreement(k: int, sizes: Sizes, device, rows) -> tuple[dict, tuple]:
    """The graph step against the eager one (both bf16) on the same batches. bf16 tolerance
    is measured, not guessed: the graph may deviate from eager bf16 by at most twice what
    eager bf16 deviates from eager fp32 (+ 1e-3). Update counts must match exactly, and the
    waiting run's weights must not move at all."""
    import torch

    fp32, _ = trajectory(k, sizes, runtime(device, fast=False, bf16=False), rows)
    eager, _ = trajectory(k, sizes, runtime(device, fast=False), rows)
    graph, built = trajectory(k, sizes, runtime(device, fast=True), rows)
    bf16, dev = deviation(eager, fp32), deviation(graph, eager)
    ok = (all(dev[m] <= 2 * bf16[m] + 1e-3 for m in dev)
          and torch.equal(graph["updates"], eager["updates"]) and graph["frozen"] is not False)
    return ({"runs": k, "steps": sizes.check_steps, "graph_vs_eager": dev,
             "bf16_vs_fp32": bf16, "updates_equal": bool(torch.equal(graph["updates"],
                                                                      eager["updates"])),
             "waiting_run_frozen": graph["frozen"], "ok": bool(ok)}, built)


def rate(k: int, sizes: Sizes, device, rows, built: tuple | None = None,
         first: int = 0) -> float:
    """Model-steps/s of K runs in one stacked step, driven as the training loop drives it
    (a stack already built by `agreement` goes on from step `first`)."""
    import numpy as np

    opt, step, batches = built or stack(k, sizes, runtime(device, fast=True), rows)
    for s in range(first, first + sizes.warmup):  # compiles and captures every batch shape
        step(*batches.get(s)[:2])
    sync(device)
    start = time.perf_counter()
    for s in range(first + sizes.warmup, first + sizes.warmup + sizes.timed):
        opt.set_active([True] * k)
        step(*batches.get(s)[:2])
    sync(device)
    elapsed = time.perf_counter() - start
    assert np.isfinite(step.flush()).all()
    return k * sizes.timed / elapsed


def eval_rate(sizes: Sizes, device, texts, engine: str, budget: int, n: int) -> tuple:
    """Rows/s of evaluate_frame (greedy decoding + scoring) on n distance rows."""
    import pandas as pd

    from worldrep.evaluate import evaluate_frame
    from worldrep.model import ModelSpec, init_model, to_hf
    from worldrep.tasks import get_task

    model = init_model(ModelSpec(preset=sizes.model), 0, device=device)
    model = to_hf(model) if engine == "hf" else model
    frame = pd.DataFrame({"text": texts[:n], "task": "distance"})
    task = get_task("distance")
    task.max_answer_tokens = budget  # the instance's budget shadows the class's
    try:
        evaluate_frame(model, frame.iloc[:64], None, device=device, engine=engine)  # warm-up
        sync(device)
        start = time.perf_counter()
        results = evaluate_frame(model, frame, None, device=device, engine=engine)
        sync(device)
        return n / (time.perf_counter() - start), results["output"].tolist()
    finally:
        del task.max_answer_tokens


def fake_record(self, step_fn):
    """--dry-run's stand-in for TrainStep._record (no CUDA graph on a CPU): the warm-ups run for
    real, as on the GPU, and 'replaying' calls the step, so _capture's buffers and undoing
    of the warm-ups are exercised."""
    for _ in range(3):
        step_fn()
    return step_fn


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    ap.add_argument("--budget-s", type=float, default=420, help="skip parts started later")
    args = ap.parse_args(argv)
    bootstrap()
    import torch
    import transformers

    from train_throughput import run_hf_bare, synthetic_distance_rows
    from worldrep.model import ModelSpec
    from worldrep.train import Rows, TrainStep

    sizes, device = (DRY, torch.device("cpu")) if args.dry_run else (FULL, torch.device("cuda"))
    if args.dry_run:
        TrainStep._record = fake_record
        torch.set_num_threads(1)  # tiny models: fastest on one thread, also on a busy CPU
    began = time.perf_counter()
    texts, prompt_len = synthetic_distance_rows(sizes.rows, 42)
    rows = Rows.from_texts(texts, prompt_len, device)
    report: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "sizes": sizes._asdict(), "targets": TARGETS, "dry_run": args.dry_run,
                    "parts": {}, "skipped": []}

    def part(name: str, fn) -> None:
        if time.perf_counter() - began > args.budget_s:
            report["skipped"].append(name)
            return
        start = time.perf_counter()
        report["parts"][name] = {"result": fn(), "seconds": round(time.perf_counter() - start, 1)}
        print(f"  {name}: {report['parts'][name]}", flush=True)

    built: dict[int, tuple] = {}

    def check(k: int) -> dict:
        result, built[k] = agreement(k, sizes, device, rows)
        return result

    for k in sizes.packs[:2]:
        part(f"graph_vs_eager_k{k}", lambda k=k: check(k))
    for k in sizes.packs:  # the checked stacks go on (compiled and captured already)
        part(f"packed_k{k}", lambda k=k: rate(k, sizes, device, rows, built.get(k),
                                              sizes.check_steps if k in built else 0))
    part("hf_loop", lambda: run_hf_bare(texts, prompt_len, device, sizes.warmup, sizes.timed,
                                        ModelSpec(preset=sizes.model), sizes.batch))
    outputs = {}
    for engine, budget, n in (("cache", 5, sizes.eval_rows), ("cache", 20, sizes.eval_rows),
                              ("hf", 20, sizes.hf_eval_rows)):
        def measure(engine=engine, budget=budget, n=n):
            speed, outputs[engine, budget] = eval_rate(sizes, device, texts, engine, budget, n)
            return speed
        part(f"eval_{engine}_{budget}", measure)
    if ("hf", 20) in outputs and ("cache", 20) in outputs:
        same = [a == b for a, b in zip(outputs["hf", 20], outputs["cache", 20], strict=False)]
        report["eval_outputs_identical"] = sum(same) / len(same)
    report["seconds"] = round(time.perf_counter() - began, 1)
    args.out.write_text(json.dumps(report, indent=1))
    print_table(report)
    checks = [v["result"]["ok"] for n, v in report["parts"].items() if n.startswith("graph")]
    return 0 if checks and all(checks) else 1


def print_table(report: dict) -> None:
    parts = report["parts"]

    def got(name, key=None):
        value = parts.get(name, {}).get("result")
        return value if key is None or value is None else value[key]

    rows = []
    for name in (n for n in parts if n.startswith("graph")):
        r = got(name)

        def shown(d):
            return f"{d['loss_max']:.2%} / {d['loss_mean']:.2%}, {d['weights']:.2%}"

        rows.append((f"graph vs eager, {r['runs']} run(s), {r['steps']} steps: loss max / "
                     "mean, weights", shown(r["graph_vs_eager"]),
                     f"bf16 vs fp32 {shown(r['bf16_vs_fp32'])}", r["ok"]))
    single, hf = got("packed_k1"), got("hf_loop")
    if single is not None:
        rows.append(("single run, steps/s", f"{single:,.0f}", f">= {TARGETS['single']:,.0f}",
                     single >= TARGETS["single"]))
    if hf is not None:
        rows.append(("plain HF training loop, steps/s", f"{hf:,.0f}"
                     + (f" (worldrep {single / hf:.1f}x)" if single else ""), "", None))
    for name in (n for n in parts if n.startswith("packed_k") and n != "packed_k1"):
        rate = got(name)
        rows.append((f"packed K={name[8:]}, model-steps/s", f"{rate:,.0f}",
                     f">= {TARGETS['packed']:,.0f}", rate >= TARGETS["packed"]))
    for name in (n for n in parts if n.startswith("eval_")):
        _, engine, budget = name.split("_")
        rows.append((f"evaluation rows/s, {engine}, budget {budget}", f"{got(name):,.0f}", "",
                     None))
    if "eval_outputs_identical" in report:
        rows.append(("evaluation outputs identical to HF generate",
                     f"{report['eval_outputs_identical']:.1%}", "", None))
    print(f"\n{report['device']}, torch {report['torch']}, transformers "
          f"{report['transformers']}, {report['seconds']} s"
          + (" (dry run: tiny sizes on the CPU; targets do not apply)" if report["dry_run"]
             else ""))
    width = max(len(r[0]) for r in rows)
    for what, value, target, ok in rows:
        mark = "" if ok is None or report["dry_run"] and target.startswith(">=") else \
            ("ok" if ok else "MISS")
        print(f"  {what:<{width}}  {value:>28}  {target:>16}  {mark}")
    if report["skipped"]:
        print(f"  skipped (time budget): {', '.join(report['skipped'])}")


if __name__ == "__main__":
    sys.exit(main())
