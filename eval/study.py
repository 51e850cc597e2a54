"""Studies: `python -m eval study SPEC.yaml`. A study file names models, methods and add-ons,
learning rates (fixed, or chosen by a `select` stage), streams, seeds, limits and stages; the
harness expands each stage into ordinary run folders (`eval.runner.Runner`: run identity, lock,
rows as truth), runs them in a pool of processes (a rerun resumes them, so nothing already run
is run again), gathers each seed's rows (and other roots', `include:`) into one run folder per
seed, writes `eval report` for each and over the seeds, and writes the study's tables
(eval/study_tables.py).

    python -m eval study studies/wild_streams.yaml                 # every stage, then the tables
    python -m eval study studies/wild_streams.yaml --stages study --set seeds=0 --set study.pool=24
    python -m eval study studies/wild_streams.yaml --stages study --assemble --summary   # print the tables
    python -m eval study studies/stability_sweep.yaml --list       # the run folders, and what they hold

A study file:

    root: runs/wild                # jobs in ROOT/jobs/<stage>/seed<S>/, gathered into ROOT/<stage>/seed<S>/
    model: smollm2-135m-instruct   # a stage setting given here is every stage's default
    prompt_style: answer_line
    stages:                        # run in this order (`--stages` picks some); settings over the defaults
      select: {kind: select, methods: [tent, zerosiam], lr_grid: [3.0e-4, 1.0e-3], limit: 40}
      study: {kind: streams, methods: [noadapt, tent, zerosiam], addons: [clip], streams: [long, shift]}

Kinds of stage (`kind`):
- `select`: noadapt and each of `methods` at each lr of `lr_grid`, the first `limit` problems of
  `select_dataset` (seed 0); the rule of docs/protocol.md (highest accuracy, a tie to the smaller
  lr) picks each method's lr, written to ROOT/<stage>/selection.json and .md. A later stage
  without `lrs` runs at these (methods named in `lr_from` take another method's choice).
- `streams`: each of `methods`, each LoRA-training one again with each of `addons`, and each of
  `guard_rows` with `+guard`, on `streams` x `seeds`, each stream cut at `limit` problems (`auto`:
  as many as the rate measured on the earlier stages lets finish before `deadline`). One run
  folder per (method, seed), or with `pool: N` one per seed with its adapting streams pooled N at
  a time. Then ROOT/<stage>/seed<S> per seed, its report, the combined report and the tables
  (ROOT/<stage>/tables.md; `--summary FILE` too); `first: N` compares every stream on its first N.
- `sweep`: the points of a grid (`base`: RunConfig fields, `grid`: blocks whose axes multiply; see
  `eval.study_tables.expand_grid`), one run folder per point, ROOT/<point>; its table
  ROOT/summary_<stage>.md, .csv and .json (docs/stability.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from zs_llm.config import AdaptConfig
from zs_llm.methods import METHODS
from zs_llm.settings import MAX_BATCH, MAX_TOKENS, check_fields, check_value, parse_text, setting

from .datasets import DATASETS
from .prompting import PROMPT_STYLES
from .rows import safe_name
from .runner import RunConfig
from .study_tables import expand_grid, is_finished, selection, selection_table, streams_tables, sweep_table

KINDS = ("select", "streams", "sweep")


@dataclass
class Stage:
    """One stage's settings: the file's top-level values, overridden by the stage's own."""

    kind: str = setting("streams", "select, streams or sweep (the module docstring).", choices=KINDS)
    model: str = setting("smollm2-135m-instruct", "RunConfig.model of every run.")
    dtype: str = setting("float32", "RunConfig.dtype.", choices=("float32", "bfloat16", "float16", "auto"))
    device: str | None = setting(None, "cpu, cuda, ... (default: cuda if present).")
    prompt_style: str = setting("answer_line", "RunConfig.prompt_style.", choices=PROMPT_STYLES)
    max_new_tokens: int = setting(32, "New tokens per answer.", min=1, max=MAX_TOKENS)
    methods: list[str] = setting(["noadapt", "tent", "come", "sar", "slot", "eminf", "zerosiam", "zerosiam+sar",
                                  "zerosiam+eata"], "Method specs (select: the LoRA methods whose lr is chosen).")
    addons: list[str] = setting(["clip"], "Add-ons each LoRA-training method runs again with (tent+clip).",
                                choices=("clip", "guard"), empty_ok=True)
    guard_rows: list[str] = setting(["tent", "zerosiam"], "Methods that run again with +guard, those of them "
                                    "among methods.", empty_ok=True)
    lrs: dict | None = setting(None, "{method: lr}; default: the select stage's choice, else each method's own.")
    lr_from: dict = setting({"zerosiam+sar": "zerosiam", "zerosiam+eata": "zerosiam"},
                            "{method: method whose lr it takes} (plug-ins take ZeroSiam's).")
    lr_grid: list[float] = setting([3e-4, 1e-3, 3e-3], "select: the learning rates tried.")
    select_dataset: str = setting("arith_dev", "select: the development stream.", choices=tuple(DATASETS))
    streams: list[str] = setting(["long", "shift", "imbalanced", "mixed"], "Datasets each method streams.",
                                 choices=tuple(DATASETS))
    seeds: list[int] = setting([0, 1, 2], "Seeds (each a run folder per method, or per pool).")
    limit: int | str | None = setting(None, "Problems per stream (default: whole streams); auto: see the docstring.",
                                      min=1)
    max_limit: int = setting(300, "The cap of limit: auto.", min=20)
    skip: list[str] = setting([], "Rows to leave out (e.g. tent+clip, run in another root: include it).",
                              empty_ok=True)
    pool: int = setting(0, "Adapting streams of a seed pooled in one process (RunConfig.stream_batch; 0: one "
                        "process per method).", min=0, max=MAX_BATCH)
    base: dict = setting({}, "sweep: RunConfig fields every point shares (adapt: settings).")
    grid: list = setting([], "sweep: blocks of axes, each block the product of its axes.", empty_ok=True)

    def __post_init__(self):
        if isinstance(self.limit, str) and self.limit.strip().isdigit():  # `--set limit=60`
            self.limit = int(self.limit)
        check_fields(self)
        if isinstance(self.limit, str) and self.limit != "auto":
            raise ValueError(f"limit={self.limit!r} is not valid; give a number of problems or auto")
        for spec in self.methods + self.guard_rows:
            _check_spec(spec)
        for table in ("lrs", "lr_from"):
            for m, v in (getattr(self, table) or {}).items():
                _check_spec(str(m))
                if table == "lrs":
                    self.lrs[m] = check_value(f"lrs.{m}", v, "float", {"gt": 0.0})
                else:
                    _check_spec(str(v))
        if self.kind == "sweep" and not self.grid:
            raise ValueError("a sweep stage needs grid: a list of blocks, e.g. [{method: [noadapt, tent]}]")


