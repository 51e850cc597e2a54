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

This module holds the run's configuration (`RunConfig`) and the `Runner`, put together from
its parts by concern: the folder and its record (`eval.run_folder`), planning the streams
(`eval.planning`), running them (`eval.streaming`) and writing their rows, checkpoints and
adapters (`eval.writer`). Every name those define stays importable from here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zs_llm.config import check_fields, check_overrides
from zs_llm.settings import MAX_BATCH, SEED_MAX

from .datasets import (
    SUBSET_SYNTAX,
    check_limit,
    parse_subsets,
)
from .planning import StreamPlanning
from .prompting import PROMPT_STYLES
from .resolved import ResolvedMethod, _adapts, method_label, parse_method_spec, resolve_methods
from .rows import (
    RunLock,
    stream_path,
)
from .run_folder import (
    FINGERPRINTED,
    KEEP_EVERY,
    PATH_FIELDS,
    RESULT_FREE_FIELDS,
    RUN_SUBFOLDERS,
    SET_FIELDS,
    FolderChecks,
    _log,
    environment_summary,
    has_results,
    list_checkpoints,
    method_overrides,
    normalised_config,
    prune_checkpoints,
    read_run_json,
    remove_run_outputs,
    remove_stale_temporaries,
    run_output_names,
    run_writes,
    without_later_defaults,
)
from .streaming import StreamRunning, lm_render
from .userdata import DatasetChoices
from .userdata import register as register_user_data
from .writer import _StreamWriter, export_adapter, result_signature


@dataclass
class RunConfig:
    """Everything that defines a harness run (the run folder stores it and checks resumes)."""

    model: str = field(default="smollm2-135m-instruct", metadata={"help": "Hub id, local folder, .gguf path, or "
                                                                 "smollm2-135m-instruct (the embedded default)."})
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file name inside --model's folder."})
    revision: str | None = field(default=None, metadata={
        "help": "The model's hub revision (a branch, tag or commit), given to every from_pretrained of the model and "
                "its tokenizer (default: the hub's main)."})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Let from_pretrained run the code a model repository ships (architectures transformers lacks); "
                "given to every from_pretrained of the model and its tokenizer."})
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16, float16 or auto.", "choices": (
        "float32", "bfloat16", "float16", "auto", "fp32", "bf16", "fp16")})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: cuda if present)."})
    methods: list[str] = field(default_factory=lambda: ["noadapt", "tent", "zerosiam"], metadata={
        "help": "Method specs, comma- or space-separated: a registered name, optionally with add-ons (+clip, +guard) "
                "and its own overrides as name:key=value:key=value (e.g. zerosiam:alpha=0)."})
    datasets: list[str] = field(default_factory=lambda: ["arith"], metadata={
        "help": "Dataset names, comma- or space-separated; or your own data (eval/userdata.py): a .jsonl/.json/.csv/"
                ".parquet file, hub:ORG/NAME:SPLIT, a task file (.yaml), task:NAME (of --include_path), NAME=any of "
                "these.",
        "choices": DatasetChoices()})
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
    fields: list[str] = field(default_factory=list, metadata={
        "help": "Columns of your own data files and hub sets, comma-separated FIELD=COLUMN for the fields problem, "
                "answer, id and solution, e.g. problem=question,answer=final (default: the usual column names).",
        "empty_ok": True})
    include_path: str | None = field(default=None, metadata={
        "help": "Folder of task files (.yaml: task, path or hub+split, fields); --datasets task:NAME runs one."})
    prompt_style: str = field(default="boxed", metadata={"help": "Prompt style (eval.prompting.PROMPT_STYLES).",
                                                         "choices": PROMPT_STYLES})
    prompt_template: str | None = field(default=None, metadata={
        "help": "File holding a published prompt style's template, read instead of its source (package or hub)."})
    chat_template: str = field(default="auto", metadata={
        "help": "How prompts become text: auto (the tokenizer's own chat template; a model without one, such as a "
                "base model, gets plain 'role: content' lines, and the report says so), none (those plain lines "
                "always), or a Jinja chat template FILE (as transformers' tokenizer.chat_template). run.json records "
                "which was used, and a FILE's sha256."})
    system_prompt: str | None = field(default=None, metadata={
        "help": "A system message before every problem's prompt (a prompt style with its own system turn takes "
                "none)."})
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
    seed: int = field(default=0, metadata={
        "help": "Seeds everything: torch, numpy and random when the run starts, the synthetic sets (arith) and seeded "
                "subsets, and every method's seed (sampling, LoRA's initialisation), unless --set seed=N gives the "
                "methods their own.", "min": 0, "max": SEED_MAX})
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
        self._names = register_user_data(self.datasets, self.fields, self.include_path)  # own data, by name
        # every override named and its value held as its field holds it (1 -> 1.0 for a float), so the
        # hash of a config is the same before and after a run validates it
        check_overrides(self.adapt)
        if self.protocol != "paper":
            raise ValueError(f"protocol must be 'paper' (the only one), got {self.protocol!r}; add the guard or "
                             "clipping to a method by name instead (tent+guard, zerosiam+clip)")
        subsets = parse_subsets(self.subset)  # syntax and set names; ids are checked when the run starts
        self.subset = [f"{name}={sub.spec}" for name, sub in subsets.items()]
        stray = sorted(set(subsets) - set(self.dataset_names()))
        if stray:
            raise ValueError(f"subset given for {stray}, not among datasets {self.dataset_names()}; add them to "
                             "datasets or drop their subsets")
        for d in self.dataset_names():  # before anything is built: a generated stream is as long as the limit
            check_limit(d, self.limit, d in subsets)
        self.resolved_methods()  # each method spec parsed, with the overrides, before any model loads

    def resolved_methods(self) -> list[ResolvedMethod]:
        """Each method spec parsed once into its resolved settings, in order (`eval.resolved`);
        parsed again only if `methods` or `adapt` changed since."""
        key = json.dumps([self.methods, self.adapt, self.seed], sort_keys=True, default=repr)
        if self.__dict__.get("_resolved_key") != key:
            self._resolved = resolve_methods(self.methods, method_overrides(self.to_dict()))
            self._resolved_key = key
        return self._resolved

    def dataset_names(self) -> list[str]:
        """The sets' names (your own data's by its name, not its path), as rows and reports name them."""
        return list(self._names)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        # fields that change results (batch sizes, checkpoint cadence and the device do not)
        d = without_later_defaults({k: v for k, v in self.to_dict().items() if k not in RESULT_FREE_FIELDS})
        if self.seed and "seed" not in self.adapt:
            d["methods_seed"] = self.seed  # the methods take the run's seed (before, they kept 0): a new run
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


