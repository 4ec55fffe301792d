"""How a run runs here: device, precision, compilation, CUDA graphs, and how runs stack."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import torch

from ..devices import resolve_device
from ..errors import WorldrepError
from .spec import TrainSpec

# On CPU a compiled step of the findings-size model (64 x 3, batch 64) runs ~1.4x as many
# steps a second as eager and saves ~20 ms a step, after a compile of ~45 s on a cold inductor
# cache (~15 s warm) per run: it pays from about 2,000 steps (benchmarks/tiny_step.py).
CPU_COMPILE_STEPS = 2000


@dataclass
class Runtime:
    device: torch.device
    autocast: torch.dtype | None
    compile: bool
    graphs: bool
    pad_multiple: int

    @staticmethod
    def of(spec: TrainSpec, steps: int | None = None) -> Runtime:
        """How `spec` runs here; `steps` (the run's length) decides `compile: auto` on CPU."""
        device = resolve_device(spec.device)
        cuda = device.type == "cuda"
        auto = "bf16" if cuda or _cpu_has_bf16() else "fp32"
        precision = spec.precision if spec.precision != "auto" else auto
        graphs = cuda if spec.cuda_graphs == "auto" else bool(spec.cuda_graphs)
        if graphs and not cuda:
            raise WorldrepError("cuda_graphs needs a CUDA device; allowed here: false or auto")
        pays = cuda or ((steps or 0) >= CPU_COMPILE_STEPS and _cpu_compiler() is not None)
        compile_ = pays if spec.compile == "auto" else bool(spec.compile)
        multiple = spec.pad_multiple or (8 if cuda else 1)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        return Runtime(device, dtype, compile_, graphs, multiple)

    @property
    def scaled(self) -> bool:
        """fp16 needs its loss scaled (its gradients underflow otherwise)."""
        return self.autocast == torch.float16

    def autocast_ctx(self):
        if self.autocast is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast)


def _cpu_compiler() -> str | None:
    """The C++ compiler inductor builds CPU kernels with (none: compile stays off on CPU)."""
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")


def _cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 / AMX): there bf16 autocast
    trains about twice as fast as fp32; elsewhere bf16 is emulated and slower."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def models_per_stack(k: int, device: torch.device) -> int:
    """How many of a pack's K runs share one stacked step: all of them on CUDA, where one
    tiny model leaves the device idle and the pack is one compiled CUDA graph. On CPU one:
    there a stacked step was measured slower per model than single runs (by 0-10% for tiny
    models, ~20% for the reference model at batch 128: each op's tensors outgrow the caches,
    and above 32 MB glibc maps fresh pages for every allocation), so a CPU pack steps its runs
    in turn, exactly as fast as running them one after another, in one process."""
    return k if device.type != "cpu" else 1
