"""benchmarks/gpu_check.py at tiny sizes on the CPU (--dry-run), so that the GPU check cannot
rot between the times a GPU is lent: every part runs, the graph-vs-eager checks pass (with a
stand-in for the capture), the waiting run of the pack stays frozen, the JSON is complete."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_part(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"),
                           "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] and not report["skipped"]
    assert set(report["parts"]) == {"graph_vs_eager_k1", "graph_vs_eager_k2", "packed_k1",
                                    "packed_k2", "packed_k3", "hf_loop", "eval_cache_5",
                                    "eval_cache_20", "eval_hf_20"}
    for k in (1, 2):
        check = report["parts"][f"graph_vs_eager_k{k}"]["result"]
        assert check["ok"] and check["updates_equal"]
        assert check["bf16_vs_fp32"]["loss_mean"] > 0  # the tolerance is measured, not zero
    assert report["parts"]["graph_vs_eager_k2"]["result"]["waiting_run_frozen"] is True
    assert all(report["parts"][n]["result"] > 0 for n in report["parts"]
               if not n.startswith("graph"))
    assert report["eval_outputs_identical"] == 1.0
    assert "single run, steps/s" in proc.stdout and "packed K=3" in proc.stdout
