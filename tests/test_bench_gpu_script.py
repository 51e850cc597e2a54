"""The GPU benchmark script runs end to end on a small model on CPU (its logic, not its figures)."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_8b_script_dry_run_prints_every_figure():
    out = subprocess.run(
        [sys.executable, "bench/gpu_8b.py", "--device", "cpu", "--dtype", "float32", "--layers", "1", "--hidden",
         "64", "--vocab", "4096", "--prompt-tokens", "16", "--tokens", "128,256", "--step-tokens", "16", "--repeats", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    for variant in ("tent", "zerosiam", "zs_kept"):
        assert re.search(rf"^\s+{variant}\s+step: median \d", text, re.M), text
    assert re.search(r"ZeroSiam / Tent step time: \d+\.\d+ with the target recomputed, \d+\.\d+ with", text)
    rows = re.findall(r"^\| (\d+) \| (.+) \| (.+) \| (.+) \| (\d+) \|$", text, re.M)
    assert [r[0] for r in rows] == ["128", "256"]
    assert [int(r[4]) for r in rows] == [2, 4]  # tokens x 4096 x 4 bytes