@dataclass
class Study:
    """The study's own settings (top level only) and its stages."""

    root: str = setting("runs/study", "Folder of the study's run folders and tables.")
    include: list[str] = setting([], "Other roots whose rows join this one's when assembling (a stream both hold "
                                 "must agree, response for response).", empty_ok=True)
    workers: int = setting(0, "Run folders run at a time, each its own process (0: one after another, here).",
                           min=0, max=1024)
    threads: int | None = setting(None, "torch threads per run.", min=1)
    deadline: float | None = setting(None, "Seconds from the start after which running jobs stop (rows kept).",
                                     gt=0.0)
    first: int | None = setting(None, "Assemble each stream's first N rows only (a study stopped at a deadline).",
                                min=1)
    stages: dict = setting({}, "{name: stage settings}, in running order.")

    def __post_init__(self):
        check_fields(self)


TOP = {f.name for f in dataclasses.fields(Study)}
STAGE = {f.name for f in dataclasses.fields(Stage)}


def _check_spec(spec: str) -> None:
    """A method spec the harness can run, or the registry's one-line error."""
    try:
        AdaptConfig.from_spec(spec)
    except KeyError as e:
        raise ValueError(e.args[0]) from None


def _unknown(key: str, valid: set[str], where: str) -> ValueError:
    close = difflib.get_close_matches(key, sorted(valid), n=1)
    fix = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(sorted(valid))}"
    return ValueError(f"{where}: unknown key {key!r}; {fix}")


