"""A run folder: what a run writes there (and --overwrite removes), its run.json record, the
check that a folder holds this configuration's results, and its checkpoints' layout."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from zs_llm.checkpoint import atomic_write_text
from zs_llm.config import AdaptConfig

from .datasets import (
    DATASETS,
    parse_subsets,
    source_record,
    subset_record,
)
from .identity import check_loaded, check_resume, refusal, run_identity
from .prompting import chat_template_record, prompt_info
from .resolved import method_label
from .rows import (
    make_run_folder,
)

#: RunConfig fields that do not change a run's results: left out of its hash
RESULT_FREE_FIELDS = ("batch_size", "stream_batch", "checkpoint_every", "device", "trust_remote_code")
#: RunConfig fields added after run folders existed, with their defaults: a setting at its default
#: is left out of the hash, so folders from before it keep theirs
LATER_DEFAULTS = {"subset": [], "source": "local", "revision": None, "chat_template": "auto", "system_prompt": None,
                  "fields": [], "include_path": None}


def without_later_defaults(d: dict) -> dict:
    """`d` (RunConfig settings) without the `LATER_DEFAULTS` fields that hold their default."""
    return {k: v for k, v in d.items() if k not in LATER_DEFAULTS or v != LATER_DEFAULTS[k]}


def method_overrides(config: dict) -> dict:
    """The overrides every method of a run gets (RunConfig settings `config`): the run's seed as the
    methods' seed, then its `adapt` settings (`--set seed=N` among them)."""
    return {"seed": config.get("seed", 0), **(config.get("adapt") or {})}


