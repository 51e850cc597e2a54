"""Stream problems through test-time methods and write one JSONL row per problem.

Work is split into units, one per (method, dataset): a stream. Rows are appended and
fsynced as they finish (`eval.rows`); an adapting online stream also checkpoints its state
(LoRA, predictor, optimizer) with the hash of the rows it follows, so a rerun with the same
output folder continues exactly where it stopped. Rows past the checkpoint are computed
again and checked against the stored ones; nothing is duplicated, and nothing is deleted:
lines that are not valid rows go to quarantine/. When an adapting online stream finishes, its
final adapted state is exported to adapters/<method>__<dataset>/ (`ZeroSiamLM.save_pretrained`:
peft's adapter files plus the predictor), which `ZeroSiamLM.from_pretrained` and
`peft.PeftModel.from_pretrained` both load.
"""

from __future__ import annotations

import contextlib
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

from zs_llm.checkpoint import atomic_write_text
from zs_llm.config import AdaptConfig, check_fields, check_overrides
from zs_llm.settings import MAX_BATCH, SEED_MAX

from .datasets import (
    DATASETS,
    SUBSET_SYNTAX,
    check_limit,
    dataset_fingerprint,
    load_problems,
    parse_subsets,
    resolve_data_dir,
    source_record,
    subset_record,
)
from .grading import check, default_grader
from .identity import check_loaded, check_resume, refusal, run_identity
from .prompting import PROMPT_STYLES, build_messages, prompt_info
from .rows import (
    RowsAppender,
    RunLock,
    chain_hash,
    check_not_nested,
    make_run_folder,
    prefix_hashes,
    quarantine,
    row_line,
    safe_name,
    scan_rows,
    stream_path,
    write_lines,
)

#: RunConfig fields that do not change a run's results: left out of its hash
RESULT_FREE_FIELDS = ("batch_size", "stream_batch", "checkpoint_every", "device")


@dataclass
class RunConfig:
    """Everything that defines a harness run (the run folder stores it and checks resumes)."""

    model: str = field(default="smollm2-135m-instruct", metadata={"help": "Hub id, local folder, .gguf path, or "
                                                                 "smollm2-135m-instruct (the embedded default)."})
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file name inside --model's folder."})
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16, float16 or auto.", "choices": (
        "float32", "bfloat16", "float16", "auto", "fp32", "bf16", "fp16")})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: cuda if present)."})
    methods: list[str] = field(default_factory=lambda: ["noadapt", "tent", "zerosiam"], metadata={
        "help": "Method specs, comma- or space-separated: a registered name, optionally with add-ons (+clip, +guard) "
                "and its own overrides as name:key=value:key=value (e.g. zerosiam:alpha=0)."})
    datasets: list[str] = field(default_factory=lambda: ["arith"], metadata={"help": "Dataset names, comma- or "
                                                                                        "space-separated.",
                                                                                "choices": DATASETS})
    limit: int | None = field(default=None, metadata={"help": "First N problems of each dataset (of its subset, if "
                                                     "it has one).", "min": 1})
    subset: list[str] = field(default_factory=list, metadata={
        "help": f"Named subsets of datasets, comma-separated: {SUBSET_SYNTAX}; e.g. college_math=sample:240:seed0. "
                "A subset streams in its set's order; run.json records its size and the sha256 of its ids.",
        "empty_ok": True})
    data_dir: str | None = field(default=None, metadata={"help": "Folder of <name>/test.jsonl files (default: "
                                                         "$ZS_LLM_DATA_DIR, else ../shared/data/math or ./data/math)."})
    source: str = field(default="local", metadata={
        "help": "Where the sets are read: local (the data dir) or hub (datasets.load_dataset, the ids in "
                "eval/datasets.py; online). run.json records each set's file and sha256, or its hub ids.",
        "choices": ("local", "hub")})
    prompt_style: str = field(default="boxed", metadata={"help": "Prompt style (eval.prompting.PROMPT_STYLES).",
                                                         "choices": PROMPT_STYLES})
    prompt_template: str | None = field(default=None, metadata={
        "help": "File holding a published prompt style's template, read instead of its source (package or hub)."})
    n_samples: int = field(default=1, metadata={
        "help": "Answers per problem; >1 samples (needs temperature > 0) and reports avg@n, pass@k and maj@k. "
                "Sample 1 is the method's answer, drafted and adapted on exactly as with one sample (one update "
                "per problem, on that draft); samples 2..n are drawn after the update and do not adapt. Each "
                "sample has its own seed (zs_llm.model.sample_seed of the method's seed, the problem's position "
                "and the sample's), recorded in the row as sample_seeds.", "min": 1,
        "max": 100_000})  # papers report pass@k up to k=1024; 100k answers per problem is no real run
    batch_size: int = field(default=8, metadata={"help": "Batch size for methods that generate without adapting.",
                                                 "min": 1, "max": MAX_BATCH})
    stream_batch: int | None = field(default=None, metadata={
        "help": "Streams of adapting methods (methods x datasets) run together, one problem each per batched "
                "round (zs_llm.pool): a stream's rows are those it gives alone, up to the rounding of batched "
                "matmuls. 1 runs them one after another; default: 8 on a GPU, 4 on a CPU.", "min": 1, "max": MAX_BATCH})
    backend: str = field(default="hf", metadata={"help": "hf, or vllm (GPU; generation-only methods).",
                                                 "choices": ("hf", "vllm")})
    checkpoint_every: int = field(default=1, metadata={"help": "Checkpoint an online stream every N problems.",
                                                       "min": 1, "max": 10**9})  # more than any stream holds
    seed: int = field(default=0, metadata={"help": "Seed of the synthetic arith set.", "min": 0,
                                                 "max": SEED_MAX})
    protocol: str = field(default="paper", metadata={
        "help": "paper: every method as its authors' code runs it except the deviations docs/protocol.md lists "
                "(no guard, no clipping; the guard and clipping "
                "only as add-ons named in the method, e.g. zerosiam+guard), LoRA learning rates from one selection "
                "(docs/protocol.md)."})
    adapt: dict[str, Any] = field(default_factory=dict, metadata={"help": "AdaptConfig overrides for every method."})

    def __post_init__(self):
        if isinstance(self.methods, str):
            self.methods = [m for m in self.methods.split(",") if m]
        if isinstance(self.datasets, str):
            self.datasets = [d for d in self.datasets.split(",") if d]
        if isinstance(self.subset, (str, dict)):  # the other forms parse_subsets reads
            self.subset = [f"{name}={sub.spec}" for name, sub in parse_subsets(self.subset).items()]
        check_fields(self)  # each field's type and range, as the command line and YAML check them
        # every override named and its value held as its field holds it (1 -> 1.0 for a float), so the
        # hash of a config is the same before and after a run validates it
        check_overrides(self.adapt, self.methods)
        if self.protocol != "paper":
            raise ValueError(f"protocol must be 'paper' (the only one), got {self.protocol!r}; add the guard or "
                             "clipping to a method by name instead (tent+guard, zerosiam+clip)")
        subsets = parse_subsets(self.subset)  # syntax and set names; ids are checked when the run starts
        self.subset = [f"{name}={sub.spec}" for name, sub in subsets.items()]
        stray = sorted(set(subsets) - set(self.datasets))
        if stray:
            raise ValueError(f"subset given for {stray}, not among datasets {self.datasets}; add them to datasets or "
                             "drop their subsets")
        for d in self.datasets:  # before anything is built: a generated stream is as long as the limit
            check_limit(d, self.limit, d in subsets)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        # fields that change results (batch sizes, checkpoint cadence and the device do not)
        d = {k: v for k, v in self.to_dict().items() if k not in RESULT_FREE_FIELDS}
        if not d["subset"]:
            del d["subset"]  # run folders from before subsets existed keep their hash
        if d["source"] == "local":
            del d["source"]  # and from before the hub source
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