def _set(data: dict, item: str) -> None:
    """`--set key=value` (every stage) or `--set stage.key=value` into the file's data."""
    key, eq, text = item.partition("=")
    if not eq:
        raise ValueError(f"--set expects key=value or stage.key=value, got {item!r}")
    stage, _, name = key.rpartition(".")
    fields = {f.name: f for f in (*dataclasses.fields(Study), *dataclasses.fields(Stage))}
    if name not in fields:
        raise _unknown(name, set(fields), f"--set {key}")
    value = parse_text(text, fields[name].type)
    if "dict" in str(fields[name].type) and text.lstrip().startswith("{"):  # --set lrs='{"tent": 3e-4}'
        import yaml

        value = yaml.safe_load(text)
    if stage:
        if stage not in data.get("stages", {}):
            raise ValueError(f"--set {key}: the study has no stage {stage!r}; its stages: "
                             f"{', '.join(data.get('stages', {}))}")
        data["stages"][stage][name] = value
    else:
        data[name] = value
        for settings in data.get("stages", {}).values():  # over every stage's own value too
            if name in settings:
                settings[name] = value


def load_study(path: str | Path, sets: list[str] = ()) -> Study:
    """The study a YAML file describes (read by the harness's bounded YAML loader), `--set`
    overrides applied; each stage checked. Any bad key or value is a one-line ValueError naming
    the file, the stage, the key and the fix."""
    from .options import read_yaml

    data = read_yaml(path)
    stages = data.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise ValueError(f"{path}: stages must map each stage's name to its settings, e.g. stages: {{study: "
                         "{kind: streams}}")
    for name, st in stages.items():
        if st is None:
            stages[name] = st = {}
        if not isinstance(st, dict):
            raise ValueError(f"{path}: stage {name} must be a mapping of settings, got {type(st).__name__}")
    for item in sets:
        _set(data, item)
    for key in data:
        if key not in TOP | STAGE:
            raise _unknown(str(key), TOP | STAGE, str(path))
    defaults = {k: v for k, v in data.items() if k in STAGE}
    built = {}
    for name, st in stages.items():
        where = f"{path}, stage {name}"
        for key in st:
            if key not in STAGE:
                raise _unknown(str(key), STAGE, where)
        try:
            built[str(name)] = Stage(**{**defaults, **st})
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    try:
        return Study(**{k: v for k, v in data.items() if k in TOP and k != "stages"}, stages=built)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# ------------------------------------------------------------------ planning


def _addon(spec: str, addon: str) -> str:
    """`tent:lr=1` + clip -> `tent+clip:lr=1`."""
    name, colon, rest = spec.partition(":")
    return f"{name}+{addon}{colon}{rest}"


def with_lr(spec: str, lrs: dict[str, float], lr_from: dict) -> str:
    """`tent+clip` -> `tent+clip:lr=0.001` from `lrs`; methods without one unchanged."""
    method = AdaptConfig.from_spec(spec).method
    source = lr_from.get(method, method)
    if source not in lrs or ":lr=" in spec:
        return spec
    return f"{spec}:lr={lrs[source]:g}"


def stage_rows(st: Stage, lrs: dict[str, float]) -> list[str]:
    """A streams stage's rows: each method, each LoRA-training one again with each add-on, the
    guard rows; less `skip` (named without the lr); each at its lr."""
    out = list(st.methods)
    for addon in st.addons:
        out += [_addon(m, addon) for m in st.methods if "lora" in METHODS[AdaptConfig.from_spec(m).method].trains]
    out += [_addon(m, "guard") for m in st.guard_rows if m in st.methods]
    unknown = set(st.skip) - set(out)
    if unknown:
        raise ValueError(f"skip names rows the stage does not have: {sorted(unknown)}; its rows are {out}")
    return [with_lr(s, lrs, st.lr_from) for s in out if s not in st.skip]