class Runner(FolderChecks, StreamPlanning, StreamRunning):
    """Runs a `RunConfig` into an output folder; `rank`/`world` split the work across processes.

    The folder is locked while a run writes to it (`eval.rows.RunLock`). Its rows are the truth:
    a resume reads every valid row, quarantines the lines that are not rows, and continues an
    adapting stream from the newest checkpoint whose recorded rows hash matches the rows on
    disk, replaying (and checking against the stored rows) from there."""

    def __init__(self, cfg: RunConfig, out: str | os.PathLike, rank: int = 0, world: int = 1, progress: bool = True,
                 overwrite: bool = False, report_to: str = "none", draft_lookup: int = 0):
        from .tracking import check_available

        self.cfg, self.out, self.rank, self.world, self.progress = cfg, Path(out), rank, world, progress
        check_available(report_to)  # before anything: a tracker whose package is missing stops here
        self.report_to, self.tracker = report_to, None
        self.draft_lookup = draft_lookup  # ZeroSiamLM.draft_lookup of every stream (eval.options.Launch)
        self.lock = RunLock(self.out, rank, world)
        self.validate(overwrite)
        self.model = self.tokenizer = None


# the names the runner's parts define, importable from eval.runner as before the split
__all__ = [
    "FINGERPRINTED", "KEEP_EVERY", "PATH_FIELDS", "RESULT_FREE_FIELDS", "RUN_SUBFOLDERS", "SET_FIELDS",
    "FolderChecks", "ResolvedMethod", "RunConfig", "Runner", "StreamPlanning", "StreamRunning", "_StreamWriter", "_adapts", "_log",
    "environment_summary", "export_adapter", "method_overrides", "without_later_defaults", "has_results", "list_checkpoints", "lm_render", "method_label",
    "normalised_config", "parse_method_spec", "prune_checkpoints", "read_run_json", "remove_run_outputs",
    "remove_stale_temporaries", "resolve_methods", "result_signature", "run_output_names", "run_writes", "stream_path",
]
