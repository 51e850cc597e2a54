"""Planning a run's streams before any row is computed: the method specs and settings checked,
the (method, dataset) units and each rank's share of them, a stream's problems, its stored rows
and the checkpoint it resumes from, and the model loaded and checked against every prompt."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from zs_llm.config import AdaptConfig

from .datasets import (
    DATASETS,
    dataset_fingerprint,
    load_problems,
    parse_subsets,
    resolve_data_dir,
    source_record,
)
from .prompting import PLAIN_PROMPT, PROMPT_STYLES, apply_chat_template, build_messages, chat_template_record
from .resolved import by_label
from .rows import (
    check_not_nested,
    prefix_hashes,
    quarantine,
    safe_name,
    scan_rows,
    stream_path,
    write_lines,
)
from .run_folder import _log, list_checkpoints, remove_run_outputs, remove_stale_temporaries


@dataclass
class PlannedStream:
    """One (method, dataset) stream ready to run, as `StreamPlanning._prepare_unit` finds it."""

    method: str  # its label
    dataset: str
    problems: list  # this rank's share of the set
    order: str  # the set's fingerprint, recorded in every row
    path: Path  # its rows file
    stored: dict[int, tuple[dict, str]]  # the valid stored rows (row, line) by index
    folder: Path | None = None  # its checkpoints (online adapting streams only)
    export: Path | None = None  # its final adapter (online adapting streams only)
    hashes: list[str] | None = None  # rows hash of the first n stored rows in order (online only)


class StreamPlanning:
    """The `Runner`'s planning of streams (a mixin: see `eval.runner.Runner`)."""

    # --- checks before anything heavy ---------------------------------------------------
    def validate(self, overwrite: bool = False) -> None:
        from .growing import grown_config

        self.overwriting = overwrite
        self.cfg = cfg = grown_config(self, self.out, overwrite)  # a run folder this grows: the merged settings
        self.resolved = by_label(cfg.resolved_methods())  # parsed once, when cfg was made
        self.adapt_configs = {label: r.config for label, r in self.resolved.items()}
        for d in cfg.dataset_names():
            DATASETS[d]  # KeyError listing the known ones
        if cfg.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"unknown prompt style {cfg.prompt_style!r}; choose one of {sorted(PROMPT_STYLES)}")
        sets = [DATASETS[d] for d in cfg.dataset_names()]
        if any((s.generate is None and s.load is None and cfg.source == "local") or s.reads for s in sets):
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
        from zs_llm.loading import check_device, named_model

        check_device(cfg.device)
        chat_template_record(cfg.chat_template)  # a missing template file stops the run here
        m = cfg.model
        looks_local = m.startswith((".", "/", "~")) or m.endswith(".gguf")
        if looks_local and not Path(m).expanduser().exists():
            raise FileNotFoundError(f"model {m!r} does not exist; give a hub id, a local folder or a .gguf file")
        if cfg.gguf_file and named_model(m) is None and Path(m).is_dir() \
                and not (Path(m) / cfg.gguf_file).exists():
            raise FileNotFoundError(f"GGUF file {cfg.gguf_file} is not in {m}")
        check_not_nested(self.out)
        if overwrite and self.rank == 0 and self.out.is_dir() and self._folder_conflict():
            with self._locked(keep=True):
                if self._folder_conflict():  # again under the lock
                    remove_run_outputs(self.out)
        self.check_folder()

    # --- the run ------------------------------------------------------------------------
    def units(self) -> list[tuple[str, str]]:
        return [(m, d) for m in self.adapt_configs for d in self.cfg.dataset_names()]

    def assignment(self, method: str, dataset: str, index: int) -> tuple[bool, str]:
        """Which part of a unit this rank does. Online adapting streams are sequential: a rank
        takes whole streams (round-robin). Other units are split by problem index."""
        online = self.resolved[method].online
        if self.world == 1:
            return True, ""
        if online:
            return index % self.world == self.rank, ""
        return True, self._shard_suffix()

    def _shard_suffix(self) -> str:
        return f".shard{self.rank}of{self.world}"

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
                                                    device=device, **self.hub_kwargs())
            _log(f"loaded in {time.perf_counter() - t:.1f}s")
            try:
                self.prompt_format = apply_chat_template(self.tokenizer, self.cfg.chat_template, self.cfg.system_prompt)
                if self.prompt_format["plain"] and self.cfg.chat_template == "auto":
                    _log(f"{self.cfg.model} has no chat template: prompts are {PLAIN_PROMPT} (the report says so; "
                         "--chat_template FILE gives one)")
                self._check_loaded()
                self._check_prompts_fit()
            except BaseException:
                self.model = self.tokenizer = None
                raise
        return self.model, self.tokenizer

    def hub_kwargs(self) -> dict:
        """--revision and --trust_remote_code, as every from_pretrained of the model takes them."""
        return {"revision": self.cfg.revision, "trust_remote_code": self.cfg.trust_remote_code}

    def messages(self, question: str) -> list[dict]:
        """A problem's chat messages: the prompt style's (its template file, if given) after the
        run's system prompt."""
        c = self.cfg
        return build_messages(question, c.prompt_style, system=c.system_prompt, template=c.prompt_template)

    def _check_prompts_fit(self) -> None:
        """Every problem's prompt fits the loaded model's context, checked before any stream
        starts: a question too long is refused by its id and set here, not met mid-run."""
        from zs_llm.model import context_length, prompt_ids

        limit = context_length(self.model.config)
        if limit is None:
            return
        c = self.cfg
        for dataset in c.dataset_names():
            for p in self.problems(dataset):
                messages = self.messages(p.question)
                n = prompt_ids(self.tokenizer, messages).shape[1]
                if n >= limit:
                    rec = source_record(dataset, c.source, c.data_dir, c.seed)
                    where = rec.get("path") or rec["source"]
                    raise ValueError(f"dataset {dataset!r} ({where}) problem {p.id!r}: its prompt is {n} tokens, the "
                                     f"model's context is {limit}; shorten that question, or leave it out with "
                                     "--subset (a file of the ids to run)")

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

    def _prepare_unit(self, method: str, dataset: str, shard: str = "") -> PlannedStream | None:
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
        online = self.resolved[method].online
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
        if not online:
            return PlannedStream(method, dataset, problems, order, path, stored)
        return PlannedStream(method, dataset, problems, order, path, stored, folder, export, hashes)

    def _start_unit(self, unit: PlannedStream, lm) -> tuple[list[int], str | None]:
        """Restore a prepared stream's state into `lm`: the indices to compute and the rows hash
        they follow."""
        n = len(unit.problems)
        if unit.folder is not None:
            start = self._restore(lm, unit.folder, unit.hashes)
            return list(range(start, n)), unit.hashes[start]
        return [i for i in range(n) if i not in unit.stored], None

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
