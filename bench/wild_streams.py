"""The wild-streams study (docs/wild_streams.md): the learning-rate selection of the `paper`
protocol, then every method on the wild streams (`long`, `shift`, `imbalanced`, `mixed`) over
several seeds, as many independent harness streams run side by side by a pool of processes.

    # everything, on whatever the machine has (a GPU: many processes share it)
    .venv/bin/python bench/wild_streams.py --root runs/wild --workers 14 --deadline 540
    # then, anywhere: per-seed run folders, their reports and the combined report
    .venv/bin/python bench/wild_streams.py --root runs/wild --assemble

Stages, in order (`--stages`):
- `testbed`: NoAdapt alone on `arith` (bench/testbed.py) chooses the prompt style and length of
  the later stages: the cheapest under which it states an answer in 90% of its responses.
- `select`: `bench/select_lr.py`'s grid (each LoRA method x lr, and noadapt) on `arith_dev`; the
  rule (highest accuracy, a tie to the smaller lr) picks each method's lr, written to
  `ROOT/selection.json`. The study's LoRA methods run at the chosen lr (the spec says so:
  `tent:lr=0.001`); the plug-ins take ZeroSiam's.
- `arith30`: `bench/configs/all_methods_arith.yaml` under `paper` (its 30 `arith` problems, 64 new
  tokens, `boxed` prompt), with `tent+guard` and `zerosiam+guard` as separate rows.
- `study`: `--methods` plus every adapting method with `+clip`, plus `tent+guard`, `zerosiam+guard`,
  on each of `--streams` x `--seeds`, each stream cut at `--limit` problems.

Each (method, seed) of the study, and each (method, set) of the other stages, is its own run
folder under `ROOT/jobs/` (one process, streams one after another), so the pool needs no coordination: a killed job keeps its fsynced rows and a rerun resumes it.
`--deadline` stops every job that is still running that many seconds after the start (their
rows so far are kept and reported as shorter streams). `--assemble` copies each seed's rows into
one run folder (`ROOT/<stage>/seed<S>`) and writes `eval report` for it and the combined report
over seeds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO

sys.path.insert(0, str(REPO / "bench"))

GRID = (3e-4, 1e-3, 3e-3)
LORA_METHODS = ("tent", "come", "sar", "zerosiam")
PLUGINS = {"zerosiam+sar": "zerosiam", "zerosiam+eata": "zerosiam"}
STUDY_METHODS = ("noadapt", "tent", "come", "sar", "slot", "eminf", "zerosiam", "zerosiam+sar", "zerosiam+eata")
GUARDED = ("tent", "zerosiam")
ARITH30 = {"methods": STUDY_METHODS, "datasets": ["arith"], "limit": 30, "max_new_tokens": 64, "prompt_style": "boxed"}


def job_dir(root: Path, stage: str, seed: int, dataset: str, spec: str) -> Path:
    from eval.rows import safe_name

    return root / "jobs" / stage / f"seed{seed}" / f"{safe_name(spec)}__{dataset}"


def with_lr(spec: str, lrs: dict[str, float]) -> str:
    """`tent+clip` -> `tent+clip:lr=0.001` from the selection; methods without one unchanged."""
    from zs_llm.config import AdaptConfig

    method = AdaptConfig.from_spec(spec).method
    source = PLUGINS.get(method, method)
    if source not in lrs or ":lr=" in spec:
        return spec
    return f"{spec}:lr={lrs[source]:g}"


def study_specs(methods, lrs: dict[str, float], guard_rows: bool = True, skip=()) -> list[str]:
    """The study's rows: each method (paper), each adapting one again with +clip, and the guard rows;
    less the rows named in `skip` (as `tent+clip`, without the lr: rows run in another root)."""
    from zs_llm.methods import METHODS

    out = list(methods)
    for m in methods:
        if "lora" in METHODS[m].trains:  # the global clip acts on the LoRA methods' step
            out.append(f"{m}+clip")
    out += [f"{m}+guard" for m in GUARDED if m in methods and guard_rows]
    unknown = set(skip) - set(out)
    if unknown:
        raise ValueError(f"--skip names rows the study does not have: {sorted(unknown)}; its rows are {out}")
    return [with_lr(s, lrs) for s in out if s not in skip]


def plan(args, lrs: dict[str, float] | None, stage: str) -> list[dict]:
    """The jobs of a stage: one dict of RunConfig fields (+ out) per (method, set, seed)."""
    common = {"model": args.model, "dtype": args.dtype, "device": args.device, "checkpoint_every": 1000000}
    jobs = []
    if stage == "select":
        specs = ["noadapt"] + [f"{m}:lr={lr:g}" for m in args.select_methods.split(",") for lr in grid(args)]
        for s in specs:
            jobs.append({**common, "methods": [s], "datasets": ["arith_dev"], "limit": args.select_limit, "seed": 0,
                         "prompt_style": args.prompt_style, "max_new_tokens": args.max_new_tokens,
                         "out": str(job_dir(args.root, stage, 0, "arith_dev", s))})
    elif stage == "arith30":
        for s in study_specs(ARITH30["methods"], lrs or {}):
            if "+clip" in s:
                continue
            jobs.append({**common, "methods": [s], "datasets": ARITH30["datasets"], "limit": ARITH30["limit"],
                         "seed": 0, "prompt_style": ARITH30["prompt_style"], "max_new_tokens": ARITH30["max_new_tokens"],
                         "out": str(job_dir(args.root, stage, 0, "arith", s))})
    elif stage == "study":
        specs = study_specs([m for m in args.methods.split(",") if m], lrs or {}, not args.no_guard_rows,
                            [m for m in args.skip.split(",") if m])
        streams = [d for d in args.streams.split(",") if d]
        for seed in [int(s) for s in (args.seeds or "0,1,2").split(",")]:
            for s in specs:  # one process per (method, seed): the model loads once for all its streams
                jobs.append({**common, "methods": [s], "datasets": streams, "limit": args.limit, "seed": seed,
                             "prompt_style": args.prompt_style, "max_new_tokens": args.max_new_tokens,
                             "out": str(job_dir(args.root, stage, seed, "streams", s))})
    else:
        raise ValueError(f"unknown stage {stage!r}; choose from select, arith30, study")
    if getattr(args, "pool", 0):
        jobs = pooled(jobs, args.pool, args.root, stage)
    # the longest jobs first (noadapt is batched and fast), so the pool ends together
    return sorted(jobs, key=lambda j: j["methods"] == ["noadapt"])


def pooled(jobs: list[dict], stream_batch: int, root: Path, stage: str) -> list[dict]:
    """One job per seed holding every method of the stage, its adapting streams pooled
    `stream_batch` at a time in one process (RunConfig.stream_batch): on a CPU, batched drafts and
    updates instead of one process per stream."""
    groups: dict = {}
    for j in jobs:
        key = (j["seed"], tuple(j["datasets"]))
        g = groups.setdefault(key, {**j, "methods": [], "stream_batch": stream_batch,
                                    "out": str(root / "jobs" / stage / f"seed{j['seed']}" / "pool")})
        g["methods"] += j["methods"]
    return list(groups.values())


def grid(args) -> list[float]:
    return [float(x) for x in args.grid.split(",") if x]


def run_job(job: dict) -> None:
    """One stream in this process (what each pool worker runs)."""
    from eval.runner import RunConfig, Runner

    fields = {k: v for k, v in job.items() if k not in ("out", "max_new_tokens")}
    # the study's seeds are its streams' (arith); its methods keep seed 0, as the runs already made did
    # (--seed also seeds the methods now, unless adapt's seed is set)
    cfg = RunConfig(**fields, adapt={"max_new_tokens": job["max_new_tokens"], **({"seed": 0} if job["seed"] else {})})
    Runner(cfg, job["out"], progress=False).run()


def run_pool(jobs: list[dict], workers: int, deadline: float, log) -> dict:
    """Run jobs, `workers` at a time, each in its own process (0: one after another in this
    process); stop what still runs at `deadline` (time.time()). Returns {out: returncode or
    'stopped' or 'not started'}."""
    waiting, running, status = list(jobs), {}, {}
    if workers == 0:
        for job in jobs:
            if time.time() >= deadline:
                status[job["out"]] = "not started"
                continue
            Path(job["out"]).mkdir(parents=True, exist_ok=True)
            run_job(job)
            status[job["out"]] = 0
        return status
    while waiting or running:
        while waiting and len(running) < workers and time.time() < deadline:
            job = waiting.pop(0)
            Path(job["out"]).mkdir(parents=True, exist_ok=True)
            logf = open(Path(job["out"]) / "job.log", "w")
            p = subprocess.Popen([sys.executable, __file__, "--job", json.dumps(job)], stdout=logf,
                                 stderr=subprocess.STDOUT)
            running[job["out"]] = (p, logf)
        for out, (p, logf) in list(running.items()):
            if p.poll() is not None:
                status[out] = p.returncode
                logf.close()
                del running[out]
                if p.returncode:
                    log(f"job failed ({p.returncode}): {out}; see its job.log")
        if time.time() >= deadline:
            for p, _ in running.values():
                p.terminate()
            for out, (p, logf) in running.items():
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                logf.close()
                status[out] = "stopped"
            for job in waiting:
                status[job["out"]] = "not started"
            log(f"deadline: {len(running)} jobs stopped, {len(waiting)} not started")
            break
        time.sleep(0.5)
    return status


def rows_written(out: Path, skip: str = "") -> int:
    """Rows in a run folder, leaving out the streams of method `skip`."""
    files = [f for f in (out / "rows").glob("*.jsonl") if not (skip and f.name.startswith(f"{skip}__"))] \
        if (out / "rows").is_dir() else []
    return sum(len(f.read_bytes().splitlines()) for f in files)


def auto_limit(rate: float | None, seconds_left: float, n_streams: int, cap: int,
               margin: float = 60.0) -> int:
    """Problems per study stream such that `n_streams` adapting streams finish in `seconds_left`
    at `rate` adapting problems per second (over the whole pool); a multiple of 10, between 20
    and `cap`. Without a measured rate: 20.

    >>> auto_limit(10.0, 660, 60, 300)
    100
    """
    if not rate or n_streams == 0:
        return 20
    per_stream = rate * max(0.0, seconds_left - margin) / n_streams
    return int(max(20, min(cap, 10 * (per_stream // 10))))


def testbed(args, log) -> tuple[str, int]:
    """NoAdapt alone on `arith` (bench/testbed.py): the prompt style and length the later stages
    use, the cheapest under which NoAdapt states an answer in at least 90% of its responses."""
    import testbed as tb

    _, chosen = tb.main(["--model", args.model, "--dtype", args.dtype, "--limit", str(args.testbed_limit),
                         "--styles", args.testbed_styles, "--budgets", args.testbed_budgets, "--batch", "32",
                         "--out", str(args.root / "testbed.json"), *(["--device", args.device] if args.device else [])])
    args.prompt_style, args.max_new_tokens = chosen
    log(f"testbed: prompt style {chosen[0]}, max_new_tokens {chosen[1]}")
    return chosen


def select(args) -> dict[str, float]:
    """The selection's table from the select stage's folders; {method: chosen lr}."""
    import select_lr

    from eval.grading import grade

    methods = args.select_methods.split(",")
    outs = sorted(p for p in (args.root / "jobs" / "select" / "seed0").iterdir() if (p / "rows").is_dir())
    table = select_lr.summarize(outs, methods, grid(args), grade)
    md = select_lr.markdown(table, methods, grid(args), args.select_limit)
    (args.root / "selection.json").write_text(json.dumps(table, indent=2))
    (args.root / "selection.md").write_text(md)
    print(md, flush=True)
    return {m: table[m]["chosen"] for m in methods if table[m]["chosen"] is not None}


def assemble(root: Path, stage: str, first: int | None = None, include=(), seeds=None) -> list[Path]:
    """Per seed, one run folder holding every job's rows (copied) and a run.json naming every
    method's settings; then the per-seed reports and, with 2+ seeds, the combined report.
    `first`: keep each stream's first N rows only (a study stopped at a deadline leaves methods
    at unequal lengths; cut to the shortest, every method is compared on the same problems).
    `include`: other roots whose jobs of the same stage join these, for the seeds this root has
    (rows run there with `--skip`); a stream both hold must have the same responses in both (the
    first root's rows are kept). `seeds`: assemble these seeds (e.g. [0, 1, 2]) from every root
    instead, so that a new, empty root can gather a study run in several roots."""
    from eval.report import write_combined_report, write_report

    folders = []
    if seeds is None:
        seeds = sorted(d.name for d in (root / "jobs" / stage).glob("seed*"))
        if not seeds and include:
            raise ValueError(f"{root} holds no {stage} jobs: name the seeds to gather from the --include roots "
                             "with --seeds (e.g. --seeds 0,1,2)")
    else:
        seeds = [f"seed{s}" for s in seeds]
        held = {d.name for r in (root, *include) for d in (Path(r) / "jobs" / stage).glob("seed*")}
        if set(seeds) - held:
            raise ValueError(f"no root holds {stage} jobs of {sorted(set(seeds) - held)}; the roots hold "
                             f"{sorted(held)}: name only those in --seeds")
    for seed in seeds:
        out = root / stage / seed
        if out.exists():
            shutil.rmtree(out)
        (out / "rows").mkdir(parents=True)
        info: dict = {}
        seed_dirs = [Path(r) / "jobs" / stage / seed for r in (root, *include)]
        for job in (j for d in seed_dirs if d.is_dir() for j in sorted(d.iterdir())):
            if not (job / "run.json").exists():
                continue
            j = json.loads((job / "run.json").read_text())
            if not info:
                info = {**j, "config": {**j["config"], "methods": [], "datasets": []}, "adapt_configs": {},
                        "assembled_from": []}
            info["config"]["methods"] += [m for m in j["config"]["methods"] if m not in info["config"]["methods"]]
            info["config"]["datasets"] += [d for d in j["config"]["datasets"] if d not in info["config"]["datasets"]]
            info["adapt_configs"].update(j.get("adapt_configs", {}))
            info["assembled_from"].append(str(job))
            for f in sorted((job / "rows").glob("*.jsonl")):
                data = f.read_bytes()
                if first is not None:
                    data = b"".join(data.splitlines(keepends=True)[:first])
                dest = out / "rows" / f.name
                if dest.exists():  # run in two roots: keep the first, if both gave the same responses
                    if _responses(dest.read_bytes()) != _responses(data):
                        raise ValueError(f"{f} and an earlier job's {f.name} hold different responses for one "
                                         "stream: include only roots run with the same settings (and --skip the "
                                         "rows run elsewhere)")
                    continue
                dest.write_bytes(data)
        info["config_hash"] = f"assembled-{stage}-{seed}"
        if first is not None:
            info["first_rows_only"] = first
        (out / "run.json").write_text(json.dumps(info, indent=2))
        write_report(out)
        folders.append(out)
    if len(folders) > 1:
        write_combined_report(folders, root / stage / "combined")
    return folders


def _responses(jsonl: bytes) -> list[tuple]:
    """(id, response) of each row: what two runs of one stream must share (timings differ)."""
    return [(r["id"], r["response"]) for r in map(json.loads, jsonl.splitlines()) if r]


def short(label: str) -> str:
    """`tent+clip:lr=0.001` -> `tent+clip` (the lr is stated once, beside the table)."""
    return label.split(":lr=")[0]


def summarize_study(folders: list[Path]) -> str:
    """The study's tables (markdown) from the assembled per-seed run folders: per method, pooled
    over streams and seeds and per stream pooled over seeds: n, accuracy with its 95% interval,
    the paired difference from noadapt with its stratified 95% bootstrap interval (problems
    resampled within each (stream, seed)) and the exact McNemar p, and the collapse verdicts."""
    from collections import Counter

    from eval.report import load_run, outcomes
    from eval.stats import holm, paired_difference_over_sets, wilson_interval
    from zs_llm.diagnostics import collapse_measures

    runs = {f.name: load_run(f) for f in folders}
    methods = sorted(dict.fromkeys(m for streams in runs.values() for m, _ in streams), key=lambda m: m != "noadapt")
    datasets = list(dict.fromkeys(d for streams in runs.values() for _, d in streams))
    base = next((m for m in methods if m == "noadapt"), None)
    # each stream's collapse measures, once: the verdict columns and the diagnostics table read them
    measures = {(s, key): collapse_measures(rows) for s, streams in runs.items() for key, rows in streams.items()}
    pooled_p = {}  # each method's McNemar p over all streams and seeds: the family Holm adjusts

    def cells(m: str, ds: list[str], seeds: list[str] | None = None) -> str:
        keys = [(s, d) for s in (seeds or runs) for d in ds if (m, d) in runs[s]]
        outs = [outcomes(runs[s][(m, d)]) for s, d in keys]
        marks = [[bool(c) for c in o.values() if c is not None] for o in outs]
        n, k = sum(map(len, marks)), sum(map(sum, marks))
        lo, hi = wilson_interval(k, n)
        row = f"{n} | {100 * k / max(1, n):.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
        if base and m != base:
            pairs = [(o, outcomes(runs[s][(base, d)])) for o, (s, d) in zip(outs, keys) if (base, d) in runs[s]]
            v = paired_difference_over_sets(pairs)
            if ds == datasets and seeds is None:
                pooled_p[m] = v.p_mcnemar
            row += (f" | {100 * v.diff:+.1f} [{100 * v.ci_low:+.1f}, {100 * v.ci_high:+.1f}] | "
                    f"{v.only_method}/{v.only_baseline} | {v.p_mcnemar:.3g}")
        else:
            row += " | - | - | -"
        verdicts = Counter(measures[s, (m, d)]["verdict"] for s, d in keys)
        return row + " | " + ", ".join(f"{v} {c}" for v, c in verdicts.most_common())

    head = ("| method | n | accuracy % [95% CI] | change from noadapt, points [95% CI] | gained/lost | McNemar p "
            "| verdicts (streams x seeds) |\n|---|---|---|---|---|---|---|")
    lines = ["### All streams and seeds", "", head]
    lines += [f"| {short(m)} | {cells(m, datasets)} |" for m in methods]
    if pooled_p:
        adj = holm(pooled_p)
        below = [m for m in pooled_p if pooled_p[m] < 0.05]
        lines += ["", f"Holm-adjusted over the {len(adj)} comparisons with {base} above (McNemar p under 0.05 "
                  "before adjustment): " + (", ".join(f"{short(m)} {pooled_p[m]:.3g} -> {adj[m]:.3g}" for m in below)
                                            or "none") + "."]
    for d in datasets:
        lines += ["", f"### {d}", "", head]
        lines += [f"| {short(m)} | {cells(m, [d])} |" for m in methods if any((m, d) in r for r in runs.values())]
    lines += ["", "### Every stream and seed", "", "| stream | seed | " + head.split("\n")[0][2:],
              "|---|---|" + head.split("\n")[1][1:]]
    lines += [f"| {d} | {s} | {short(m)} | {cells(m, [d], [s])} |" for d in datasets for s in runs for m in methods
              if (m, d) in runs[s]]
    lines += ["", "### Collapse diagnostics", "",
              "Per stream, seeds in order: the entropy trend (last quarter's mean over the first's); `pred`: the "
              "predictor's final distance from identity; the verdicts.", "",
              "| stream | " + " | ".join(short(m) for m in methods if m != base) + " |",
              "|---|" + "---|" * sum(m != base for m in methods)]
    for d in datasets:
        row = []
        for m in (m for m in methods if m != base):
            ms = [measures[s, (m, d)] for s in runs if (m, d) in runs[s]]
            cell = "/".join(f"{x['entropy_trend']:.2f}" for x in ms)
            if "zerosiam" in m:
                cell += "; pred " + "/".join(f"{x['predictor_dev_final']:.2f}" for x in ms)
            row.append(cell + "; " + ",".join(sorted({x["verdict"] for x in ms})))
        lines.append(f"| {d} | " + " | ".join(row) + " |")
    lrs = sorted({m.split(":lr=")[1] + " (" + short(m).split("+")[0] + ")" for m in methods if ":lr=" in m})
    lines += ["", f"Seeds: {', '.join(runs)}. Learning rates: {', '.join(lrs) or 'the methods defaults'}. The change "
              "is paired on the same problems; its interval resamples problems within each (stream, seed); "
              "gained/lost: problems the method got right and noadapt wrong, and the reverse."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, default=Path("runs/wild"))
    ap.add_argument("--stages", default="testbed,select,arith30,study")
    ap.add_argument("--testbed-styles", default="answer_line,llama31_paraphrase,boxed")
    ap.add_argument("--testbed-budgets", default="32,48,64")
    ap.add_argument("--testbed-limit", type=int, default=200)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default=None)
    ap.add_argument("--methods", default=",".join(STUDY_METHODS))
    ap.add_argument("--streams", default="long,shift,imbalanced,mixed")
    ap.add_argument("--seeds", default=None, help="seeds to run (default 0,1,2); with --assemble: the seeds to "
                    "gather from --root and every --include (default: those --root holds)")
    ap.add_argument("--no-guard-rows", action="store_true", help="leave out tent+guard and zerosiam+guard")
    ap.add_argument("--skip", default="", help="study rows to leave out, e.g. `tent,tent+clip` (run in another root; "
                    "keep noadapt: the paired differences need it)")
    ap.add_argument("--limit", default=None, help="problems per study stream (default: whole streams); `auto`: as "
                    "many as the earlier stages' measured rate lets every study job finish before --deadline")
    ap.add_argument("--max-limit", type=int, default=300, help="cap of --limit auto")
    ap.add_argument("--select-limit", type=int, default=50)
    ap.add_argument("--select-methods", default=",".join(LORA_METHODS))
    ap.add_argument("--grid", default=",".join(f"{x:g}" for x in GRID))
    ap.add_argument("--prompt-style", default="answer_line")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pool", type=int, default=0, help="run each stage's methods of one seed in one process, "
                    "this many adapting streams pooled (0: one process per method)")
    ap.add_argument("--deadline", type=float, default=None, help="seconds from the start after which jobs stop")
    ap.add_argument("--lrs", help="JSON {method: lr} instead of the select stage's choice")
    ap.add_argument("--assemble", action="store_true", help="only assemble the stages' folders and write reports")
    ap.add_argument("--summary", help="with --assemble: write the study's tables (markdown) to this file")
    ap.add_argument("--include", type=Path, action="append", default=[], help="with --assemble: another root "
                    "whose jobs join this one's (e.g. rows run there with --skip); repeatable")
    ap.add_argument("--first", type=int, default=None, help="with --assemble: keep each stream's first N rows "
                    "(a study stopped at --deadline: every method on the same problems)")
    args = ap.parse_args(argv)
    if args.job:
        return run_job(json.loads(args.job))
    stages = [s for s in args.stages.split(",") if s]
    if args.assemble:
        for stage in stages:
            if stage != "select" and any((Path(r) / "jobs" / stage).is_dir() for r in (args.root, *args.include)):
                seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
                folders = assemble(args.root, stage, args.first, args.include, seeds)
                print(f"{stage}: {[str(p) for p in folders]}")
                if stage == "study" and args.summary:
                    Path(args.summary).write_text(summarize_study(folders))
                    print(f"tables: {args.summary}")
        return None
    t0 = time.time()
    deadline = t0 + (args.deadline or 1e12)

    def log(msg):
        print(f"[wild {time.time() - t0:6.0f}s] {msg}", flush=True)

    lrs = json.loads(args.lrs) if args.lrs else None
    rate = None  # adapting problems per second over the pool, measured on the stages run so far
    auto = args.limit == "auto"
    args.limit = None if auto or args.limit is None else int(args.limit)
    for stage in stages:
        if stage == "testbed":
            testbed(args, log)
            continue
        if stage != "select" and lrs is None and "select" in stages:
            lrs = select(args)
        if stage == "study" and auto:
            n_streams = sum(len(j["datasets"]) * sum(m != "noadapt" for m in j["methods"]) for j in plan(args, lrs, stage))
            args.limit = auto_limit(rate, deadline - time.time(), n_streams, args.max_limit)
            log(f"study: --limit auto -> {args.limit} problems per stream ({rate or 0:.2f} adapting problems/s)")
        jobs = plan(args, lrs, stage)
        log(f"{stage}: {len(jobs)} jobs, {args.workers} at a time")
        t_stage = time.time()
        status = run_pool(jobs, args.workers, deadline, log)
        done = sum(v == 0 for v in status.values())
        adapting_rows = sum(rows_written(Path(j["out"]), skip="noadapt") for j in jobs)
        if adapting_rows and (rate is None or stage == "select"):  # select runs the study's prompt and length
            rate = adapting_rows / max(1e-9, time.time() - t_stage)
        log(f"{stage}: {done}/{len(jobs)} finished, {adapting_rows} adapting rows")
        if stage == "select" and lrs is None:
            lrs = select(args)
    (args.root / "lrs.json").write_text(json.dumps(lrs or {}, indent=2))
    (args.root / "choices.json").write_text(json.dumps({"prompt_style": args.prompt_style, "lrs": lrs,
                                                        "max_new_tokens": args.max_new_tokens,
                                                        "study_limit": args.limit}, indent=2))
    return lrs


if __name__ == "__main__":
    main()
