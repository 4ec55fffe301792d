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
    if executor == "slurm":
        lines.append(format_jobs(study))
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
