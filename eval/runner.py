"""Stream problems through test-time methods and write one JSONL row per problem.

Work is split into units, one per (method, dataset): a stream. Rows are appended and
flushed as they finish; an adapting online stream also checkpoints its state (LoRA,
predictor, optimizer) so a rerun with the same output folder continues exactly where it
stopped: rows past the last checkpoint are dropped and recomputed, never duplicated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zs_llm.config import AdaptConfig, check_overrides

from .datasets import (
    DATASETS,
    SUBSET_SYNTAX,
    dataset_fingerprint,
    load_problems,
    parse_subsets,
    resolve_data_dir,
    subset_record,
)
from .grading import check, default_grader
from .prompting import PROMPT_STYLES, build_messages, prompt_info


@dataclass
class RunConfig:
    """Everything that defines a harness run (the run folder stores it and checks resumes)."""

    model: str = field(default="smollm2-135m-instruct", metadata={"help": "Hub id, local folder, .gguf path, or "
                                                                 "smollm2-135m-instruct (the embedded default)."})
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file name inside --model's folder."})
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16, float16 or auto."})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: cuda if present)."})
    methods: list[str] = field(default_factory=lambda: ["noadapt", "tent", "zerosiam"], metadata={
        "help": "Method specs: a registered name, optionally with AdaptConfig overrides as name:key=value:key=value "
                "(e.g. zerosiam:alpha=0)."})
    datasets: list[str] = field(default_factory=lambda: ["arith"], metadata={"help": "Dataset names."})
    limit: int | None = field(default=None, metadata={"help": "First N problems of each dataset (of its subset, if "
                                                     "it has one)."})
    subset: list[str] = field(default_factory=list, metadata={
        "help": f"Named subsets of datasets, comma-separated: {SUBSET_SYNTAX}; e.g. college_math=sample:240:seed0. "
                "A subset streams in its set's order; run.json records its size and the sha256 of its ids."})
    data_dir: str | None = field(default=None, metadata={"help": "Folder of <name>/test.jsonl files."})
    prompt_style: str = field(default="boxed", metadata={"help": "Prompt style (eval.prompting.PROMPT_STYLES)."})
    prompt_template: str | None = field(default=None, metadata={
        "help": "File holding a published prompt style's template, read instead of its source (package or hub)."})
    n_samples: int = field(default=1, metadata={"help": "Answers per problem; >1 samples (needs temperature > 0) "
                                                "and reports avg@n and pass@k."})
    batch_size: int = field(default=8, metadata={"help": "Batch size for methods that generate without adapting."})
    backend: str = field(default="hf", metadata={"help": "hf, or vllm (GPU; generation-only methods)."})
    checkpoint_every: int = field(default=1, metadata={"help": "Checkpoint an online stream every N problems."})
    seed: int = field(default=0, metadata={"help": "Seed of the synthetic arith set."})
    protocol: str = field(default="paper", metadata={
        "help": "paper: every method as its authors' code runs it (no guard, no clipping; the guard and clipping "
                "only as add-ons named in the method, e.g. zerosiam+guard), LoRA learning rates from one selection "
                "(docs/protocol.md)."})
    adapt: dict[str, Any] = field(default_factory=dict, metadata={"help": "AdaptConfig overrides for every method."})

    def __post_init__(self):
        if isinstance(self.methods, str):
            self.methods = [m for m in self.methods.split(",") if m]
        if isinstance(self.datasets, str):
            self.datasets = [d for d in self.datasets.split(",") if d]
        if self.protocol != "paper":
            raise ValueError(f"protocol must be 'paper' (the only one), got {self.protocol!r}; add the guard or "
                             "clipping to a method by name instead (tent+guard, zerosiam+clip)")
        if self.backend not in ("hf", "vllm"):
            raise ValueError(f"backend must be 'hf' or 'vllm', got {self.backend!r}")
        if self.n_samples < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("n_samples, batch_size and checkpoint_every must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        subsets = parse_subsets(self.subset)  # syntax and set names; ids are checked when the run starts
        self.subset = [f"{name}={sub.spec}" for name, sub in subsets.items()]
        stray = sorted(set(subsets) - set(self.datasets))
        if stray:
            raise ValueError(f"subset given for {stray}, not among datasets {self.datasets}; add them to datasets or "
                             "drop their subsets")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        # fields that change results; batch size and checkpoint cadence do not
        d = {k: v for k, v in self.to_dict().items() if k not in ("batch_size", "checkpoint_every", "device")}
        if not d["subset"]:
            del d["subset"]  # run folders from before subsets existed keep their hash
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def parse_method_spec(spec: str, base: dict | None = None) -> AdaptConfig:
    """`zerosiam+clip:alpha=0` -> its AdaptConfig (see `AdaptConfig.from_spec`)."""
    return AdaptConfig.from_spec(spec, base)


def method_label(spec: str, cfg: AdaptConfig) -> str:
    """The name a method's rows and tables carry: the spec with every add-on its config turns on
    written into it (`--set guard=true` makes `tent` read `tent+guard`), so a table never mixes
    guarded or clipped methods with plain ones silently."""
    _, sep, rest = spec.partition(":")
    return cfg.label() + sep + rest


def safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=-]", "_", s.replace(":", "@"))


def stream_path(out: Path, method: str, dataset: str, shard: str = "") -> Path:
    return out / "rows" / f"{safe_name(method)}__{dataset}{shard}.jsonl"


def read_rows(path: Path) -> list[dict]:
    """Rows of a JSONL file; a torn last line (a run killed mid-write) is dropped."""
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def write_rows(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def environment_summary() -> dict:
    """Versions, git commit and hardware, for the run folder."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("zs_llm", "torch", "transformers", "peft", "accelerate", "datasets", "math-verify", "vllm"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=5,
                                    cwd=Path(__file__).parent).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    import torch

    hw = {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count(),
          "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        hw["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"versions": versions, "git_commit": commit, "git_dirty": dirty, "hardware": hw}


