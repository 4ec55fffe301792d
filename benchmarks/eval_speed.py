"""Evaluation speed: rows of a task generated and scored per second, worldrep against HF.

Data: the test split of a real distance dataset (world built in a temp dir), 10,000 rows by
default. Model: reference size (hidden 128, 6 layers, 4 heads of 32, MLP 512, vocab 98) with
the reference init N(0, 0.1), random weights.

Contenders, both through `worldrep.evaluate.evaluate_frame` (same prompts, decoding to text,
task scoring), so only the decoding core differs:
  worldrep   the KV-cache loop (engine='cache')
  hf         HF `model.generate(do_sample=False)` on left-padded batches (engine='hf')

A random model seldom emits <eos>, so every row runs the task's whole answer budget: for
distance 20 tokens, the worst case. A trained distance model answers in at most 4 digits plus
<eos>, so the run is repeated with the budget set to 5 tokens (`--budgets 20,5`): the cost of
a trained reference model. Rounds alternate the contenders so that background load hits them
alike; the median round is reported. Both contenders' outputs are checked to be identical.

  python benchmarks/eval_speed.py                        # 10k rows, budgets 20 and 5
  python benchmarks/eval_speed.py --rows 2000 --rounds 1 --threads 1
  python benchmarks/eval_speed.py --device cuda --batch-size 8192
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import Qwen2ForCausalLM

from worldrep.evaluate import evaluate_frame, resolve_device
from worldrep.tasks import get_task


def reference_model(seed: int = 0) -> Qwen2ForCausalLM:
    """The reference architecture with the reference initialisation, as a plain HF module."""
    from worldrep.model import ModelSpec, init_model, to_hf

    return to_hf(init_model(ModelSpec(preset="reference"), seed))


def distance_test_rows(n: int, tmp: Path):
    from worldrep.data import DatasetSpec, dataset_world, load_split, make_dataset
    from worldrep.world import WorldConfig, make_world

    world = make_world(tmp / "world", WorldConfig())
    data = make_dataset(world, DatasetSpec(task="distance", n_train=0, n_val=0, n_test=n),
                        tmp / "distance")
    return load_split(data, "test"), dataset_world(data)


def time_once(model, frame, world, batch_size, device, engine):
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    results = evaluate_frame(model, frame, world, batch_size, device, engine=engine)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--budgets", default="20,5", help="answer budgets (tokens) to time")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=None, help="default: evaluate's")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--contenders", default="worldrep,hf")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    engines = {"worldrep": "cache", "hf": "hf"}
    contenders = args.contenders.split(",")

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        frame, world = distance_test_rows(args.rows, Path(tmp))
        print(f"data: {len(frame)} distance test rows ({time.perf_counter() - t:.1f}s to build)")
    model = reference_model().to(device)
    task = get_task("distance")
    print(f"device {device}, torch threads {torch.get_num_threads()}, "
          f"batch {args.batch_size or 'default'}, load avg {_load()}")
    evaluate_frame(model, frame.iloc[:64], world, 64, device)  # warm up kernels

    report = []
    for budget in (int(b) for b in args.budgets.split(",")):
        task.max_answer_tokens = budget  # instance attribute shadows the class budget
        times = {c: [] for c in contenders}
        outputs = {}
        for _ in range(args.rounds):
            for c in contenders:
                wall, cpu, res = time_once(model, frame, world, args.batch_size, device,
                                           engines[c])
                times[c].append((wall, cpu))
                outputs[c] = res["output"].tolist()
        same = len({tuple(o) for o in outputs.values()}) == 1
        print(f"\nanswer budget {budget} tokens ({len(frame)} rows, median of {args.rounds}; "
              f"outputs identical: {same})")
        for c in contenders:
            wall = statistics.median(w for w, _ in times[c])
            cpu = statistics.median(p for _, p in times[c])
            print(f"  {c:<9} {wall:7.2f} s  {len(frame) / wall:8.0f} rows/s   "
                  f"(cpu {cpu:.2f} s)")
            report.append({"budget": budget, "contender": c, "rows": len(frame), "seconds": wall,
                           "cpu_seconds": cpu, "rows_per_s": len(frame) / wall,
                           "identical": same})
        if "worldrep" in contenders and "hf" in contenders:
            ratio = (statistics.median(w for w, _ in times["hf"])
                     / statistics.median(w for w, _ in times["worldrep"]))
            print(f"  speed-up over HF generate: {ratio:.2f}x")
    del task.max_answer_tokens
    print(f"\nload avg at the end {_load()}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


def _load() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


if __name__ == "__main__":
    main()