#: what a run writes into its folder, by subfolder ("": the folder itself): all that --overwrite
#: removes; any other file, however named, stays (a regular expression per entry name)
def run_output_names() -> dict[str, str]:
    sets = "|".join(re.escape(d) for d in sorted(DATASETS, key=len, reverse=True))
    stream = rf"[A-Za-z0-9_.+=-]+__(?:{sets})(?:\.shard\d+of\d+)?"  # rows.stream_path without .jsonl
    return {
        "": r"run\.json|summary\.json|report\.md|metrics\.json|results\.csv|\.done\.rank\d+|\.overwritten\..+",
        "rows": rf"{stream}\.jsonl",
        "state": stream,
        "adapters": stream,
        "quarantine": rf"{stream}\.jsonl\..+\.jsonl|state__{stream}__\d+\..+",
        "plots": r"accuracy\.png|diagnostics_.+\.png",
    }


RUN_SUBFOLDERS = ("rows", "state", "adapters", "quarantine", "plots")
#: checkpoints kept per stream besides the newest two: every this many problems (replay points
#: when a row turns out damaged long after it was written)
KEEP_EVERY = 100


def run_writes(name: str, sub: str = "") -> bool:
    """Whether an entry `name` of a run folder's `sub`/ is one a run writes there (or a killed
    writer's hidden temporary of one)."""
    tmp = re.fullmatch(r"\.(.+)\.tmp-\d+(?:-old)?", name)
    return re.fullmatch(run_output_names()[sub], tmp.group(1) if tmp else name) is not None


def has_results(out: Path) -> bool:
    """Whether a run folder holds rows or checkpoints (a run.json alone is not a result; nor is a
    file in rows/ that no run writes)."""
    names = run_output_names()
    rows = out / "rows"
    if rows.is_dir() and any(re.fullmatch(names["rows"], p.name) and p.is_file() and p.stat().st_size
                             for p in rows.iterdir()):
        return True
    state = out / "state"
    return state.is_dir() and any(re.fullmatch(names["state"], p.name) for p in state.iterdir())


def _remove(p: Path) -> None:
    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def remove_run_outputs(out: Path) -> None:
    """Delete what a run writes into `out` (`run_output_names`), nothing else: --overwrite. A
    subfolder left empty goes too; one holding other files stays with them."""
    for p in out.iterdir():
        if p.name not in RUN_SUBFOLDERS and run_writes(p.name):
            _remove(p)
    for sub in RUN_SUBFOLDERS:
        folder = out / sub
        if folder.is_symlink() or not folder.is_dir():
            continue  # a link is not followed: what it points at is not this folder's
        for p in folder.iterdir():
            if run_writes(p.name, sub):
                _remove(p)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if nothing else is in it