def plan(study: Study, name: str, lrs: dict[str, float], limit: int | None = None) -> list[dict]:
    """The jobs of a stage: {"config": RunConfig fields, "out": run folder}, the longest first."""
    st, root = study.stages[name], Path(study.root)
    common = {"model": st.model, "dtype": st.dtype, "device": st.device, "checkpoint_every": 1_000_000,
              "prompt_style": st.prompt_style, "adapt": {"max_new_tokens": st.max_new_tokens}}
    jobs = []
    if st.kind == "sweep":
        base = {**st.base, **({"device": st.device} if st.device and "device" not in st.base else {})}
        return [{"config": p.run.to_dict(), "out": str(root / p.name), "point": p}
                for p in expand_grid({"base": base, "grid": st.grid})]
    if st.kind == "select":
        specs = ["noadapt"] + [f"{m}:lr={lr:g}" for m in st.methods for lr in st.lr_grid]
        seeds, datasets, tag, limit = [0], [st.select_dataset], st.select_dataset, st.limit
    else:
        specs, seeds, datasets, tag = stage_rows(st, lrs), st.seeds, st.streams, "streams"
    for seed in seeds:
        for s in specs:  # one process per (method, seed): the model loads once for all its streams
            # the seed is the streams' (their problems and order); the methods keep seed 0, as the study's
            # runs already made did (--seed also seeds the methods unless adapt's seed is set)
            cfg = {**common, "methods": [s], "datasets": datasets, "limit": limit, "seed": seed,
                   "adapt": {**common["adapt"], **({"seed": 0} if seed else {})}}
            jobs.append({"config": cfg, "out": str(root / "jobs" / name / f"seed{seed}" / f"{safe_name(s)}__{tag}")})
    if st.pool:
        groups: dict = {}
        for j in jobs:
            seed = j["config"]["seed"]
            g = groups.setdefault(seed, {"config": {**j["config"], "methods": [], "stream_batch": st.pool},
                                         "out": str(root / "jobs" / name / f"seed{seed}" / "pool")})
            g["config"]["methods"] += j["config"]["methods"]
        jobs = list(groups.values())
    for j in jobs:
        RunConfig(**j["config"])  # every run's configuration checked before any runs
    return sorted(jobs, key=lambda j: j["config"]["methods"] == ["noadapt"])  # noadapt is batched and fast


# ------------------------------------------------------------------ running


def run_job(job: dict, threads: int | None = None) -> None:
    """One run folder, in this process (what each worker process runs)."""
    from .runner import Runner

    if threads:
        import torch

        torch.set_num_threads(threads)
    Runner(RunConfig(**job["config"]), job["out"], progress=False).run()


def run_pool(jobs: list[dict], workers: int, deadline: float, log, threads: int | None = None) -> dict:
    """Run jobs, `workers` at a time, each its own process (0: one after another in this process);
    stop what still runs at `deadline` (time.time()). Returns {out: returncode, 'stopped' or
    'not started'}."""
    waiting, running, status = list(jobs), {}, {}
    if workers == 0:
        for job in jobs:
            if time.time() >= deadline:
                status[job["out"]] = "not started"
                continue
            Path(job["out"]).mkdir(parents=True, exist_ok=True)
            run_job(job, threads)
            status[job["out"]] = 0
        return status
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")]))
    env["ZS_STUDY_PARENT"] = str(os.getpid())  # a worker stops when this process ends (stop_with_parent)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    while waiting or running:
        while waiting and len(running) < workers and time.time() < deadline:
            job = waiting.pop(0)
            Path(job["out"]).mkdir(parents=True, exist_ok=True)
            logf = open(Path(job["out"]) / "job.log", "a")
            p = subprocess.Popen([sys.executable, "-m", "eval.study", "--job", json.dumps(_plain(job))], stdout=logf,
                                 stderr=subprocess.STDOUT, env=env)
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


