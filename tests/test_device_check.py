"""tools/device_check.sh, the GPU check prepared for a lent CUDA machine, dry-run on the CPU (ACCELERATOR=cpu):
every step runs and the summary reads the training run's figures back from its TensorBoard events."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_device_check_runs_every_step_and_reads_the_figures_back(tmp_path):
    env = {
        **os.environ,
        "ACCELERATOR": "cpu",
        "STEPS": "12",
        "BENCH_ITERS": "2",
        "PYTHON": sys.executable,
        "WORK": str(tmp_path / "work"),
        "OMP_NUM_THREADS": "1",
        "TRAIN_ARGS": "callbacks.throughput.window_size=4 data.num_workers=0",
        "KEEP_CHECKPOINT": "1",
    }
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", str(ROOT / "tools" / "device_check.sh"), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = (out / "device_check.md").read_text()
    assert "| training, 12 steps, cpu | 0 |" in summary, summary
    assert "| speed (loftr-kd-bench device=cpu) | 0 |" in summary, summary
    assert "(train/nonfinite_steps): 0.0" in summary
    assert re.search(r"training pairs/s, one device .*: \d+\.\d \(range \d+\.\d-\d+\.\d\)", summary), summary
    assert "| paper | torch | 640×480 |" in summary  # the bench table appended
    assert {p.name for p in out.iterdir()} <= {
        "device_check.md",
        "env.txt",
        "gpu_tests.log",
        "train.log",
        "bench.log",
        "last.ckpt",  # 12 steps: no epoch ended, so no best-epochNNN.ckpt
        "bench.md",
        "bench.json",
    }  # at most 8 files: what a lent machine sends back
    from loftr_kd.models.student import load_student

    student = load_student(out / "last.ckpt")  # the run's student (the paper preset) comes back whole
    assert student.config.coarse_stride == 16
    assert "torch" in (out / "env.txt").read_text()
