"""Checkpoints on disk: plain Hugging Face Qwen2 directories, and the names of a run's.

A checkpoint directory holds config.json, model.safetensors, the tokenizer and worldrep.json
(the ModelSpec and the step it was saved at): `AutoModelForCausalLM.from_pretrained` loads it
with no worldrep code, `load_checkpoint` as worldrep's own module. A run keeps its checkpoints
as `checkpoints/checkpoint-<step>/` and `checkpoints/final/`; `list_checkpoints` /
`select_checkpoints` are the one way to name them (final, last, all, steps), and
`checkpoint_order` the one way to sort their names.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import artifacts
from .errors import WorldrepError

if TYPE_CHECKING:  # the model (and torch) only where a checkpoint is read or written
    import torch

    from .model import ModelSpec, StackedQwen2

WEIGHTS_FILE = "model.safetensors"
INFO_FILE = "worldrep.json"


def save_checkpoint(model: StackedQwen2, out: str | Path, k: int = 0,
                    info: dict | None = None) -> Path:
    """Write model k as an HF Qwen2 directory (atomically: temp dir, then rename)."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    from . import tokenizer
    from .model import hf_config, to_hf_state_dict

    state = to_hf_state_dict(model, k)
    with artifacts.artifact_dir(out, "checkpoint", marker=INFO_FILE) as tmp:
        hf_config(model.spec).save_pretrained(tmp)
        GenerationConfig(bos_token_id=tokenizer.BOS, eos_token_id=tokenizer.EOS,
                         pad_token_id=tokenizer.PAD, do_sample=False).save_pretrained(tmp)
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        tokenizer.save_hf_tokenizer(tmp)
        payload = {"model": model.spec.model_dump(mode="json"), **(info or {})}
        (tmp / INFO_FILE).write_text(json.dumps(payload, indent=1))
    return Path(out)


def read_checkpoint_spec(path: str | Path) -> ModelSpec:
    from .model import spec_from_hf_config

    path = Path(path)
    if not (path / "config.json").is_file() or not (path / WEIGHTS_FILE).is_file():
        raise WorldrepError(f"no model checkpoint at {path} (needs config.json and "
                            f"{WEIGHTS_FILE})")
    return spec_from_hf_config(json.loads((path / "config.json").read_text()), where=str(path))


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights of an HF checkpoint directory, by HF name."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(Path(path) / WEIGHTS_FILE))
    except (OSError, SafetensorError) as err:
        raise WorldrepError(f"cannot load the checkpoint at {path}: {err}") from None


def load_checkpoint(path: str | Path, device=None) -> StackedQwen2:
    """A K=1 compact model from an HF Qwen2 checkpoint directory."""
    from .model import StackedQwen2, load_hf_state_dict

    model = StackedQwen2(read_checkpoint_spec(path), k=1)
    load_hf_state_dict(model, read_weights(path))
    return model.to(device) if device is not None else model


def checkpoint_hash(path: str | Path) -> str:
    """A fingerprint of a checkpoint's config and weights (not of where it lies)."""
    path = Path(path)
    digest = hashlib.sha256()
    for f in [path / "config.json", *sorted(path.glob("*.safetensors"))]:
        if f.is_file():
            digest.update(f.name.encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


# -- a run's checkpoints -------------------------------------------------------------------------
STEP_RE = re.compile(r"checkpoint-(\d+)")


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step}"


def checkpoint_order(name: str) -> tuple[int, int, str]:
    """Sort key of checkpoint names: checkpoint-<step> by step, then any other (final) by name."""
    m = STEP_RE.fullmatch(name)
    return (0, int(m.group(1)), "") if m else (1, 0, name)


def _checkpoint_dirs(run_dir: str | Path) -> tuple[Path, list[tuple[int, Path]], Path | None]:
    """(where, [(step, checkpoint-<step>)] by step, final or None) of a run directory (or of
    its checkpoints/ directory); unfinished writes (.name.tmp-PID) are not checkpoints."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise WorldrepError(f"no run directory at {run_dir}")
    root = run_dir / "checkpoints" if (run_dir / "checkpoints").is_dir() else run_dir
    found = {p.name: p for p in root.iterdir() if (p / "config.json").is_file()}
    numbered = sorted((int(m.group(1)), p) for n, p in found.items() if (m := STEP_RE.fullmatch(n)))
    if not numbered and "final" not in found:
        raise WorldrepError(f"{root} holds no checkpoint (no checkpoint-<step>/ or final/ with a "
                            "config.json)")
    return root, numbered, found.get("final")


def _repeats(final: Path, step: int, last: Path) -> bool:
    """Is `final` the checkpoint of `step` again: by the step the trainer records in
    worldrep.json, else (another trainer's checkpoints) by identical weight files?"""
    try:
        recorded = json.loads((final / INFO_FILE).read_text()).get("step")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if isinstance(recorded, int):
        return recorded == step
    a, b = final / WEIGHTS_FILE, last / WEIGHTS_FILE
    return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """A run's timeline: checkpoint-<step> by step, then final, unless final is the last
    numbered checkpoint again (the trainer writes both at the last step), so that no step
    appears twice."""
    _, numbered, final = _checkpoint_dirs(run_dir)
    timeline = [p for _, p in numbered]
    if final is not None and not (numbered and _repeats(final, *numbered[-1])):
        timeline.append(final)
    return timeline


def select_checkpoints(run_dir: str | Path, which: str | Sequence[str | int] = "final"
                       ) -> list[Path]:
    """Checkpoints of a run: 'all' (the timeline of `list_checkpoints`), 'last' (the newest
    one: the end of that timeline), or names and steps as a list or comma list ('final',
    'checkpoint-20' or '20')."""
    if isinstance(which, str) and which.strip() in ("all", "last"):
        timeline = list_checkpoints(run_dir)
        return timeline if which.strip() == "all" else timeline[-1:]
    root, numbered, final = _checkpoint_dirs(run_dir)
    named = {p.name: p for _, p in numbered} | ({"final": final} if final else {})
    chosen: list[Path] = []
    for item in (str(i).strip() for i in (which.split(",") if isinstance(which, str) else which)):
        name = checkpoint_name(int(item)) if item.isdigit() else item
        if name not in named:
            raise WorldrepError(f"no checkpoint '{item}' in {root}; available: "
                                f"{', '.join(named)} (or 'all', 'last')")
        if named[name] not in chosen:
            chosen.append(named[name])
    if not chosen:
        raise WorldrepError(f"no checkpoint named; available: {', '.join(named)}")
    return chosen