#: what a run writes into its folder, by subfolder ("": the folder itself): all that --overwrite
#: removes; any other file, however named, stays (a regular expression per entry name)
def run_output_names() -> dict[str, str]:
    sets = "|".join(re.escape(d) for d in sorted(DATASETS, key=len, reverse=True))
    stream = rf"[A-Za-z0-9_.+=-]+__(?:{sets})(?:\.shard\d+of\d+)?"  # rows.stream_path without .jsonl
    return {
        "": r"run\.json|summary\.json|report\.md|report\.html|metrics\.json|results\.csv|\.done\.rank\d+|\.overwritten\..+"
            r"|tensorboard|wandb",  # --report_to's files
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
PATH_FIELDS = ("model", "data_dir", "prompt_template", "chat_template", "include_path")
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


def _recorded_methods(config: dict, info: dict) -> dict:
    """The effective settings of a recorded run's methods, by spec: those its run.json `info`
    records (`adapt_configs`, by label) where it has them, as they ran (a run from before `--seed`
    seeded the methods ran them with seed 0), else the spec resolved now."""
    recorded = info.get("adapt_configs") or {}
    out = {}
    for spec in config["methods"]:
        ac = AdaptConfig.from_spec(spec, method_overrides(config))
        out[spec] = recorded.get(method_label(spec, ac)) or ac.to_dict()
    return out


def normalised_config(config: dict, info: dict, current: bool = False, methods: dict | None = None) -> dict:
    """A RunConfig's settings (`config`, as recorded in run.json or `to_dict`) with the spelling that
    changes no result taken out: result-free fields dropped, list settings sorted, local paths
    resolved. A path whose content run.json `info` fingerprints (model files, the data sets, the
    template's sha256) compares as equal: the resume checks that content (`eval.identity`), so an
    identical copy elsewhere resumes and a changed one is refused naming the file. `current`: the
    settings of the run starting now, whose model must be local files too to be checked so;
    `methods`: its methods' resolved settings by spec, when they are at hand (not parsed again)."""
    d = without_later_defaults({k: v for k, v in config.items() if k not in RESULT_FREE_FIELDS})  # as RunConfig.hash
    for k in SET_FIELDS:
        if isinstance(d.get(k), list):
            d[k] = sorted(map(str, d[k]))
    for k in PATH_FIELDS:
        d[k] = _local_path(d.get(k))
    d["dtype"] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(d.get("dtype"), d.get("dtype"))
    try:  # each method's effective settings: a default given explicitly, or 1 for 1.0, is no change
        d["adapt"] = methods if methods is not None else _recorded_methods(d, info)
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


def _log(msg: str) -> None:
    print(f"[eval] {msg}", file=sys.stderr, flush=True)


class FolderChecks:
    """The `Runner`'s checks of its folder and its run.json record (a mixin: `self.cfg`, `self.out`,
    `self.lock`, `self.rank`, `self.world`, `self.resolved` come from `Runner`)."""

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
        from .growing import plan

        blocked = plan(self, old).blocked or [self._config_change(old, meaningful=True)]
        raise FileExistsError(
            f"{out} holds a run with another configuration ({'; '.join(blocked)}; hash {old.get('config_hash')}, "
            f"this one {self.cfg.hash()}): a run grows by a larger --limit, more methods or datasets, but these "
            "settings change what its rows were computed on; choose a new --out, or pass --overwrite to delete its "
            "results")

    def _config_change(self, info: dict, meaningful: bool = False) -> str:
        """The settings that differ from the run a folder's run.json (`info`) records, as `name: old ->
        new`; `meaningful`: only those that differ after `normalised_config` (not in spelling alone)."""
        old = info.get("config")
        if not isinstance(old, dict):
            return "its run.json records no settings"
        new, free = self.cfg.to_dict(), RESULT_FREE_FIELDS
        changed = [k for k in sorted(set(old) | set(new)) if k not in free and old.get(k) != new.get(k)]
        if meaningful:
            a, b = normalised_config(old, info), self._normalised(info)
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
        return old is None or not (self.same_run(old) or self.grows(old))

    def grows(self, old: dict) -> bool:
        """Whether this configuration grows the run run.json's `old` records (`eval.growing`); never
        under --overwrite, which deletes that run's results instead."""
        from .growing import plan

        return not getattr(self, "overwriting", False) and plan(self, old).merged is not None

    def same_run(self, old: dict) -> bool:
        """Whether run.json's `old` record is of this configuration: the same hash, or settings that
        differ only in spelling (`normalised_config`). Old folders keep their recorded hash."""
        if old.get("config_hash") == self.cfg.hash():
            return True
        was = old.get("config")
        return isinstance(was, dict) and normalised_config(was, old) == self._normalised(old)

    def _normalised(self, info: dict) -> dict:
        """This run's settings as `normalised_config` compares them, its methods as resolved."""
        methods = {r.spec: r.record() for r in self.cfg.resolved_methods()}
        return normalised_config(self.cfg.to_dict(), info, current=True, methods=methods)

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
        grow = old is not None and not same and has_results(self.out)  # check_folder let it: it grows
        if same and old.get("config_hash") != self.cfg.hash() and has_results(self.out):
            _log(f"{run_json} records this configuration spelled otherwise ({self._config_change(old)}"
                 "); resuming it, checked against its recorded model, data and template fingerprints")
        recorded = old.get("prompt") if same or grow else None
        if recorded and recorded["sha256"] != prompt["sha256"]:
            raise refusal(self.out, f"another {prompt['style']} template: it was {recorded['origin']} (sha256 "
                                    f"{recorded['sha256'][:12]}), now {prompt['origin']} ({prompt['sha256'][:12]})")
        chat = chat_template_record(self.cfg.chat_template)
        was = old.get("chat_template") if same or grow else None
        if was and was.get("sha256") != chat.get("sha256"):
            raise refusal(self.out, f"the chat template file changed: it was {was.get('path')} (sha256 "
                                    f"{was.get('sha256', '')[:12]}), now {chat.get('path')} ({chat['sha256'][:12]})")
        # before any model loads too: unknown ids or a sample larger than its set stop the run here
        subsets = {name: subset_record(name, sub, self.cfg.data_dir, self.cfg.seed, self.cfg.source)
                   for name, sub in parse_subsets(self.cfg.subset).items()}
        old_subsets = (old or {}).get("subsets") or {}
        for name, rec in subsets.items():
            if name in old_subsets and old_subsets[name]["ids_sha256"] != rec["ids_sha256"]:
                raise FileExistsError(f"{self.out} was run on other {name} problems: subset {rec['spec']} selected "
                                      f"{old_subsets[name]['n']} ids (sha256 {old_subsets[name]['ids_sha256'][:12]}), "
                                      f"now {rec['n']} ({rec['ids_sha256'][:12]}); use a new --out")
        data = {d: source_record(d, self.cfg.source, self.cfg.data_dir, self.cfg.seed)
                for d in self.cfg.dataset_names()}
        ident = run_identity(self.cfg, data)  # model files and data: a resume on others is refused here
        if same:
            updated = check_resume(self.out, old, data, ident, has_results(self.out))
            if updated is not None and self.rank == 0:
                atomic_write_text(run_json, json.dumps(updated, indent=2))
        if grow:
            from .growing import check_grown_data

            check_grown_data(self.out, old, data, ident, self.cfg)
        if self.rank == 0 and not same:
            if old is not None and not grow:
                _log(f"{run_json} records a run that wrote no rows (hash {old.get('config_hash')}): replaced")
            info = {"config": self.cfg.to_dict(), "config_hash": self.cfg.hash(), "prompt": prompt,
                    "chat_template": chat, "subsets": subsets,
                    "data": data, "identity": ident,
                    "adapt_configs": {m: r.record() for m, r in self.resolved.items()},
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "world_size": self.world,
                    "split": "online adapting streams: whole (method, dataset) streams per rank; other units: "
                             "problems split by index across ranks", **environment_summary()}
            if grow:
                from .growing import grown_record, plan

                info = grown_record(old, info, plan(self, old).added)
            atomic_write_text(run_json, json.dumps(info, indent=2))

    def _check_loaded(self) -> None:
        """Before the loaded model writes a row: its revision (no local files) and the prompt as its
        chat template renders it match run.json's record, or are recorded there."""
        run_json = self.out / "run.json"
        if not self.lock.held or not run_json.exists():
            return
        info = read_run_json(run_json)
        updated = check_loaded(self.out, info, self.cfg, self.model, self.tokenizer, has_results(self.out))
        fmt = getattr(self, "prompt_format", None)
        if fmt is not None and (updated or info).get("prompt_format") != fmt:
            updated = {**(updated or info), "prompt_format": fmt}  # how prompts became text: the report reads it
        if updated is not None and self.rank == 0:
            atomic_write_text(run_json, json.dumps(updated, indent=2))
