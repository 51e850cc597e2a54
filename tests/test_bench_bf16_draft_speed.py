"""bench/bf16_draft_speed.py runs end to end on a tiny model (its logic, not its figures)."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bf16_draft_speed_script_times_both_paths_at_each_batch_size():
    out = subprocess.run(
        [sys.executable, "bench/bf16_draft_speed.py", "--tiny", "--tokens", "3", "--repeats", "2", "--batches", "1,3"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    # the old path folds all 4 LoRA layers of the 2-layer Llama (q_proj, v_proj); the new one none
    assert "LoRA layers folded: folded 4, unmerged 0" in text, text
    rows = re.findall(r"^  batch (\d+): folded \(old\) ([\d.]+) tok/s \([\d.]+-[\d.]+\), unmerged \(now\) "
                      r"([\d.]+) tok/s \([\d.]+-[\d.]+\), unmerged / folded ([\d.]+)$", text, re.M)
    assert [r[0] for r in rows] == ["1", "3"], text
    for _, old, new, ratio in rows:
        assert float(old) > 0 and float(new) > 0
        assert abs(float(ratio) - float(new) / float(old)) < 0.01 + 0.05 * float(ratio)