def _plain(job: dict) -> dict:
    return {"config": job["config"], "out": job["out"]}


def rows_written(out: Path, skip: str = "") -> int:
    """Rows in a run folder, leaving out the streams of method `skip`."""
    files = [f for f in (out / "rows").glob("*.jsonl") if not (skip and f.name.startswith(f"{skip}__"))] \
        if (out / "rows").is_dir() else []
    return sum(len(f.read_bytes().splitlines()) for f in files)


def auto_limit(rate: float | None, seconds_left: float, n_streams: int, cap: int, margin: float = 60.0) -> int:
    """Problems per stream such that `n_streams` adapting streams finish in `seconds_left` at
    `rate` adapting problems per second (over the whole pool); a multiple of 10, between 20 and
    `cap`. Without a measured rate: 20.

    >>> auto_limit(10.0, 660, 60, 300)
    100
    """
    if not rate or n_streams == 0:
        return 20
    per_stream = rate * max(0.0, seconds_left - margin) / n_streams
    return int(max(20, min(cap, 10 * (per_stream // 10))))


# ------------------------------------------------------------------ tables


def _roots(study: Study) -> list[Path]:
    return [Path(study.root), *(Path(r) for r in study.include)]


def select(study: Study, name: str) -> dict[str, float]:
    """A select stage's table from its run folders (in every root); {method: chosen lr}."""
    from .grading import grade

    st = study.stages[name]
    outs = sorted(p for r in _roots(study) for p in (r / "jobs" / name / "seed0").glob("*") if (p / "rows").is_dir())
    if not outs:
        raise ValueError(f"stage {name} has no rows in {study.root}: run it first (--stages {name}) or give lrs")
    table = selection(outs, st.methods, st.lr_grid, grade, st.select_dataset)
    md = selection_table(table, st.methods, st.lr_grid, st.limit, st.select_dataset)
    out = Path(study.root) / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "selection.json").write_text(json.dumps(table, indent=2))
    (out / "selection.md").write_text(md)
    print(md, flush=True)
    return {m: table[m]["chosen"] for m in st.methods if table[m]["chosen"] is not None}


def stage_lrs(study: Study, name: str) -> dict[str, float]:
    """A streams stage's learning rates: its `lrs`, else the study's select stage's choice, else none."""
    st = study.stages[name]
    if st.lrs is not None:
        return st.lrs
    chooser = next((n for n, s in study.stages.items() if s.kind == "select"), None)
    return select(study, chooser) if chooser else {}


def assemble(study: Study, name: str) -> list[Path]:
    """Per seed, one run folder holding every job's rows (copied) and a run.json naming every
    method's settings; then the per-seed reports and, with 2+ seeds, the combined report.
    `first`: each stream's first N rows only. `include`: other roots' jobs of the same stage join
    these; a stream two roots hold must have the same responses in both (the first's are kept)."""
    from .report import COMBINED_MARK, write_combined_report, write_report

    root, stage = Path(study.root), study.stages[name]
    held = {d.name for r in _roots(study) for d in (r / "jobs" / name).glob("seed*")}
    seeds = [f"seed{s}" for s in stage.seeds if f"seed{s}" in held]
    if not seeds:
        raise ValueError(f"no root holds {name} jobs of seeds {stage.seeds} (roots: {[str(r) for r in _roots(study)]}); "
                         f"run the stage first, or name the roots that hold them in include")
    missing = [s for s in stage.seeds if f"seed{s}" not in held]
    if missing:
        print(f"[study] {name}: no root holds seeds {missing}; assembling {seeds}", flush=True)
    folders = []
    for seed in seeds:
        out = root / name / seed
        if out.exists():
            shutil.rmtree(out)
        (out / "rows").mkdir(parents=True)
        info: dict = {}
        seed_dirs = [r / "jobs" / name / seed for r in _roots(study)]
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
                _copy_rows(f, out / "rows" / f.name, study.first)
        info["config_hash"] = f"assembled-{name}-{seed}"
        if study.first is not None:
            info["first_rows_only"] = study.first
        (out / "run.json").write_text(json.dumps(info, indent=2))
        write_report(out)
        folders.append(out)
    if len(folders) > 1:
        combined = root / name / "combined"
        if (combined / COMBINED_MARK).exists():
            shutil.rmtree(combined)  # the study's own combined report of an earlier assemble: rewritten
        write_combined_report(folders, combined)
    return folders


def _copy_rows(src: Path, dest: Path, first: int | None) -> None:
    data = src.read_bytes()
    if first is not None:
        data = b"".join(data.splitlines(keepends=True)[:first])
    if dest.exists():  # run in two roots: keep the first, if both gave the same responses
        if _responses(dest.read_bytes()) != _responses(data):
            raise ValueError(f"{src} and an earlier job's {src.name} hold different responses for one stream: include "
                             "only roots run with the same settings (and skip the rows run elsewhere)")
        return
    dest.write_bytes(data)


def _responses(jsonl: bytes) -> list[tuple]:
    """(id, response) of each row: what two runs of one stream must share (timings differ)."""
    return [(r["id"], r["response"]) for r in map(json.loads, jsonl.splitlines()) if r]


def write_tables(study: Study, name: str, summary: str | None = None) -> None:
    """A stage's tables from the rows already run (its jobs in every root): see the module docstring."""
    st, root = study.stages[name], Path(study.root)
    if st.kind == "select":
        select(study, name)
    elif st.kind == "sweep":
        points = [j["point"] for j in plan(study, name, {})]
        records = sweep_table(points, root, f"summary_{name}")
        print(f"[study] {name}: {len(records)} streams; {root / f'summary_{name}'}.md, .csv and .json", flush=True)
    else:
        folders = assemble(study, name)
        md = streams_tables(folders)
        (root / name / "tables.md").write_text(md)
        if summary and summary != "-":
            Path(summary).write_text(md)
        print(f"[study] {name}: {[str(p) for p in folders]}; tables: {summary or root / name / 'tables.md'}",
              flush=True)
        if summary == "-":
            print(md, end="", flush=True)


# ------------------------------------------------------------------ the command


def run_study(study: Study, stages: list[str], summary: str | None = None) -> dict[str, float]:
    """Run the stages' jobs (resuming what exists), each followed by its tables; returns the last
    streams stage's learning rates."""
    t0 = time.time()
    deadline = t0 + (study.deadline or 1e12)
    root = Path(study.root)
    root.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(f"[study {time.time() - t0:6.0f}s] {msg}", flush=True)

    rate, lrs = None, {}  # adapting problems per second over the pool, measured on the stages run so far
    record = {"stages": {n: dataclasses.asdict(study.stages[n]) for n in stages}, "lrs": {}}
    for name in stages:
        st = study.stages[name]
        limit = st.limit
        if st.kind == "streams":
            lrs = record["lrs"][name] = stage_lrs(study, name)
            if limit == "auto":
                n = sum(len(j["config"]["datasets"]) * sum(m != "noadapt" for m in j["config"]["methods"])
                        for j in plan(study, name, lrs, None))
                limit = record.setdefault("limits", {})[name] = auto_limit(rate, deadline - time.time(), n,
                                                                           st.max_limit)
                log(f"{name}: limit auto -> {limit} problems per stream ({rate or 0:.2f} adapting problems/s)")
        jobs = plan(study, name, lrs, limit)
        if st.kind == "sweep":
            jobs = [j for j in jobs if not is_finished(j["point"], root)]
        log(f"{name}: {len(jobs)} jobs to run, {study.workers or 1} at a time")
        t_stage = time.time()
        status = run_pool(jobs, study.workers, deadline, log, study.threads)
        adapting_rows = sum(rows_written(Path(j["out"]), skip="noadapt") for j in jobs)
        if adapting_rows and (rate is None or st.kind == "select"):  # select runs the study's prompt and length
            rate = adapting_rows / max(1e-9, time.time() - t_stage)
        log(f"{name}: {sum(v == 0 for v in status.values())}/{len(jobs)} finished, {adapting_rows} adapting rows")
        write_tables(study, name, summary if st.kind == "streams" else None)
    (root / "study.json").write_text(json.dumps(record, indent=2, default=str))
    return lrs


def list_jobs(study: Study, stages: list[str]) -> None:
    """Each stage's run folders and the rows each holds."""
    for name in stages:
        st = study.stages[name]
        lrs = st.lrs or {}
        for j in plan(study, name, lrs, None if st.limit == "auto" else st.limit):
            c = j["config"]
            state = ("finished" if is_finished(j["point"], Path(study.root)) else "to run") if "point" in j \
                else f"{rows_written(Path(j['out']))} rows"
            print(f"{name}\t{j['out']}\t{','.join(c['methods'])}\t{','.join(c['datasets'])}\tseed {c['seed']}\t{state}")


# ------------------------------------------------------------------ rows shipped with the docs


def _stage_folders(study: Study, name: str) -> list[Path]:
    """Where a stage's run folders live under the root: a sweep's points, a select stage's
    ROOT/jobs/<stage>, a streams stage's ROOT/jobs/<stage>/seed<S> for the stage's seeds (so
    `--set seeds=1 --pack F` packs seed 1 alone)."""
    root = Path(study.root)
    stage = study.stages[name]
    if stage.kind == "sweep":
        return [Path(j["out"]) for j in plan(study, name, {})]
    if stage.kind == "streams":
        return [root / "jobs" / name / f"seed{s}" for s in stage.seeds]
    return [root / "jobs" / name]


def pack(study: Study, stages: list[str], path: str | Path) -> int:
    """Write the stages' rows into the tar archive `path` (compressed as its name says: .tar.xz,
    .tar.gz, .tar): each run folder's `run.json` and `rows/*.jsonl`, named relative to the root,
    and nothing else (no adapter states). The rows are what the tables are made from, so the
    archive, a few hundred kB for a stage of thousands of rows, lets anyone assemble them again
    (`--unpack`). Returns the number of files written."""
    import tarfile

    from zs_llm.checkpoint import atomic_path

    root = Path(study.root).resolve()
    files = sorted(f for name in stages for folder in _stage_folders(study, name) if folder.is_dir()
                   for f in folder.rglob("*") if f.is_file() and _packed_name(str(f.resolve().relative_to(root))))
    if not files:
        raise ValueError(f"--pack: no rows under {root} for stages {', '.join(stages)}: run them first")
    mode = {".xz": "w:xz", ".gz": "w:gz", ".tar": "w"}.get(Path(path).suffix)
    if mode is None:
        raise ValueError(f"--pack {path}: name it .tar.xz, .tar.gz or .tar")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tarfile.open(tmp, mode) as tar:
        for f in files:
            info = tar.gettarinfo(str(f), arcname=str(f.resolve().relative_to(root)))
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
            with open(f, "rb") as fh:
                tar.addfile(info, fh)
    return len(files)


def _packed_name(name: str) -> bool:
    """A name `pack` writes: relative, without `..`, a run folder's run.json or rows/*.jsonl."""
    p = Path(name)
    return (not p.is_absolute() and ".." not in p.parts and len(p.parts) >= 2
            and (p.name == "run.json" or (p.parent.name == "rows" and p.suffix == ".jsonl")))


def unpack(study: Study, path: str | Path) -> int:
    """Extract an archive `pack` wrote into the root: only regular files named as `pack` names them
    (a run folder's run.json or rows/*.jsonl, relative, without `..`), else nothing is written. A
    file already there with other bytes is refused (nothing is written then), one with the same
    bytes is kept. Returns the number of files written."""
    import tarfile

    root = Path(study.root)
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        for m in members:
            if not m.isfile() or not _packed_name(m.name):
                raise ValueError(f"--unpack {path}: {m.name!r} is not a run folder's file; this is not an archive "
                                 f"`--pack` wrote")
        data = {m.name: tar.extractfile(m).read() for m in members}
    clash = [n for n, b in data.items() if (root / n).exists() and (root / n).read_bytes() != b]
    if clash:
        raise ValueError(f"--unpack {path}: {len(clash)} files under {root} differ from the archive's (first: "
                         f"{clash[0]}); unpack into a new root (--root DIR)")
    written = 0
    for name, b in data.items():
        target = root / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b)
            written += 1
    return written


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m eval study", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", help="the study file (YAML; studies/*.yaml)")
    ap.add_argument("--stages", help="comma-separated stages to run or assemble (default: all, in the file's order)")
    ap.add_argument("--assemble", action="store_true", help="run nothing: gather the rows already run and write the "
                    "reports and tables")
    ap.add_argument("--summary", nargs="?", const="-", metavar="FILE", help="write the streams stage's tables "
                    "(markdown) to FILE as well; without FILE, print them")
    ap.add_argument("--first", type=int, help="assemble each stream's first N rows only (the same as --set first=N)")
    ap.add_argument("--root", help="the study's folder (the same as --set root=DIR)")
    ap.add_argument("--include", action="append", default=[], help="another root whose rows join (repeatable)")
    ap.add_argument("--set", action="append", default=[], metavar="[STAGE.]KEY=VALUE",
                    help="override a study setting, in every stage or in one (repeatable), e.g. --set seeds=0,1")
    ap.add_argument("--list", action="store_true", help="list the run folders and what they hold, run nothing")
    ap.add_argument("--pack", metavar="FILE", help="run nothing: write the stages' rows (run.json and rows/*.jsonl "
                    "of each run folder) into FILE (.tar.xz), from which --unpack and --assemble make the tables")
    ap.add_argument("--unpack", metavar="FILE", action="append", default=[], help="first extract the rows of FILE "
                    "(a --pack archive) into the root; with --assemble, the tables from them (repeatable: one "
                    "archive per seed joins into one root)")
    ap.add_argument("--job", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str]) -> dict | None:
    """`python -m eval study SPEC [--stages a,b] [--assemble] [--summary FILE] [--set KEY=VALUE ...]`."""
    args = parse_args(argv)
    sets = list(args.set)
    sets += [f"root={args.root}"] if args.root else []
    sets += [f"first={args.first}"] if args.first is not None else []
    sets += [f"include={','.join(args.include)}"] if args.include else []
    study = load_study(args.spec, sets)
    stages = [s for s in (args.stages or ",".join(study.stages)).split(",") if s]
    for s in stages:
        if s not in study.stages:
            raise ValueError(f"--stages {s}: the study has no such stage; its stages: {', '.join(study.stages)}")
    streams = [s for s in stages if study.stages[s].kind == "streams"]
    if args.summary and len(streams) != 1:
        raise ValueError(f"--summary writes one streams stage's tables, and --stages names {len(streams)} "
                         f"({', '.join(streams) or 'none'}): name one with --stages")
    if args.pack:
        n = pack(study, stages, args.pack)
        print(f"packed {n} files of {', '.join(stages)} into {args.pack}")
        return None
    for archive in args.unpack:
        n = unpack(study, archive)
        print(f"unpacked {n} files of {archive} into {study.root}", file=sys.stderr)
    if args.list:
        list_jobs(study, stages)
        return None
    if args.assemble:
        for name in stages:
            write_tables(study, name, args.summary)
        return None
    return run_study(study, stages, args.summary)


def stop_with_parent() -> None:
    """Make this process (a worker of run_pool) receive SIGTERM when the study process that started
    it ends, however it ends (a kill -9 included; Linux): the worker's rows so far stay, and the next
    run of the study resumes its folder instead of finding it held by an orphan. Elsewhere, nothing."""
    parent = int(os.environ.get("ZS_STUDY_PARENT", "0") or 0)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the study ended before the call
        os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":  # a worker of run_pool
    if len(sys.argv) == 3 and sys.argv[1] == "--job":
        stop_with_parent()
        run_job(json.loads(sys.argv[2]), int(os.environ["OMP_NUM_THREADS"]) if "OMP_NUM_THREADS" in os.environ
                else None)