class Runner:
    """Runs a `RunConfig` into an output folder; `rank`/`world` split the work across processes."""

    def __init__(self, cfg: RunConfig, out: str | os.PathLike, rank: int = 0, world: int = 1, progress: bool = True,
                 overwrite: bool = False):
        self.cfg, self.out, self.rank, self.world, self.progress = cfg, Path(out), rank, world, progress
        self.validate(overwrite)
        self.model = self.tokenizer = None

    # --- checks before anything heavy ---------------------------------------------------
    def validate(self, overwrite: bool = False) -> None:
        cfg = self.cfg
        check_overrides(cfg.adapt, cfg.methods)
        self.adapt_configs = {}
        for spec in cfg.methods:
            ac = parse_method_spec(spec, cfg.adapt)
            label = method_label(spec, ac)
            if label in self.adapt_configs:
                raise ValueError(f"method {spec!r} repeats {label!r} in methods; list each once")
            self.adapt_configs[label] = ac
        for d in cfg.datasets:
            DATASETS[d]  # KeyError listing the known ones
        if cfg.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"unknown prompt style {cfg.prompt_style!r}; choose one of {sorted(PROMPT_STYLES)}")
        if any(DATASETS[d].generate is None for d in cfg.datasets):
            resolve_data_dir(cfg.data_dir)  # raises naming --data-dir
        if cfg.n_samples > 1 and all(c.temperature == 0 for c in self.adapt_configs.values()):
            raise ValueError("n_samples > 1 needs sampling: set temperature > 0 (e.g. --set temperature=0.6)")
        if cfg.backend == "vllm":
            bad = [m for m, c in self.adapt_configs.items() if c.method != "noadapt"]
            if bad:
                raise ValueError(f"the vllm backend only generates (noadapt); run {bad} with --backend hf")
        m = cfg.model
        looks_local = m.startswith((".", "/", "~")) or m.endswith(".gguf")
        if looks_local and not Path(m).expanduser().exists():
            raise FileNotFoundError(f"model {m!r} does not exist; give a hub id, a local folder or a .gguf file")
        if cfg.gguf_file and not m.startswith(("smollm2", "embedded")) and Path(m).is_dir() \
                and not (Path(m) / cfg.gguf_file).exists():
            raise FileNotFoundError(f"GGUF file {cfg.gguf_file} is not in {m}")
        run_json = self.out / "run.json"
        if run_json.exists():
            old = json.loads(run_json.read_text())
            if old.get("config_hash") != cfg.hash():
                if not overwrite:
                    raise FileExistsError(
                        f"{self.out} holds a run with another configuration (hash {old.get('config_hash')}, this one "
                        f"{cfg.hash()}); choose a new --out, or pass --overwrite to delete it")
                if self.rank == 0:
                    shutil.rmtree(self.out)

    # --- the run ------------------------------------------------------------------------
    def units(self) -> list[tuple[str, str]]:
        return [(m, d) for m in self.adapt_configs for d in self.cfg.datasets]

    def assignment(self, method: str, dataset: str, index: int) -> tuple[bool, str]:
        """Which part of a unit this rank does. Online adapting streams are sequential: a rank
        takes whole streams (round-robin). Other units are split by problem index."""
        ac = self.adapt_configs[method]
        online = ac.schedule == "online" and _adapts(ac)
        if self.world == 1:
            return True, ""
        if online:
            return index % self.world == self.rank, ""
        return True, f".shard{self.rank}of{self.world}"

    def _write_run_json(self) -> None:
        # on every rank, before any model loads: a published prompt whose source is missing stops the run here
        prompt = prompt_info(self.cfg.prompt_style, self.cfg.prompt_template)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "rows").mkdir(exist_ok=True)
        run_json = self.out / "run.json"
        recorded = json.loads(run_json.read_text()).get("prompt") if run_json.exists() else None
        if recorded and recorded["sha256"] != prompt["sha256"]:
            raise FileExistsError(f"{self.out} was run with another {prompt['style']} template ({recorded['origin']}, "
                                  f"sha256 {recorded['sha256'][:12]}; now {prompt['sha256'][:12]}); use a new --out")
        # before any model loads too: unknown ids or a sample larger than its set stop the run here
        subsets = {name: subset_record(name, sub, self.cfg.data_dir, self.cfg.seed)
                   for name, sub in parse_subsets(self.cfg.subset).items()}
        old_subsets = json.loads(run_json.read_text()).get("subsets", {}) if run_json.exists() else {}
        for name, rec in subsets.items():
            if name in old_subsets and old_subsets[name]["ids_sha256"] != rec["ids_sha256"]:
                raise FileExistsError(f"{self.out} was run on other {name} problems: subset {rec['spec']} selected "
                                      f"{old_subsets[name]['n']} ids (sha256 {old_subsets[name]['ids_sha256'][:12]}), "
                                      f"now {rec['n']} ({rec['ids_sha256'][:12]}); use a new --out")
        if not run_json.exists() and self.rank == 0:
            info = {"config": self.cfg.to_dict(), "config_hash": self.cfg.hash(), "prompt": prompt, "subsets": subsets,
                    "adapt_configs": {m: c.to_dict() for m, c in self.adapt_configs.items()},
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "world_size": self.world,
                    "split": "online adapting streams: whole (method, dataset) streams per rank; other units: "
                             "problems split by index across ranks", **environment_summary()}
            tmp = run_json.with_suffix(".tmp")
            tmp.write_text(json.dumps(info, indent=2))
            tmp.replace(run_json)

    def load_model(self):
        if self.model is None:
            import torch

            from zs_llm.model import load_model

            device = self.cfg.device or ("cuda" if torch.cuda.is_available() else None)
            if self.world > 1 and device == "cuda":
                device = f"cuda:{self.rank % torch.cuda.device_count()}"
            _log(f"loading model {self.cfg.model}" + (f" ({self.cfg.gguf_file})" if self.cfg.gguf_file else ""))
            t = time.perf_counter()
            self.model, self.tokenizer = load_model(self.cfg.model, gguf_file=self.cfg.gguf_file, dtype=self.cfg.dtype,
                                                    device=device)
            _log(f"loaded in {time.perf_counter() - t:.1f}s")
        return self.model, self.tokenizer

    def run(self) -> Path:
        t0 = time.time()
        default_grader().start()  # the grading worker warms up while the model loads and generates
        self._write_run_json()
        for i, (method, dataset) in enumerate(self.units()):
            mine, shard = self.assignment(method, dataset, i)
            if mine:
                self.run_unit(method, dataset, shard)
        if self.rank == 0:
            summary = {"wall_s": time.time() - t0, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return self.out

    def problems(self, dataset: str):
        c = self.cfg
        return load_problems(dataset, data_dir=c.data_dir, limit=c.limit, seed=c.seed,
                             subset=parse_subsets(c.subset).get(dataset))

    def run_unit(self, method: str, dataset: str, shard: str = "") -> None:
        from zs_llm.model import ZeroSiamLM

        ac = self.adapt_configs[method]
        problems = self.problems(dataset)
        order = dataset_fingerprint(problems)
        if shard:
            problems = [p for i, p in enumerate(problems) if i % self.world == self.rank]
        path = stream_path(self.out, method, dataset, shard)
        ckpt = self.out / "state" / f"{safe_name(method)}__{dataset}{shard}"
        rows = read_rows(path)
        online = ac.schedule == "online" and _adapts(ac)
        if rows and rows[0].get("config_hash") != ac.hash():
            raise FileExistsError(f"{path} was written with another method configuration; use a new --out")
        if len(rows) >= len(problems):
            return
        model, tok = self.load_model()
        lm = ZeroSiamLM(model, tok, ac)
        try:
            if online:
                done = 0
                if (ckpt / "state.json").exists() or ckpt.with_name(ckpt.name + ".old").exists():
                    from zs_llm.checkpoint import load_checkpoint

                    extra = load_checkpoint(lm, ckpt)
                    done = extra.get("rows_done", 0)
                    if lm.guard is not None and extra.get("guard"):
                        lm.guard.load_state_dict(extra["guard"])
                if len(rows) != done:
                    rows = rows[:done]  # rows past the checkpoint are recomputed from its state
                write_rows(path, rows)
            else:
                write_rows(path, rows)
            todo = problems[len(rows):]
            self._stream(lm, method, dataset, todo, rows, path, ckpt if online else None, order)
        finally:
            self.model = lm.unwrap()

    def _stream(self, lm, method, dataset, todo, rows, path, ckpt, order) -> None:
        from tqdm.auto import tqdm

        from zs_llm.checkpoint import save_checkpoint

        n_correct = sum(1 for r in rows if r.get("correct"))
        n_graded = sum(1 for r in rows if r.get("correct") is not None)
        bar = tqdm(total=len(rows) + len(todo), initial=len(rows), desc=f"{method} | {dataset}", unit="prob",
                   disable=not self.progress, dynamic_ncols=True)
        t_start, done_here = time.perf_counter(), 0
        batch = self.cfg.batch_size if (lm.method.batchable and self.cfg.n_samples == 1) else 1
        # Without a checkpoint to keep in step with the rows, a batch is graded (in the grading
        # worker) while the next one generates; its rows are written when that finishes.
        pipelined = ckpt is None
        pool = ThreadPoolExecutor(max_workers=1) if pipelined else None
        pending = None  # the future of the previous batch's rows, while they are graded
        with open(path, "a", encoding="utf-8") as f:

            def emit(new_rows):
                nonlocal n_graded, n_correct, done_here
                for row in new_rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                    rows.append(row)
                    if ckpt is not None and (len(rows) % self.cfg.checkpoint_every == 0 or len(rows) == bar.total):
                        save_checkpoint(lm, ckpt, {"rows_done": len(rows),
                                                   "guard": lm.guard.state_dict() if lm.guard else None})
                    if row["correct"] is not None:
                        n_graded += 1
                        n_correct += int(row["correct"])
                    done_here += 1
                    rate = done_here / max(1e-9, time.perf_counter() - t_start) * 60
                    bar.update(1)
                    bar.set_postfix(acc=f"{n_correct / max(1, n_graded):.1%}", ppm=f"{rate:.1f}")

            def collect():  # write the rows of the batch being graded, if any
                nonlocal pending
                done, pending = pending, None
                if done is not None:
                    emit(done.result())

            first = len(rows)  # todo[b] becomes row first + b
            try:
                for b in range(0, len(todo), batch):
                    chunk = todo[b : b + batch]
                    messages = [build_messages(p.question, self.cfg.prompt_style, template=self.cfg.prompt_template)
                                for p in chunk]
                    results = self._solve(lm, chunk, messages)
                    args = (lm, method, dataset, chunk, messages, results, first + b, order)
                    if not pipelined:
                        emit(self._rows(*args))
                        continue
                    collect()
                    pending = pool.submit(self._rows, *args)
                collect()
            finally:
                if pending is not None:  # a failure while the next batch generated: keep the graded rows
                    try:
                        collect()
                    except Exception:  # noqa: BLE001 - the original error is the one to raise
                        pass
                if pool is not None:
                    pool.shutdown(wait=True)
        bar.close()

    def _rows(self, lm, method, dataset, problems, messages, results, first, order) -> list[dict]:
        return [self._row(lm, method, dataset, p, m, r, first + i, order)
                for i, (p, m, r) in enumerate(zip(problems, messages, results))]

    def _solve(self, lm, problems, messages) -> list[dict]:
        """Answer a batch of problems; returns per problem {draft, responses, steps, ...}."""
        if self.cfg.backend == "vllm":
            from .backends import VLLMBackend

            if not hasattr(self, "_vllm"):
                self._vllm = VLLMBackend(self.cfg.model, self.cfg.dtype, lm.tokenizer)
            outs = self._vllm.generate([lm_render(lm, m) for m in messages], lm.zs_config, self.cfg.n_samples)
            return [{"draft": None, "responses": o, "steps": [], "timings": {}, "events": [], "method_stats": {}}
                    for o in outs]
        if len(problems) > 1:
            t = time.perf_counter()
            texts = lm.generate_texts(messages, batch_size=len(problems))
            dt = (time.perf_counter() - t) / len(problems)
            return [{"draft": None, "responses": [x], "steps": [], "timings": {"total_s": dt}, "events": [],
                     "method_stats": {}} for x in texts]
        res = lm.adapt_generate(messages[0], problem_id=problems[0].id)
        responses = [res.answer]
        for _ in range(self.cfg.n_samples - 1):
            responses.append(lm.decode(lm.generate_ids(lm.encode(messages[0]))[0]))
        d = res.to_dict()
        return [{"draft": d["draft"], "responses": responses, "steps": d["steps"], "timings": d["timings"],
                 "events": d["events"], "method_stats": d["method_stats"],
                 "tokens": {"prompt": d["prompt_tokens"], "draft": d["draft_tokens"], "answer": d["answer_tokens"]}}]

    def _row(self, lm, method, dataset, p, messages, res, index, order) -> dict:
        responses = res["responses"]
        graded = [check(r, p.gold) for r in responses]
        corrects = [g.correct for g in graded]
        extracted = graded[0].pred  # the answer the grader compared with the gold
        row = {
            "id": p.id, "index": index, "dataset": dataset, "method": method, "prompt": lm_render(lm, messages),
            "draft": res["draft"], "response": responses[0], "extracted": extracted, "gold": p.gold,
            "correct": corrects[0], "steps": res["steps"], "method_stats": res["method_stats"],
            "timings": res["timings"], "events": res["events"], "tokens": res.get("tokens", {}),
            "config": lm.zs_config.to_dict(), "config_hash": lm.zs_config.hash(), "order": order,
        }
        if len(responses) > 1:
            row["responses"], row["corrects"] = responses, corrects
        return row


def lm_render(lm, messages) -> str:
    from zs_llm.model import render_prompt

    return render_prompt(lm.tokenizer, messages)


def _adapts(ac: AdaptConfig) -> bool:
    from zs_llm.methods import METHODS

    m = METHODS[ac.method]
    return bool(m.trains) and m.loop_update


def _log(msg: str) -> None:
    print(f"[eval] {msg}", file=sys.stderr, flush=True)


def merge_shards(out: str | os.PathLike) -> list[Path]:
    """Combine per-rank shard files of a unit into one rows file ordered by dataset order."""
    out = Path(out)
    merged = []
    groups: dict[str, list[Path]] = {}
    for p in sorted((out / "rows").glob("*.shard*of*.jsonl")):
        groups.setdefault(re.sub(r"\.shard\d+of\d+\.jsonl$", ".jsonl", p.name), []).append(p)
    for name, parts in groups.items():
        m = re.search(r"of(\d+)\.jsonl$", parts[0].name)
        world = int(m.group(1)) if m else len(parts)
        rows = []
        for part in parts:
            r = int(re.search(r"\.shard(\d+)of", part.name).group(1))
            for row in read_rows(part):
                row["index"] = row["index"] * world + r  # back to the position in the dataset order
                rows.append(row)
        rows.sort(key=lambda r: r["index"])
        write_rows(out / "rows" / name, rows)
        for part in parts:
            part.unlink()
        merged.append(out / "rows" / name)
    return merged
