"""`python -m eval run ...` and `python -m eval report RUN_DIR`.

    python -m eval run --model smollm2-135m-instruct --methods noadapt,tent,zerosiam \
        --datasets arith,math500 --limit 20 --out runs/demo
    python -m eval run --config recipes/configs/smollm2_135m_math.yaml --limit 5
    python -m eval report runs/demo
    python -m eval compare runs/demo runs/other      # two different runs on the problems they share
    python -m eval study studies/wild_streams.yaml --stages study --assemble

`run` takes the options every recipe takes (`eval.options`; `python -m eval run --help`).
"""

from __future__ import annotations

import argparse
import sys

from .options import parse_options, run_config
from .runner import Runner

RUN_USAGE = "python -m eval run"


def run(argv: list[str]) -> None:
    """`python -m eval run [--config FILE] [--field value ...]`."""
    cfg, launch = run_config(parse_options(argv, prog=RUN_USAGE, description=__doc__))
    if not launch.out:
        raise ValueError("--out is required (the run folder; or out: in the YAML)")
    out = Runner(cfg, launch.out, progress=launch.progress, overwrite=launch.overwrite,
                 report_to=launch.report_to, draft_lookup=launch.draft_lookup).run()
    if launch.report:
        from .report import write_report

        status: list[str] = []
        md = write_report(out, status=status)
        print(md.read_text())
        print(f"[eval] report: {md}")
        print_unfinished(status)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="zs-eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("run", help=f"run methods on datasets into an output folder (resumable); {RUN_USAGE} --help",
                   add_help=False)
    sub.add_parser("study", help="run a study file's stages, then its reports and tables (eval.study); "
                   "python -m eval study --help", add_help=False)
    rep = sub.add_parser("report", help="write report.md and plots for a run folder")
    rep.add_argument("run_dir", nargs="+", help="a run folder, or several seed runs of one configuration to combine "
                     "(runs that differ in their seeds alone; written to --out, default <their common "
                     "parent>/combined-<8 hex of their paths>)")
    rep.add_argument("--out", help="output folder of the report (default: the run folder itself; for several runs, "
                     "<their common parent>/combined-<8 hex>); not another run's folder")
    cmp = sub.add_parser("compare", help="compare two different runs on the problems they share (paired tables); "
                         "eval.compare")
    cmp.add_argument("run_a", help="the run compared against (its methods are the reference)")
    cmp.add_argument("run_b", help="the run compared")
    cmp.add_argument("--out", help="output folder (default: compare-<A>-vs-<B> beside RUN_A); not a run folder")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "run":  # its options are parsed by eval.options, as a recipe's are
            run(argv[1:])
            return 0
        if argv and argv[0] == "study":  # a study file's runs, reports and tables (eval/study.py)
            from .study import main as study

            study(argv[1:])
            return 0
        args = ap.parse_args(argv)
        if args.cmd == "report":
            from .report import write_report

            status: list[str] = []
            md = write_report(args.run_dir[0] if len(args.run_dir) == 1 else args.run_dir, args.out, status=status)
            print(md.read_text())
            print(f"[eval] report: {md}")
            print_unfinished(status)
        if args.cmd == "compare":
            from .compare import write_comparison

            status = []
            md = write_comparison(args.run_a, args.run_b, args.out, status=status)
            print(md.read_text())
            print(f"[eval] comparison: {md}")
            print_unfinished(status)
    except (ValueError, KeyError, TypeError, OSError) as e:  # OSError: files, folders, the run lock
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: each row is on disk as it finishes, so a rerun resumes
        what = "; rows so far are kept: rerun the same command to resume" if argv and argv[0] in ("run", "study") else ""
        print(f"interrupted{what}", file=sys.stderr)
        return 130
    return 0


def print_unfinished(status: list[str]) -> None:
    """The report's word on an unfinished run, last on stdout where it cannot be missed."""
    for line in status:
        print(f"[eval] UNFINISHED: {line}")


def error_line(e: BaseException) -> str:
    """The one line a user error prints."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(str(msg).split()) if msg else type(e).__name__
