"""benchmarks/gpu_check.py at tiny size on CPU: every section runs and reports what it measured."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyramidal_wan.eval.memory import estimate, parameter_count

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow  # 56 s on the shared 2-core machine at best (four sections, 100 CFG forwards at 0-0-50)
def test_gpu_check_runs_at_tiny_size(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--repeats", "2", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert out.with_suffix(".txt").read_text().strip() == result.stdout.strip()

    stages = report["latency"]["stages"]
    assert [r["tokens"] for r in stages] == [320, 48, 8]  # toy 17x64x64: latents 5x16x16, 3x8x8, 2x4x4
    assert all(r["eager_ms"] > 0 and r["paper_ms"] is None for r in stages)  # the paper's setting is not toy
    # 2-2-1 without CFG: 5 evaluations; 20-20-10 and 0-0-50 with CFG: 50 evaluations each.
    assert [(r["schedule"], r["evaluations"]) for r in report["generate"]] == [
        ("2-2-1", 5),
        ("20-20-10", 50),
        ("0-0-50", 50),
    ]
    assert all(r["transformer_s"] > 0 for r in report["generate"])
    assert [r["decode_s"] is not None and r["decode_s"] > 0 for r in report["generate"]] == [
        True,
        False,
        False,
    ]
    memory = {(r["method"], r["samples"]): r for r in report["memory"]}
    assert set(memory) == {("pyramidal", 1), ("pyramidal", 2), ("dmd-ot", 1), ("dmd-ot", 2)}
    assert all(r["measured_peak_gb"] is None for r in memory.values())  # not measured on CPU
    assert memory[("dmd-ot", 1)]["stages_seen"] and not memory[("pyramidal", 1)]["stages_seen"]
    assert memory[("pyramidal", 2)]["estimate_gb"] > 0

    big = report["big"]
    assert big["parameters"] == parameter_count("wan2.1-14b")
    assert len(big["tflops_per_forward"]) == 3 and big["tflops_per_forward"][0] > big["tflops_per_forward"][1]
    sharded = [r for r in big["memory"] if r["gpus"] == 8]
    assert {r["offload_optimizer"] for r in sharded} == {False, True}


def test_memory_estimate_shards_and_offloads():
    """FSDP2 over 8 GPUs divides the resident states by 8; CPU offload removes AdamW's 8 B per trained
    parameter from them (2 trained networks for DMD-OT); activations do not shard."""
    one = estimate("wan2.1-1.3b", "dmd-ot", 30576, 1)
    eight = estimate("wan2.1-1.3b", "dmd-ot", 30576, 1, gpus=8)
    offload = estimate("wan2.1-1.3b", "dmd-ot", 30576, 1, gpus=8, offload_optimizer=True)
    params = one["parameters"]
    assert abs(eight["resident_gb"] - one["resident_gb"] / 8) < 1e-9
    assert abs(eight["resident_gb"] - offload["resident_gb"] - 2 * 8 * params / 8 / 1e9) < 1e-9
    assert abs(one["resident_gb"] - params * (2 * 16 + 2) / 1e9) < 1e-9  # student, fake: 16 B; teacher: 2 B
    assert estimate("wan2.1-1.3b", "dmd-ot", 30576, 2)["activations_gb"] == 2 * one["activations_gb"]
