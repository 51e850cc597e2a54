"""Writing a stream's outputs: its rows as they come (checked against stored ones when a stream is
replayed from a checkpoint), its checkpoints in step with them, and its final adapter."""

from __future__ import annotations

import time
from pathlib import Path

from .rows import (
    RowsAppender,
    chain_hash,
    quarantine,
    row_line,
    write_lines,
)
from .run_folder import _log, prune_checkpoints, remove_stale_temporaries


def result_signature(row: dict) -> str:
    """A row without its wall-clock fields and its set's fingerprint (`order`: a run grown to a
    larger --limit continues rows written under the shorter list), as JSON: what an exact rerun
    must reproduce (NaN included, which a dict comparison would call different from itself)."""
    d = {k: v for k, v in row.items() if k not in ("timings", "order")}
    d["steps"] = [{k: v for k, v in s.items() if k != "time_s"} for s in row.get("steps") or []]
    return row_line(d)


class _StreamWriter:
    """Writes one stream's rows as they come, in any order, and keeps its checkpoints in step.

    `stream`: an `eval.planning.PlannedStream`; `todo`: the indices to compute, `rows_hash`: the
    rows hash they follow. Online (the stream has a checkpoint folder): `todo` runs to the end of
    the stream from the restored state; a row recomputed from a checkpoint that is also stored
    must equal it (the stored line is kept), otherwise it and the stored rows after it go to
    quarantine/ and are written again."""

    def __init__(self, runner, lm, stream, todo: list[int], rows_hash: str | None):
        from tqdm.auto import tqdm

        self.runner, self.lm, self.method, self.dataset = runner, lm, stream.method, stream.dataset
        self.problems, self.todo, self.path, self.order = stream.problems, list(todo), stream.path, stream.order
        self.ckpt, self.export, stored = stream.folder, stream.export, stream.stored
        self.lines = {i: line for i, (_row, line) in stored.items()}
        self.verify = {i: stored[i] for i in todo if i in stored}
        final = {i: row for i, (row, _line) in stored.items() if i not in self.verify}
        self.n_correct = sum(1 for r in final.values() if r.get("correct"))
        self.n_graded = sum(1 for r in final.values() if r.get("correct") is not None)
        n = len(self.problems)
        self.bar = tqdm(total=n, initial=n - len(todo), desc=f"{self.method} | {self.dataset}", unit="prob",
                        disable=not runner.progress, dynamic_ncols=True)
        self.t_start, self.done_here = time.perf_counter(), 0
        self.hash, self.sorted, self.appender = rows_hash, True, RowsAppender(self.path)
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
            if self.runner.tracker is not None:
                from .tracking import problem_values

                acc = self.n_correct / self.n_graded if self.n_graded else None
                self.runner.tracker.log_problem(self.method, self.dataset, self._position(i) + 1,
                                                problem_values(row, acc))
            rate = self.done_here / max(1e-9, time.perf_counter() - self.t_start) * 60
            self.bar.update(1)
            self.bar.set_postfix(acc=f"{self.n_correct / max(1, self.n_graded):.1%}", ppm=f"{rate:.1f}")

    def _position(self, i: int) -> int:
        return self.runner._position(self.path, i)

    def close(self) -> None:
        self.appender.close()
        if not self.sorted:
            write_lines(self.path, [self.lines[k] for k in sorted(self.lines)])
        self.bar.close()
        tracker = self.runner.tracker
        if tracker is not None and not self.todo and self.done_here:  # finished here: its verdict
            import json

            from .tracking import verdict_text

            rows = [json.loads(self.lines[k]) for k in sorted(self.lines)]
            verdict, values = verdict_text(rows, self.runner.resolved[self.method].adapts)
            tracker.log_stream_end(self.method, self.dataset, self._position(max(self.lines)) + 1, verdict, values)


def stream_card(cfg, rows_path: Path, dataset: str) -> dict:
    """What an exported adapter's model card says of its stream: the set and its source, accuracy
    with its Wilson interval and the verdict (`zs_llm.card.model_card`)."""
    from zs_llm.diagnostics import collapse_measures

    from .datasets import source_record
    from .rows import scan_rows
    from .stats import wilson_interval

    rows = sorted(scan_rows(rows_path).rows, key=lambda r: r["index"])
    graded = [r["correct"] for r in rows if r.get("correct") is not None]
    source = source_record(dataset, cfg.source, cfg.data_dir, cfg.seed)
    where = source.get("hub") or (Path(source["path"]).name if source.get("path") else source.get("source"))
    card = {"stream": {"dataset": dataset, "source": f"{source.get('source')}: {where}", "problems": len(rows)}}
    if graded:
        low, high = wilson_interval(sum(graded), len(graded))
        card["accuracy"] = {"correct": sum(graded), "n": len(graded), "acc": sum(graded) / len(graded),
                            "low": low, "high": high}
        measures = collapse_measures(rows)
        card.update(verdict=measures["verdict"], verdict_rule=measures["verdict_rule"])
    return card


def export_adapter(lm, folder: Path, card: dict | None = None) -> None:
    """The final adapted state of a finished online stream, as a folder that
    `ZeroSiamLM.from_pretrained` and `peft.PeftModel.from_pretrained` load, its model card stating
    `card` (`stream_card`); written whole or not at all."""
    from zs_llm.checkpoint import atomic_folder

    remove_stale_temporaries(folder.parent)
    with atomic_folder(folder) as tmp:
        lm.save_pretrained(tmp, card=card)