def read_run_json(path: Path) -> dict:
    """A run folder's record. One that is not this harness's (damaged, or another tool's file) is
    refused, by --overwrite too: nothing says what in the folder a run wrote."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is damaged ({e}); restore it, or choose another --out (to start this folder "
                         "over, delete it yourself and pass --overwrite)") from None
    if not isinstance(info, dict) or not isinstance(info.get("config_hash"), str):
        raise ValueError(f"{path} is not a run record of this harness (no config_hash); restore it, or choose "
                         "another --out (to start this folder over, delete it yourself and pass --overwrite)")
    return info


#: settings naming local files, compared by what they resolve to (or by the content run.json fingerprints)
PATH_FIELDS = ("model", "data_dir", "prompt_template")
#: list settings whose order changes no stream's rows: each (method, dataset) stream is its own
#: file with its own seeds, whatever order the streams are listed or run in
SET_FIELDS = ("methods", "datasets", "subset")
FINGERPRINTED = "(checked by its fingerprint in run.json)"


def _local_path(value):
    """A local path spelled any way (relative, ~, trailing slash) as the absolute path it names."""
    if not isinstance(value, str) or not value:
        return value
    p = Path(value).expanduser()
    return str(p.resolve()) if p.exists() else os.path.normpath(value)


def normalised_config(config: dict, info: dict, current: bool = False) -> dict:
    """A RunConfig's settings (`config`, as recorded in run.json or `to_dict`) with the spelling that
    changes no result taken out: result-free fields dropped, list settings sorted, local paths
    resolved. A path whose content run.json `info` fingerprints (model files, the data sets, the
    template's sha256) compares as equal: the resume checks that content (`eval.identity`), so an
    identical copy elsewhere resumes and a changed one is refused naming the file. `current`: the
    settings of the run starting now, whose model must be local files too to be checked so."""
    d = {k: v for k, v in config.items() if k not in RESULT_FREE_FIELDS}
    if not d.get("subset"):
        d.pop("subset", None)  # as RunConfig.hash: folders from before subsets and hub sources
    if d.get("source", "local") == "local":
        d.pop("source", None)
    for k in SET_FIELDS:
        if isinstance(d.get(k), list):
            d[k] = sorted(map(str, d[k]))
    for k in PATH_FIELDS:
        d[k] = _local_path(d.get(k))
    d["dtype"] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(d.get("dtype"), d.get("dtype"))
    try:  # each method's effective settings: a default given explicitly, or 1 for 1.0, is no change
        d["adapt"] = {spec: AdaptConfig.from_spec(spec, d.get("adapt") or {}).to_dict() for spec in d["methods"]}
    except (TypeError, ValueError, KeyError):
        pass  # settings this version does not read: compared as written
    ident = info.get("identity") or {}
    model = ident.get("model")
    from .identity import model_files

    if isinstance(model, dict) and model.get("kind") == "files" and (
            not current or model_files(str(d["model"]), d.get("gguf_file")) is not None):
        d["model"] = FINGERPRINTED  # the identity check compares the files' sha256s
    if ident.get("sets") and ident.get("data_dir"):
        d["data_dir"] = FINGERPRINTED  # data_change compares each set's file and problems
    if (info.get("prompt") or {}).get("sha256"):
        d["prompt_template"] = FINGERPRINTED  # _write_run_json compares the template's sha256
    return d


def result_signature(row: dict) -> str:
    """A row without its wall-clock fields, as JSON: what an exact rerun must reproduce (NaN
    included, which a dict comparison would call different from itself)."""
    d = {k: v for k, v in row.items() if k != "timings"}
    d["steps"] = [{k: v for k, v in s.items() if k != "time_s"} for s in row.get("steps") or []]
    return row_line(d)


def _pid_alive(name: str) -> bool:
    m = re.search(r"\.(?:tmp|old)-(\d+)", name)
    if not m:
        return False
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files and folders left by a killed writer (their PID is gone)."""
    if not folder.is_dir():
        return
    for p in folder.glob(".*.tmp-*"):
        if not _pid_alive(p.name):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(problems done, folder) of a stream's checkpoints, newest first."""
    if not folder.is_dir():
        return []
    found = [(int(p.name), p) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(found, reverse=True)


def prune_checkpoints(folder: Path) -> None:
    """Keep the newest two checkpoints and every KEEP_EVERY-th one."""
    for i, (n, p) in enumerate(list_checkpoints(folder)):
        if i >= 2 and n % KEEP_EVERY:
            drop = p.with_name(f".{p.name}.tmp-{os.getpid()}")  # hidden first: a kill mid-delete leaves no half
            p.rename(drop)
            shutil.rmtree(drop, ignore_errors=True)


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
    """Runs a `RunConfig` into an output folder; `rank`/`world` split the work across processes.

    The folder is locked while a run writes to it (`eval.rows.RunLock`). Its rows are the truth:
    a resume reads every valid row, quarantines the lines that are not rows, and continues an
    adapting stream from the newest checkpoint whose recorded rows hash matches the rows on
    disk, replaying (and checking against the stored rows) from there."""

    def __init__(self, cfg: RunConfig, out: str | os.PathLike, rank: int = 0, world: int = 1, progress: bool = True,
                 overwrite: bool = False):
        self.cfg, self.out, self.rank, self.world, self.progress = cfg, Path(out), rank, world, progress
        self.lock = RunLock(self.out, rank, world)
        self.validate(overwrite)
        self.model = self.tokenizer = None

    # --- checks before anything heavy ---------------------------------------------------
    def validate(self, overwrite: bool = False) -> None:
        cfg = self.cfg
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
        if any((DATASETS[d].generate is None and cfg.source == "local") or DATASETS[d].reads for d in cfg.datasets):
            resolve_data_dir(cfg.data_dir)  # raises naming --data-dir
        if cfg.n_samples > 1 and all(c.temperature == 0 for c in self.adapt_configs.values()):
            raise ValueError("n_samples > 1 needs sampling: set temperature > 0 (e.g. --set temperature=0.6)")
        if cfg.backend == "vllm":
            bad = [m for m, c in self.adapt_configs.items() if c.method != "noadapt"]
            if bad:
                raise ValueError(f"the vllm backend only generates (noadapt); run {bad} with --backend hf")
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                raise ValueError("--backend vllm needs vLLM, which is not installed here: pip install 'zs_llm[vllm]' "
                                 "(a CUDA machine), or use --backend hf")
        from zs_llm.loading import check_device

        check_device(cfg.device)
        m = cfg.model
        looks_local = m.startswith((".", "/", "~")) or m.endswith(".gguf")
        if looks_local and not Path(m).expanduser().exists():
            raise FileNotFoundError(f"model {m!r} does not exist; give a hub id, a local folder or a .gguf file")
        if cfg.gguf_file and not m.startswith(("smollm2", "embedded")) and Path(m).is_dir() \
                and not (Path(m) / cfg.gguf_file).exists():
            raise FileNotFoundError(f"GGUF file {cfg.gguf_file} is not in {m}")
        check_not_nested(self.out)
        if overwrite and self.rank == 0 and self.out.is_dir() and self._folder_conflict():
            with self._locked(keep=True):
                if self._folder_conflict():  # again under the lock
                    remove_run_outputs(self.out)
        self.check_folder()

    def check_folder(self) -> None:
        """Refuse a folder that holds another configuration's results (read-only check)."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"--out {out} is a file, not a folder; choose another --out")
        run_json = out / "run.json"
        if not self._folder_conflict():
            return
        if not run_json.exists():
            raise FileExistsError(f"{out} holds results but no run.json records what produced them; --overwrite "
                                  "(deletes them) or another --out")
        old = read_run_json(run_json)
        raise FileExistsError(
            f"{out} holds a run with another configuration ({self._config_change(old, meaningful=True)}; hash "
            f"{old.get('config_hash')}, this one {self.cfg.hash()}); choose a new --out, or pass --overwrite to "
            "delete its results")

    def _config_change(self, info: dict, meaningful: bool = False) -> str:
        """The settings that differ from the run a folder's run.json (`info`) records, as `name: old ->
        new`; `meaningful`: only those that differ after `normalised_config` (not in spelling alone)."""
        old = info.get("config")
        if not isinstance(old, dict):
            return "its run.json records no settings"
        new, free = self.cfg.to_dict(), RESULT_FREE_FIELDS
        changed = [k for k in sorted(set(old) | set(new)) if k not in free and old.get(k) != new.get(k)]
        if meaningful:
            a, b = normalised_config(old, info), normalised_config(new, info, current=True)
            changed = [k for k in changed if a.get(k) != b.get(k)] or changed
        shown = [f"{k}: {repr(old.get(k))[:60]} -> {repr(new.get(k))[:60]}" for k in changed[:4]]
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        return ("changed " + ", ".join(shown) + more) if changed else "the same settings under another hash"

    def _folder_conflict(self) -> bool:
        """Whether the folder holds results of another configuration, or results that no run.json
        records. A folder without rows or checkpoints (a run that failed before its first row, e.g.
        on a model that would not load) is no conflict: the next run takes it over. A run.json that
        is not this harness's raises (`read_run_json`), results or not."""
        if not self.out.is_dir():
            return False
        run_json = self.out / "run.json"
        old = read_run_json(run_json) if run_json.exists() else None
        if not has_results(self.out):
            return False
        return old is None or not self.same_run(old)

    def same_run(self, old: dict) -> bool:
        """Whether run.json's `old` record is of this configuration: the same hash, or settings that
        differ only in spelling (`normalised_config`). Old folders keep their recorded hash."""
        if old.get("config_hash") == self.cfg.hash():
            return True
        was = old.get("config")
        return isinstance(was, dict) and normalised_config(was, old) == normalised_config(self.cfg.to_dict(), old, current=True)

    @contextlib.contextmanager
    def _locked(self, keep: bool = False):
        held = self.lock.held
        self.lock.acquire()
        try:
            yield
        except BaseException:
            if not held:
                self.lock.release()
            raise
        if not (held or keep):
            self.lock.release()

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
        return True, self._shard_suffix()

    def _shard_suffix(self) -> str:
        return f".shard{self.rank}of{self.world}"

    def _write_run_json(self, prompt: dict | None = None) -> None:
        """Under the lock: check the folder again (another run may have written it meanwhile), then
        record this run (rank 0) unless the folder already records it."""
        prompt = prompt or prompt_info(self.cfg.prompt_style, self.cfg.prompt_template)
        self.check_folder()
        make_run_folder(self.out)
        (self.out / "rows").mkdir(exist_ok=True)
        run_json = self.out / "run.json"
        old = read_run_json(run_json) if run_json.exists() else None
        same = old is not None and self.same_run(old)
        if same and old.get("config_hash") != self.cfg.hash() and has_results(self.out):
            _log(f"{run_json} records this configuration spelled otherwise ({self._config_change(old)}"
                 "); resuming it, checked against its recorded model, data and template fingerprints")
        recorded = old.get("prompt") if same else None
        if recorded and recorded["sha256"] != prompt["sha256"]:
            raise refusal(self.out, f"another {prompt['style']} template: it was {recorded['origin']} (sha256 "
                                    f"{recorded['sha256'][:12]}), now {prompt['origin']} ({prompt['sha256'][:12]})")
        # before any model loads too: unknown ids or a sample larger than its set stop the run here
        subsets = {name: subset_record(name, sub, self.cfg.data_dir, self.cfg.seed, self.cfg.source)
                   for name, sub in parse_subsets(self.cfg.subset).items()}
        old_subsets = (old or {}).get("subsets") or {}
        for name, rec in subsets.items():
            if name in old_subsets and old_subsets[name]["ids_sha256"] != rec["ids_sha256"]:
                raise FileExistsError(f"{self.out} was run on other {name} problems: subset {rec['spec']} selected "
                                      f"{old_subsets[name]['n']} ids (sha256 {old_subsets[name]['ids_sha256'][:12]}), "
                                      f"now {rec['n']} ({rec['ids_sha256'][:12]}); use a new --out")
        data = {d: source_record(d, self.cfg.source, self.cfg.data_dir, self.cfg.seed) for d in self.cfg.datasets}
        ident = run_identity(self.cfg, data)  # model files and data: a resume on others is refused here
        if same:
            updated = check_resume(self.out, old, data, ident, has_results(self.out))
            if updated is not None and self.rank == 0:
                atomic_write_text(run_json, json.dumps(updated, indent=2))
        if self.rank == 0 and not same:
            if old is not None:
                _log(f"{run_json} records a run that wrote no rows (hash {old.get('config_hash')}): replaced")
            info = {"config": self.cfg.to_dict(), "config_hash": self.cfg.hash(), "prompt": prompt, "subsets": subsets,
                    "data": data, "identity": ident,
                    "adapt_configs": {m: c.to_dict() for m, c in self.adapt_configs.items()},
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "world_size": self.world,
                    "split": "online adapting streams: whole (method, dataset) streams per rank; other units: "
                             "problems split by index across ranks", **environment_summary()}
            atomic_write_text(run_json, json.dumps(info, indent=2))

    def load_model(self):
        if self.model is None:
            import torch

            from zs_llm.loading import load_model

            device = self.cfg.device or ("cuda" if torch.cuda.is_available() else None)
            if self.world > 1 and device == "cuda":
                device = f"cuda:{self.rank % torch.cuda.device_count()}"
            _log(f"loading model {self.cfg.model}" + (f" ({self.cfg.gguf_file})" if self.cfg.gguf_file else ""))
            t = time.perf_counter()
            self.model, self.tokenizer = load_model(self.cfg.model, gguf_file=self.cfg.gguf_file, dtype=self.cfg.dtype,
                                                    device=device)
            _log(f"loaded in {time.perf_counter() - t:.1f}s")
            try:
                self._check_loaded()
                self._check_prompts_fit()
            except BaseException:
                self.model = self.tokenizer = None
                raise
        return self.model, self.tokenizer

    def _check_prompts_fit(self) -> None:
        """Every problem's prompt fits the loaded model's context, checked before any stream
        starts: a question too long is refused by its id and set here, not met mid-run."""
        from zs_llm.model import context_length, prompt_ids

        limit = context_length(self.model.config)
        if limit is None:
            return
        c = self.cfg
        for dataset in c.datasets:
            for p in self.problems(dataset):
                messages = build_messages(p.question, c.prompt_style, template=c.prompt_template)
                n = prompt_ids(self.tokenizer, messages).shape[1]
                if n >= limit:
                    rec = source_record(dataset, c.source, c.data_dir, c.seed)
                    where = rec.get("path") or rec["source"]
                    raise ValueError(f"dataset {dataset!r} ({where}) problem {p.id!r}: its prompt is {n} tokens, the "
                                     f"model's context is {limit}; shorten that question, or leave it out with "
                                     "--subset (a file of the ids to run)")

    def _check_loaded(self) -> None:
        """Before the loaded model writes a row: its revision (no local files) and the prompt as its
        chat template renders it match run.json's record, or are recorded there."""
        run_json = self.out / "run.json"
        if not self.lock.held or not run_json.exists():
            return
        updated = check_loaded(self.out, read_run_json(run_json), self.cfg, self.model, self.tokenizer,
                               has_results(self.out))
        if updated is not None and self.rank == 0:
            atomic_write_text(run_json, json.dumps(updated, indent=2))

    def run(self) -> Path:
        t0 = time.time()
        default_grader().start()  # the grading worker warms up while the model loads and generates
        # before the folder is touched: a published prompt whose source is missing stops the run here
        prompt = prompt_info(self.cfg.prompt_style, self.cfg.prompt_template)
        self.lock.acquire()
        try:
            self._write_run_json(prompt)
            for folder in (self.out, self.out / "rows"):
                remove_stale_temporaries(folder)
            pool = []
            for i, (method, dataset) in enumerate(self.units()):
                mine, shard = self.assignment(method, dataset, i)
                if mine and self.stream_batch() > 1 and self._poolable(method):
                    pool.append((method, dataset, shard))
                elif mine:
                    self.run_unit(method, dataset, shard)
            if pool:
                self.run_pool(pool)
            if self.rank == 0:
                summary = {"wall_s": time.time() - t0, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
                atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2))
        finally:
            self.lock.release()
        return self.out

    def problems(self, dataset: str):
        c = self.cfg
        problems = load_problems(dataset, data_dir=c.data_dir, limit=c.limit, seed=c.seed, source=c.source,
                                 subset=parse_subsets(c.subset).get(dataset))
        if not problems:
            raise ValueError(f"dataset {dataset!r} has no problems; check its file under --data-dir "
                             f"({c.data_dir or 'the default data dir'})")
        for p in problems:
            try:
                p.question.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"dataset {dataset!r} problem {p.id!r}: the question holds a lone surrogate "
                                 f"{p.question[e.start]!r} at character {e.start}, which is not text; fix that "
                                 "row of the dataset file") from None
            except AttributeError:
                raise ValueError(f"dataset {dataset!r} problem {p.id!r} has no question text; fix that row of "
                                 "the dataset file") from None
        return problems

    # --- one stream -----------------------------------------------------------------------
    def _read_stream(self, path: Path, method: str, dataset: str, ac: AdaptConfig, problems: list) -> dict[int, tuple[dict, str]]:
        """The valid stored rows of a stream by index. Lines that are not rows of this stream are
        moved to quarantine/ (with a warning) and the file is rewritten without them."""
        f = scan_rows(path)
        if f.rows and all(r.get("config_hash") != ac.hash() for r in f.rows):
            raise FileExistsError(f"{path} was written with another method configuration; use a new --out")
        bad = [(b.lineno, b.text, b.reason) for b in f.bad]
        stored: dict[int, tuple[dict, str]] = {}
        for row, line in zip(f.rows, f.lines):
            i, why = row["index"], None
            if row.get("config_hash") != ac.hash():
                why = "written with another method configuration"
            elif row["method"] != method or row["dataset"] != dataset:
                why = f"a row of {row['method']} on {row['dataset']}, not of this stream"
            elif i >= len(problems):
                why = f"index {i} is past the {len(problems)} problems"
            elif row["id"] != problems[i].id:
                why = f"id {row['id']!r} is not problem {i}'s ({problems[i].id!r})"
            if why:
                bad.append((None, line, why))
            else:
                stored[i] = (row, line)
        lines = [stored[i][1] for i in sorted(stored)]
        if bad:
            q = quarantine(self.out, path, bad)
            what = "; ".join(f"{'line ' + str(n) if n else 'a row'}: {why}" for n, _, why in bad[:3])
            _log(f"WARNING {path}: {len(bad)} line(s) are not valid rows ({what}); kept in {q}, their rows are "
                 "computed again")
        if bad or not f.ends_clean or lines != f.lines:
            write_lines(path, lines)
        return stored

    def _restore(self, lm, folder: Path, hashes: list[str]) -> int:
        """Load the newest checkpoint consistent with the stored rows (`hashes[n]`: the rows hash
        of the first n valid rows in order); returns the problems it covers (0: start over).
        Checkpoints past the rows or not matching them are removed; damaged ones quarantined."""
        from zs_llm.checkpoint import load_checkpoint, read_checkpoint_meta

        prefix = len(hashes) - 1
        for n, p in list_checkpoints(folder):
            try:
                meta = read_checkpoint_meta(p)
                why = None
                if n > prefix:
                    why = f"it is past the rows ({n} problems, {prefix} valid rows in order)"
                elif meta["extra"].get("rows_hash") != hashes[n]:
                    why = "the rows it was saved with differ from the stored rows"
                if why is None:
                    extra = load_checkpoint(lm, p)
                    if lm.guard is not None and extra.get("guard"):
                        lm.guard.load_state_dict(extra["guard"])
                    again = f" ({prefix - n} stored rows after it are computed again and checked)" if prefix > n else ""
                    _log(f"{folder.name}: resuming from the checkpoint after {n} problems{again}")
                    return n
                _log(f"{folder.name}: checkpoint {n} not used: {why}; removed")
                drop = p.with_name(f".{p.name}.tmp-{os.getpid()}")  # hidden first: a kill mid-delete leaves no half
                p.rename(drop)
                shutil.rmtree(drop)
            except ValueError as e:
                q = self.out / "quarantine"
                q.mkdir(exist_ok=True)
                dest = q / f"state__{folder.name}__{p.name}.{time.strftime('%Y%m%dT%H%M%S')}"
                p.rename(dest)
                _log(f"WARNING {folder.name}: checkpoint {n} is damaged ({e}); moved to {dest}, resuming from an "
                     "earlier state")
        return 0

    def _position(self, path: Path, i: int) -> int:
        """The position in the whole stream of problem `i` of the stream written to `path`: a rank's
        shard (`assignment`) holds every world-th problem, so its seeds match a one-process run."""
        return i * self.world + self.rank if path.name.endswith(self._shard_suffix() + ".jsonl") else i

    def _prepare_unit(self, method: str, dataset: str, shard: str = "") -> dict | None:
        """A stream's problems, stored rows and checkpoint folder; None when it is complete."""
        from zs_llm.checkpoint import read_checkpoint_meta

        ac = self.adapt_configs[method]
        problems = self.problems(dataset)
        order = dataset_fingerprint(problems)
        if shard:
            problems = [p for i, p in enumerate(problems) if i % self.world == self.rank]
        path = stream_path(self.out, method, dataset, shard)
        folder = self.out / "state" / f"{safe_name(method)}__{dataset}{shard}"
        export = self.out / "adapters" / folder.name
        online = ac.schedule == "online" and _adapts(ac)
        stored = self._read_stream(path, method, dataset, ac, problems)
        n = len(problems)
        hashes = None
        if online:
            remove_stale_temporaries(folder)
            prefix = next((i for i in range(n) if i not in stored), n)
            hashes = prefix_hashes([stored[i][1] for i in range(prefix)])
            if prefix == n:
                ckpts = list_checkpoints(folder)
                try:
                    vouched = ckpts and ckpts[0][0] == n and read_checkpoint_meta(ckpts[0][1])["extra"].get(
                        "rows_hash") == hashes[n]
                except ValueError:
                    vouched = False
                if not ckpts or (vouched and export.is_dir()):
                    return None  # complete, the last checkpoint (if any) vouches for every row, adapter exported
        elif all(i in stored for i in range(n)):
            return None
        return {"method": method, "dataset": dataset, "problems": problems, "order": order, "path": path,
                "folder": folder if online else None, "stored": stored, "hashes": hashes,
                "export": export if online else None}

    def _start_unit(self, unit: dict, lm) -> tuple[list[int], str | None]:
        """Restore a prepared stream's state into `lm`: the indices to compute and the rows hash
        they follow."""
        n = len(unit["problems"])
        if unit["folder"] is not None:
            start = self._restore(lm, unit["folder"], unit["hashes"])
            return list(range(start, n)), unit["hashes"][start]
        return [i for i in range(n) if i not in unit["stored"]], None

    def run_unit(self, method: str, dataset: str, shard: str = "") -> None:
        from zs_llm.model import ZeroSiamLM

        unit = self._prepare_unit(method, dataset, shard)
        if unit is None:
            return
        model, tok = self.load_model()
        lm = ZeroSiamLM(model, tok, self.adapt_configs[method])
        try:
            todo, rows_hash = self._start_unit(unit, lm)
            self._stream(lm, method, dataset, unit["problems"], todo, unit["stored"], unit["path"], unit["folder"],
                         unit["order"], rows_hash)
            if unit["export"] is not None:
                self._export(lm, unit["export"])
        finally:
            self.model = lm.unwrap()

    def _export(self, lm, folder: Path) -> None:
        """The final adapted state of a finished online stream, as a folder that
        `ZeroSiamLM.from_pretrained` and `peft.PeftModel.from_pretrained` load; written whole or
        not at all."""
        from zs_llm.checkpoint import atomic_folder

        remove_stale_temporaries(folder.parent)
        with atomic_folder(folder) as tmp:
            lm.save_pretrained(tmp)

    # --- pooled streams -------------------------------------------------------------------
    def stream_batch(self) -> int:
        """Streams pooled per round: the run's `stream_batch`, or 8 on a GPU and 4 on a CPU."""
        if self.cfg.stream_batch is not None:
            return self.cfg.stream_batch
        import torch

        device = self.cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        return 8 if device.startswith("cuda") else 4

    def _poolable(self, method: str) -> bool:
        """Streams that run one problem at a time (adapting, SLOT, episodic) pool; methods that
        only generate keep their own batches."""
        from zs_llm.methods import METHODS

        return self.cfg.backend == "hf" and not METHODS[self.adapt_configs[method].method].batchable

    def run_pool(self, units: list[tuple[str, str, str]]) -> None:
        """Run streams `units` ((method, dataset, shard)) as a pool of up to `stream_batch()`
        streams on one model (`zs_llm.Streams`; `zs_llm.adapt.adapt_round`, the loop every
        adapting stream goes through): each round answers the next problem of every live
        stream in one batch; a finished stream leaves and the next waiting one enters. Each
        stream keeps its own rows file, checkpoints and resume, as `run_unit` does."""
        from collections import deque

        from zs_llm.adapt import adapt_round
        from zs_llm.api import Streams
        from zs_llm.model import ZeroSiamLM

        model, tok = self.load_model()
        host = ZeroSiamLM(model, tok, AdaptConfig(method="noadapt"), check=False)
        host.check_identity()
        streams = Streams(host)
        waiting, live = deque(units), []
        try:
            while waiting or live:
                while waiting and len(live) < self.stream_batch():
                    method, dataset, shard = waiting.popleft()
                    unit = self._prepare_unit(method, dataset, shard)
                    if unit is None:
                        continue
                    lm = streams.stream(f"{method}|{dataset}{shard}", self.adapt_configs[method])
                    todo, rows_hash = self._start_unit(unit, lm)
                    w = _StreamWriter(self, lm, method, dataset, unit["problems"], todo, unit["stored"],
                                      unit["path"], unit["folder"], unit["order"], rows_hash)
                    w.export = unit["export"]
                    if w.done:
                        w.close()
                        self._finish_pooled(streams, w)
                    else:
                        live.append(w)
                if not live:
                    break
                items, asked = [], []
                for w in live:
                    i = w.todo[0]
                    if w.ckpt is None:  # sampling seeds follow the problem, not the resume point or the rank
                        w.lm.problems_seen = self._position(w.path, i)
                    p = w.problems[i]
                    messages = build_messages(p.question, self.cfg.prompt_style, template=self.cfg.prompt_template)
                    items.append((w.lm, messages, p.id))
                    asked.append((i, p, messages, w.lm.problems_seen))
                results = adapt_round(items)
                for w, (i, p, messages, seen), res in zip(live, asked, results):
                    solved = self._solved(w.lm, res, messages, seen)
                    w.emit([self._row(w.lm, w.method, w.dataset, p, messages, solved, i, w.order)])
                for w in [w for w in live if w.done]:
                    w.close()
                    self._finish_pooled(streams, w)
                live = [w for w in live if not w.done]
        finally:
            for w in live:
                w.close()
            self.model = host.unwrap()

    def _finish_pooled(self, streams, w) -> None:
        """A pooled stream is done: export its adapted state (online streams), then free its slot."""
        if w.export is not None:
            self._export(w.lm, w.export)
        streams.remove(w.lm)

    def _stream(self, lm, method, dataset, problems, todo, stored, path, ckpt, order, rows_hash) -> None:
        """Compute the rows `todo` (indices). Online (`ckpt` set): `todo` runs to the end of the
        stream from the restored state (see `_StreamWriter`). Other streams compute whole
        batches of the current batch grid and write their missing rows."""
        n = len(problems)
        w = _StreamWriter(self, lm, method, dataset, problems, todo, stored, path, ckpt, order, rows_hash)
        batch = self.cfg.batch_size if (lm.method.batchable and self.cfg.n_samples == 1) else 1
        if ckpt is None:  # whole batches of the grid, so that a batch's padding (and numerics) never change
            starts = sorted({i - i % batch for i in todo})
            chunks = [list(range(s, min(s + batch, n))) for s in starts]
        else:
            chunks = [[i] for i in todo]
        # Without a checkpoint to keep in step with the rows, a batch is graded (in the grading
        # worker) while the next one generates; its rows are written when that finishes.
        pipelined = ckpt is None
        pool = ThreadPoolExecutor(max_workers=1) if pipelined else None
        pending = None  # the future of the previous batch's rows, while they are graded

        def collect():  # write the rows of the batch being graded, if any
            nonlocal pending
            done, pending = pending, None
            if done is not None:
                w.emit(done.result())

        try:
            for idx in chunks:
                chunk = [problems[i] for i in idx]
                if ckpt is None:  # sampling seeds follow the problem, not the resume point or the rank
                    lm.problems_seen = self._position(path, idx[0])
                messages = [build_messages(p.question, self.cfg.prompt_style, template=self.cfg.prompt_template)
                            for p in chunk]
                results = self._solve(lm, chunk, messages)
                args = (lm, method, dataset, chunk, messages, results, idx[0], order)
                if not pipelined:
                    w.emit(self._rows(*args))
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
            w.close()

    def _rows(self, lm, method, dataset, problems, messages, results, first, order) -> list[dict]:
        return [self._row(lm, method, dataset, p, m, r, first + i, order)
                for i, (p, m, r) in enumerate(zip(problems, messages, results))]

    def _solve(self, lm, problems, messages) -> list[dict]:
        """Answer a batch of problems; returns per problem {draft, responses, steps, ...}."""
        first = lm.problems_seen  # the position the problems' sampling seeds follow
        if self.cfg.backend == "vllm":
            from .backends import VLLMBackend

            if not hasattr(self, "_vllm"):
                self._vllm = VLLMBackend(self.cfg.model, self.cfg.dtype, lm.tokenizer)
            outs = self._vllm.generate([lm_render(lm, m) for m in messages], lm.zs_config, self.cfg.n_samples,
                                       first=first)
            return [{"draft": None, "responses": o, "steps": [], "timings": {}, "events": [], "method_stats": {},
                     **self._seeds(lm, first + j)} for j, o in enumerate(outs)]
        if len(problems) > 1:
            t = time.perf_counter()
            texts = lm.generate_texts(messages, batch_size=len(problems))
            dt = (time.perf_counter() - t) / len(problems)
            return [{"draft": None, "responses": [x], "steps": [], "timings": {"total_s": dt}, "events": [],
                     "method_stats": {}} for x in texts]
        from zs_llm.adapt import adapt_round

        return [self._solved(lm, adapt_round([(lm, messages[0], problems[0].id)])[0], messages[0], first)]

    def _seeds(self, lm, problem: int) -> dict:
        """{"seeds": each sample's sampling seed} of a sampled problem answered n_samples times, else {}."""
        from zs_llm.model import sample_seed

        c = lm.zs_config
        if self.cfg.n_samples == 1 or c.temperature == 0:
            return {}
        return {"seeds": [sample_seed(c.seed, problem, k) for k in range(self.cfg.n_samples)]}

    def _solved(self, lm, res, messages, problem: int) -> dict:
        """An `AdaptResult` as `_row` reads it, with the extra samples of n_samples > 1: drawn
        after the problem's update, each from its own seed (`problem`: the `problems_seen` the
        answer was drafted at)."""
        responses = [res.answer]
        seeds = self._seeds(lm, problem)
        ids = lm.encode(messages) if self.cfg.n_samples > 1 else None
        for k in range(1, self.cfg.n_samples):
            responses.append(lm.decode(lm.generate_ids(ids, seed=seeds["seeds"][k] if seeds else None)[0]))
        d = res.to_dict()
        return {"draft": d["draft"], "responses": responses, "steps": d["steps"], "timings": d["timings"],
                "events": d["events"], "method_stats": d["method_stats"], **seeds,
                "tokens": {"prompt": d["prompt_tokens"], "draft": d["draft_tokens"], "answer": d["answer_tokens"]}}

    def _row(self, lm, method, dataset, p, messages, res, index, order) -> dict:
        responses = res["responses"]
        graded = [check(r, p.gold) for r in responses]
        corrects = [g.correct for g in graded]
        extracted = graded[0].pred  # the answer the grader compared with the gold
        row = {
            "id": p.id, "index": index, "dataset": dataset, "method": method, "prompt": lm_render(lm, messages),
            "draft": res["draft"], "response": responses[0], "extracted": extracted,
            "answer_source": graded[0].source, "gold": p.gold, "correct": corrects[0], "steps": res["steps"], "method_stats": res["method_stats"],
            "timings": res["timings"], "events": res["events"], "tokens": res.get("tokens", {}),
            "config": lm.zs_config.to_dict(), "config_hash": lm.zs_config.hash(), "order": order,
        }
        if len(responses) > 1:
            row["responses"], row["corrects"] = responses, corrects
        if res.get("seeds"):  # sampled: each sample's seed, and the answer the grader read in each (maj@k)
            row["sample_seeds"], row["extracteds"] = res["seeds"], [g.pred for g in graded]
        return row


class _StreamWriter:
    """Writes one stream's rows as they come, in any order, and keeps its checkpoints in step.

    Online (`ckpt` set): `todo` runs to the end of the stream from the restored state; a row
    recomputed from a checkpoint that is also stored must equal it (the stored line is kept),
    otherwise it and the stored rows after it go to quarantine/ and are written again."""

    def __init__(self, runner, lm, method, dataset, problems, todo, stored, path, ckpt, order, rows_hash):
        from tqdm.auto import tqdm

        self.runner, self.lm, self.method, self.dataset = runner, lm, method, dataset
        self.problems, self.todo, self.path, self.ckpt, self.order = problems, list(todo), path, ckpt, order
        self.lines = {i: line for i, (_row, line) in stored.items()}
        self.verify = {i: stored[i] for i in todo if i in stored}
        final = {i: row for i, (row, _line) in stored.items() if i not in self.verify}
        self.n_correct = sum(1 for r in final.values() if r.get("correct"))
        self.n_graded = sum(1 for r in final.values() if r.get("correct") is not None)
        n = len(problems)
        self.bar = tqdm(total=n, initial=n - len(todo), desc=f"{method} | {dataset}", unit="prob",
                        disable=not runner.progress, dynamic_ncols=True)
        self.t_start, self.done_here = time.perf_counter(), 0
        self.hash, self.sorted, self.appender = rows_hash, True, RowsAppender(path)
        self.wanted = set(todo)

    @property
    def done(self) -> bool:
        return not self.todo

    def diverged(self, i: int) -> None:
        out, path = self.runner.out, self.path
        bad = sorted(k for k in self.verify if k >= i)
        q = quarantine(out, path, [(None, self.verify.pop(k)[1], "recomputed from the checkpoint before it, "
                                    "the row came out different" if k == i else
                                    "follows a row that came out different when recomputed") for k in bad])
        _log(f"WARNING {path}: row {i} recomputed from the checkpoint differs from the stored one (a "
             f"nondeterministic run, an edited file, or a pool of other streams rounding differently); the stored "
             f"rows {bad[0]}..{bad[-1]} are kept in {q} and computed again")
        for k in bad:
            self.lines.pop(k, None)
        self.appender.close()
        write_lines(path, [self.lines[k] for k in sorted(self.lines)])
        self.appender = RowsAppender(path)

    def emit(self, new_rows) -> None:
        from zs_llm.checkpoint import save_checkpoint

        n = len(self.problems)
        for row in new_rows:
            i = row["index"]
            if i not in self.wanted:
                continue
            if i in self.todo:
                self.todo.remove(i)
            line = row_line(row)
            if i in self.verify:
                if result_signature(self.verify[i][0]) == result_signature(row):
                    row, line = self.verify.pop(i)  # the stored row stays as it was written
                else:
                    self.diverged(i)
            if i not in self.lines or self.lines[i] != line:
                if self.lines and i < max(self.lines):
                    self.sorted = False
                self.appender.append(line)
                self.lines[i] = line
            if self.ckpt is not None:
                self.hash = chain_hash(self.hash, line)
                done = i + 1
                if done % self.runner.cfg.checkpoint_every == 0 or done == n:
                    lm = self.lm
                    save_checkpoint(lm, self.ckpt / f"{done:08d}", {
                        "rows_done": done, "rows_hash": self.hash,
                        "guard": lm.guard.state_dict() if lm.guard else None})
                    prune_checkpoints(self.ckpt)
            if row["correct"] is not None:
                self.n_graded += 1
                self.n_correct += int(row["correct"])
            self.done_here += 1
            rate = self.done_here / max(1e-9, time.perf_counter() - self.t_start) * 60
            self.bar.update(1)
            self.bar.set_postfix(acc=f"{self.n_correct / max(1, self.n_graded):.1%}", ppm=f"{rate:.1f}")

    def close(self) -> None:
        self.appender.close()
        if not self.sorted:
            write_lines(self.path, [self.lines[k] for k in sorted(self.lines)])
        self.bar.close()


def lm_render(lm, messages) -> str:
    from zs_llm.model import render_prompt

    return render_prompt(lm.tokenizer, messages)


def _adapts(ac: AdaptConfig) -> bool:
    from zs_llm.methods import METHODS

    m = METHODS[ac.method]
    return bool(m.trains) and m.loop_update


def _log(msg: str) -> None:
    print(f"[eval] {msg}", file=sys.stderr, flush=True)

