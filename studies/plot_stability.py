"""Plots of a stability sweep: measures along the stream, and maps of verdicts over the grid.

    .venv/bin/python studies/plot_stability.py runs/stability --out docs/stability

Reads every `summary_*.json` that a sweep study (`python -m eval study studies/stability_sweep.yaml`)
wrote into its root and the rows of its points. Writes, per method (`zerosiam`, `tent`, ablations ...):
`stream_<method>.png`, the running accuracy and each collapse measure along the stream for the
best and the worst setting (`rank_key`: stability first, accuracy second) with `noadapt` for
reference; and `verdicts_zerosiam.png` (lr x predictor lr scale, one panel per optimizer) and
`verdicts_tent.png` (lr, one row per optimizer), each cell coloured by verdict and labelled
with accuracy. Only unguarded arith points at arith seed 0 enter the maps and the rankings.
Prints a table of the settings run at several arith seeds (mean and per-seed values).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from eval.report import stream_series  # noqa: E402
from eval.rows import read_rows, stream_path  # noqa: E402

VERDICT_COLOURS = {
    "stable": "#4caf50",
    "sharpening": "#ffb300",
    "degenerate": "#8e24aa",
    "collapsed-constant": "#e53935",
}
PANELS = [
    ("running_acc", "accuracy (rolling 20)"),
    ("entropy", "entropy of the adapted tokens"),
    ("logit_norm_centered", "centered logit norm"),
    ("top_share", "top answer share (rolling 20)"),
    ("degenerate", "looping responses (rolling 20)"),
    ("predictor_dev", "predictor distance from I"),
]


def load_records(sweep_dir: Path) -> list[dict]:
    recs: dict[tuple[str, str], dict] = {}
    for f in sorted(sweep_dir.glob("summary_*.json")):
        for r in json.loads(f.read_text()):
            recs[(r["point"], r["dataset"])] = r
    return list(recs.values())


def main_grid(r: dict) -> bool:
    """An unguarded point on the main arith stream (seed 0)."""
    a = r.get("axes", {})
    return r["dataset"] == "arith" and not a.get("guard", False) and a.get("seed", 0) == 0


VERDICT_RANK = {"stable": 3, "sharpening": 2, "degenerate": 1, "collapsed-constant": 0}


def rank_key(r: dict) -> tuple:
    """Stability first, accuracy second: the verdict, then among stable streams the accuracy and
    among unstable ones the entropy trend (the one that lost less entropy ranks higher)."""
    acc = r.get("accuracy")
    acc = -1.0 if acc is None or acc != acc else acc
    et = r.get("entropy_trend")
    et = 0.0 if et is None or et != et else et
    rank = VERDICT_RANK.get(r["verdict"], -1)
    return (rank, acc if rank == 3 else et, acc)


def rows_of(sweep_dir: Path, r: dict) -> list[dict]:
    return read_rows(stream_path(sweep_dir / r["point"], r["method"], r["dataset"]))


def plot_streams(sweep_dir: Path, recs: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [r for r in recs if main_grid(r)]
    ref = next((r for r in main if r["axes"]["method"] == "noadapt"), None)
    written = []
    for method in sorted({r["axes"]["method"] for r in main} - {"noadapt"}):
        group = [r for r in main if r["axes"]["method"] == method]
        group = sorted([r for r in group if r.get("finished")] or group, key=rank_key, reverse=True)
        picks = [("best", group[0])] + ([("worst", group[-1])] if len(group) > 1 else [])
        if ref is not None:
            picks.append(("reference", ref))
        fig, axes = plt.subplots(2, 3, figsize=(14, 6.5))
        for (label, r), colour in zip(picks, ("tab:green", "tab:red", "tab:gray")):
            s = stream_series(rows_of(sweep_dir, r))
            for ax, (key, title) in zip(axes.flat, PANELS):
                y = s[key]
                if not np.all(np.isnan(y)):
                    ax.plot(
                        np.arange(1, len(y) + 1),
                        y,
                        color=colour,
                        lw=1.2,
                        label=f"{label}: {r['point']} ({r['verdict']}, acc {r['accuracy']:.0%})",
                    )
                ax.set_title(title, fontsize=9)
                ax.set_xlabel("problem", fontsize=8)
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(f"{method}: best and worst setting along the arith stream (guard off)", fontsize=10)
        fig.tight_layout()
        path = out / f"stream_{method.replace(':', '_').replace('=', '')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _cell(ax, x, y, r):
    ax.add_patch(plt_rect(x, y, VERDICT_COLOURS.get(r["verdict"], "#bbbbbb")))
    text = f"{r['verdict']}\nacc {r['accuracy']:.0%}"
    if r["verdict"] == "collapsed-constant" and r.get("answers_last_half", 10) < 10:
        text = f"{r['verdict']}\n(on {r['answers_last_half']} answers)\nacc {r['accuracy']:.0%}"
    dev = r.get("predictor_dev_final")
    if dev is not None and dev == dev:
        text += f"\ndev {dev:.2g}"
    if not r.get("finished", True):
        text += f"\n(running, {r['problems']} done)"
    ax.text(x, y, text, ha="center", va="center", fontsize=7)


def plt_rect(x, y, colour):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, color=colour, alpha=0.75)


def plot_verdict_maps(recs: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    main = [r for r in recs if main_grid(r)]
    zs = [r for r in main if r["axes"]["method"] == "zerosiam" and "predictor_lr_scale" in r["axes"]]
    opts = sorted({r["axes"].get("optimizer", "adamw") for r in zs})
    if zs:
        fig, axes = plt.subplots(1, len(opts), figsize=(4.6 * len(opts), 4.2), squeeze=False)
        for ax, opt in zip(axes[0], opts):
            pts = [r for r in zs if r["axes"].get("optimizer", "adamw") == opt]
            lrs = sorted({r["axes"]["lr"] for r in pts})
            scales = sorted({r["axes"]["predictor_lr_scale"] for r in pts})
            for r in pts:
                _cell(ax, lrs.index(r["axes"]["lr"]), scales.index(r["axes"]["predictor_lr_scale"]), r)
            ax.set_xlim(-0.5, len(lrs) - 0.5)
            ax.set_ylim(-0.5, len(scales) - 0.5)
            ax.set_xticks(range(len(lrs)), [f"{x:g}" for x in lrs])
            ax.set_yticks(range(len(scales)), [f"{x:g}" for x in scales])
            ax.set_xlabel("LoRA lr")
            ax.set_ylabel("predictor lr / LoRA lr")
            ax.set_title(f"zerosiam, {opt}", fontsize=10)
        fig.tight_layout()
        written.append(out / "verdicts_zerosiam.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    tent = [r for r in main if r["axes"]["method"] == "tent"]
    if tent:
        opts = sorted({r["axes"].get("optimizer", "adamw") for r in tent})
        fig, axes = plt.subplots(len(opts), 1, figsize=(7, 1.8 * len(opts) + 0.6), squeeze=False)
        for ax, opt in zip(axes[:, 0], opts):
            pts = [r for r in tent if r["axes"].get("optimizer", "adamw") == opt]
            lrs = sorted({r["axes"]["lr"] for r in pts})
            for r in pts:
                _cell(ax, lrs.index(r["axes"]["lr"]), 0, r)
            ax.set_xlim(-0.5, len(lrs) - 0.5)
            ax.set_ylim(-0.5, 0.5)
            ax.set_xticks(range(len(lrs)), [f"{x:g}" for x in lrs])
            ax.set_yticks([])
            ax.set_title(f"tent, {opt}: LoRA lr", fontsize=10)
        fig.tight_layout()
        written.append(out / "verdicts_tent.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def seed_table(recs: list[dict]) -> str:
    """Markdown: mean and spread over arith seeds of every unguarded setting run at several seeds."""
    groups: dict[str, list[dict]] = {}
    for r in recs:
        a = r.get("axes", {})
        if r["dataset"] != "arith" or a.get("guard", False) or not r.get("finished"):
            continue
        key = json.dumps({k: v for k, v in a.items() if k != "seed"}, sort_keys=True)
        groups.setdefault(key, []).append(r)
    lines = [
        "| setting | seeds | accuracy (mean, per seed) | answered (mean) | entropy trend (per seed) | verdicts |",
        "|---|---|---|---|---|---|",
    ]
    for rs in groups.values():
        if len(rs) < 2:
            continue
        rs.sort(key=lambda r: r["axes"].get("seed", 0))
        acc = [r["accuracy"] for r in rs]
        lines.append(
            f"| {rs[0]['point']} | {len(rs)} | {np.mean(acc):.1%} ({', '.join(f'{x:.0%}' for x in acc)}) | "
            f"{np.mean([r.get('answered', np.nan) for r in rs]):.0%} | "
            f"{', '.join(format(r['entropy_trend'], '.2f') for r in rs)} | "
            f"{', '.join(r['verdict'] for r in rs)} |"
        )
    return "\n".join(lines) + "\n"


def plot_compare(sweep_dir: Path, points: list[str], path: Path, window: int = 20) -> Path:
    """The harness report's diagnostics figure with one line per sweep point (all its streams)."""
    from eval.report import load_run, plot_diagnostics

    streams, datasets = {}, []
    for point in points:
        run = load_run(sweep_dir / point)
        if not run:
            raise SystemExit(f"{sweep_dir / point} holds no rows")
        for (_method, dataset), rows in run.items():
            streams[(point, dataset)] = rows
            datasets.append(dataset)
    dataset = datasets[0]
    plot_diagnostics(streams, dataset, path, window,
                     title=f"{dataset}: " + ", ".join(points) + f" (rolling {window})")
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_dir", help="the root of a sweep study (studies/stability_*.yaml)")
    ap.add_argument("--out", default="docs/stability", help="folder for the PNGs")
    ap.add_argument("--compare", nargs="+", metavar="POINT", help="only plot these points' streams together "
                    "(every collapse diagnostic, rolling windows) into compare_<--name>.png")
    ap.add_argument("--name", default="points", help="file name part for --compare")
    ap.add_argument("--window", type=int, default=20, help="rolling window for --compare")
    args = ap.parse_args(argv)
    sweep_dir, out = Path(args.sweep_dir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.compare:
        print(f"wrote {plot_compare(sweep_dir, args.compare, out / f'compare_{args.name}.png', args.window)}")
        return
    recs = load_records(sweep_dir)
    if not recs:
        raise SystemExit(f"no summary_*.json in {sweep_dir}; run python -m eval study studies/stability_sweep.yaml (--assemble) first")
    for p in plot_streams(sweep_dir, recs, out) + plot_verdict_maps(recs, out):
        print(f"wrote {p}")
    print(seed_table(recs))


if __name__ == "__main__":
    main()
