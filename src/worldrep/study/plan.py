"""What a study will do, before it runs: the plan as text, as JSON, and as Slurm jobs."""

from __future__ import annotations

from pathlib import Path

from .load import Study


def format_plan(study: Study, executor: str = "local") -> str:
    """One line per step: kind, name, hash, what it reads; the packs; the Slurm jobs."""
    counts: dict[str, int] = {}
    for s in study.steps.values():
        counts[s.kind] = counts.get(s.kind, 0) + 1
    scale = f", scale 1/{study.scale:g}" if study.scale != 1 else ""
    lines = [f"study {study.name}: {len(study.steps)} steps ("
             + ", ".join(f"{k} {n}" for k, n in counts.items()) + f"){scale}"]
    width = max((len(s.name) for s in study.steps.values()), default=4)
    for s in study.steps.values():
        reads = f"  <- {', '.join(s.deps)}" if s.deps else ""
        lines.append(f"  {s.kind:<8} {s.name:<{width}}  {s.hash}{reads}")
    if study.pack == "auto":
        from .units import format_packs

        lines.append(format_packs(study))
    lines.append(format_sets(study))
    if executor == "slurm":
        lines.append(format_jobs(study))
    return "\n".join(lines)


# Model-steps per second on one H100/H200 for K packed reference-size runs. worldrep's own
# GPU figures are not measured yet (no GPU was lent); these are what a minimal stacked
# implementation measured there (issue 9), and the targets worldrep's GPU check holds.
GPU_RATE = {1: 818.0, 7: 1844.0, 42: 2052.0}
REFERENCE_PARAMS = 1_601_920


def gpu_rate(k: int, params: int) -> float:
    """Model-steps/s for a pack of k runs of `params` parameters (log-interpolated in k;
    slower in proportion for models larger than the reference)."""
    import math

    ks = sorted(GPU_RATE)
    k = min(max(k, ks[0]), ks[-1])
    lo = max(x for x in ks if x <= k)
    hi = min(x for x in ks if x >= k)
    t = 0.0 if hi == lo else (math.log(k) - math.log(lo)) / (math.log(hi) - math.log(lo))
    rate = GPU_RATE[lo] * (GPU_RATE[hi] / GPU_RATE[lo]) ** t
    return rate * min(1.0, REFERENCE_PARAMS / params)


def experiment_sets(study: Study) -> list[dict]:
    """Per declaration of training runs: how many models, their steps, and GPU time."""
    from .kinds import get_kind
    from .units import plan_packs

    pack_of = {}
    if study.pack == "auto":
        for _, names in plan_packs(study):
            for n in names:
                pack_of[n] = len(names)
    sets: dict[str, dict] = {}
    for step in study.steps.values():
        cost = get_kind(step.kind).cost(study.steps, step.name)
        if cost is None:
            continue
        steps, params = cost
        entry = sets.setdefault(step.group, {"set": step.group, "models": 0,
                                             "model_steps": 0, "gpu_s": 0.0})
        entry["models"] += 1
        entry["model_steps"] += steps
        entry["gpu_s"] += steps / gpu_rate(pack_of.get(step.name, 1), params)
    return list(sets.values())


def format_sets(study: Study) -> str:
    sets = experiment_sets(study)
    if not sets:
        return "no training runs"
    width = max(len(s["set"]) for s in sets)
    lines = [f"training runs by experiment set (GPU-hours: one H100/H200 at the packed rates "
             f"{', '.join(f'K={k}: {v:,.0f}' for k, v in GPU_RATE.items())} model-steps/s; "
             "not yet measured by worldrep; evaluation and representations not counted):"]
    for s in sets:
        lines.append(f"  {s['set']:<{width}}  {s['models']:>4} models  "
                     f"{s['model_steps']:>13,} model-steps  {s['gpu_s'] / 3600:>7.2f} GPU-h")
    total = {k: sum(s[k] for s in sets) for k in ("models", "model_steps", "gpu_s")}
    lines.append(f"  {'all':<{width}}  {total['models']:>4} models  "
                 f"{total['model_steps']:>13,} model-steps  {total['gpu_s'] / 3600:>7.2f} GPU-h")
    return "\n".join(lines)


def format_jobs(study: Study) -> str:
    """How many Slurm jobs `worldrep run --executor slurm` submits, by what they run."""
    from .units import slurm_units

    units = slurm_units(study)
    by_kind: dict[str, list[int]] = {}
    for u in units:
        by_kind.setdefault(u.kind, []).append(len(u.steps))
    parts = [f"{len(n)} {kind} ({sum(n)} steps)" for kind, n in by_kind.items()]
    return (f"slurm: {len(units)} jobs for {len(study.steps)} steps: " + ", ".join(parts)
            + "; a run's evaluations and representations go out as one job after it")


def plan_json(study: Study, out: Path | None = None) -> dict:
    """Every step with its kind, name, identity hash, inputs and resolved spec (what scripts
    and checks read instead of worldrep internals)."""
    from .units import plan_packs, slurm_units

    steps = []
    for s in study.steps.values():
        record = s.identity.record()
        steps.append({"name": s.name, "kind": s.kind, "hash": s.hash, "base": record["base"],
                      "dir": f"{s.kind}/{s.dirname}", "origin": s.origin, "group": s.group,
                      "inputs": list(s.deps), "input_hashes": record["inputs"],
                      "spec": s.spec, "identity_spec": record["spec"], "code": record["code"]})
    packs = ([{"steps": names, "key": key.describe()} for key, names in plan_packs(study)]
             if study.pack == "auto" else [])
    jobs = [{"steps": u.steps, "kind": u.kind, "after": u.after} for u in slurm_units(study)]
    return {"study": study.name, "path": str(study.path), "scale": study.scale,
            "out": str(out) if out else str(study.default_out()), "pack": study.pack,
            "steps": steps, "packs": packs, "slurm_jobs": jobs}
