"""The benchmark scripts run (on a tiny model; figures come from real runs, not tests)."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_check_smoke_runs_on_cpu():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--model", "tiny", "--allow-cpu", "--steps", "2"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["lora_dtype"] == "torch.float32" and row["finite_features"] is True
    assert row["seconds_per_update"] > 0 and row["words_per_second"] > 0


def test_gpu_check_refuses_to_pretend_without_a_gpu():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--model", "tiny"], capture_output=True, text=True
    )
    assert result.returncode != 0 and "No CUDA GPU found" in result.stderr
