"""The embedded default: NoAdapt, Tent and ZeroSiam with SmolLM2-135M-Instruct on a CPU.

    bash scripts/setup.sh && .venv/bin/python recipes/smollm2_135m_math.py

Runs 60 problems of the wild stream `long` (docs/wild_streams.md) with the `answer_line`
prompt: NoAdapt, and Tent, ZeroSiam and ZeroSiam+clip at lr 3e-3 pooled (the rate at which the
study found its clearest difference), and prints the accuracy table with intervals and paired
changes from NoAdapt, the collapse verdicts and the paths of the plots. Defaults in
recipes/configs/smollm2_135m_math.yaml; override any field, e.g. `--limit 60 --datasets mixed`.
A rerun with the same --out resumes; --overwrite starts over.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipes._common import cli, launch_options, log, run_distributed, split  # noqa: E402

CONFIG = Path(__file__).parent / "configs" / "smollm2_135m_math.yaml"


def main(cfg: dict) -> Path:
    t0 = time.time()
    run_cfg, out, overwrite = split(cfg)
    log(f"set-up checked: {run_cfg.model}, methods {', '.join(run_cfg.methods)}, datasets "
        f"{', '.join(run_cfg.datasets)}, {run_cfg.limit} problems each, out {out}")
    torch_threads = os.cpu_count() or 1
    import torch

    torch.set_num_threads(torch_threads)
    launch = launch_options(cfg)
    path = run_distributed(run_cfg, out, overwrite, progress=launch.progress, report=launch.report,
                           report_to=launch.report_to,
                           draft_lookup=launch.draft_lookup)
    if not launch.report:
        return path
    report = (path / "report.md").read_text()
    accuracy = report.split("## Accuracy", 1)[1].split("## Settings", 1)[0].split("Every number above", 1)[0]
    collapse = report.split("## Collapse diagnostics", 1)[1].split("## Plots", 1)[0]
    print("\n" + accuracy.strip() + "\n\nCollapse diagnostics:\n\n" + collapse.strip() + "\n")
    for png in sorted((path / "plots").glob("*.png")):
        print(f"plot: {png}")
    print(f"report: {path / 'report.md'}")
    log(f"done in {(time.time() - t0) / 60:.1f} min")
    return path


if __name__ == "__main__":
    cli(main, CONFIG)
