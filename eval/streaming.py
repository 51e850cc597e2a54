"""Running a run's streams: one at a time (`run_unit`) or pooled on one model (`run_pool`), each
problem answered (`_solve`) and turned into its row (`_row`), written by `eval.writer`."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from zs_llm.checkpoint import atomic_write_text
from zs_llm.config import AdaptConfig

from .grading import check, default_grader
from .prompting import prompt_info
from .run_folder import remove_stale_temporaries
from .writer import _StreamWriter, export_adapter, stream_card


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators from the run's `--seed` (numpy takes 32 bits)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class StreamRunning:
    """The `Runner`'s running of streams (a mixin: see `eval.runner.Runner`)."""

    def run(self) -> Path:
        from zs_llm.loading import progress_bars

        with progress_bars(self.progress):  # --no_progress: no bar at all, the libraries' loading bars too
            return self._run()

    def _run(self) -> Path:
        t0 = time.time()
        default_grader().start()  # the grading worker warms up while the model loads and generates
        # before the folder is touched: a published prompt whose source is missing stops the run here
        prompt = prompt_info(self.cfg.prompt_style, self.cfg.prompt_template)
        self.messages("?")  # a system prompt beside a style with its own system turn stops it here too
        seed_everything(self.cfg.seed)
        self.lock.acquire()
        try:
            self._write_run_json(prompt)
            from .tracking import open_tracker

            self.tracker = open_tracker(self.report_to, self.out, self.cfg.to_dict(), self.rank, self.world)
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
            if self.tracker is not None:
                self.tracker.close()
                self.tracker = None
            self.lock.release()
        return self.out

    def run_unit(self, method: str, dataset: str, shard: str = "") -> None:
        from zs_llm.model import ZeroSiamLM

        unit = self._prepare_unit(method, dataset, shard)
        if unit is None:
            return
        model, tok = self.load_model()
        lm = ZeroSiamLM(model, tok, self.adapt_configs[method])
        lm.draft_lookup = self.draft_lookup
        try:
            todo, rows_hash = self._start_unit(unit, lm)
            self._stream(lm, unit, todo, rows_hash)
            if unit.export is not None:
                self._export(lm, unit.export, unit.path, unit.dataset)
        finally:
            self.model = lm.unwrap()

    def _export(self, lm, folder: Path, rows_path: Path, dataset: str) -> None:
        export_adapter(lm, folder, stream_card(self.cfg, rows_path, dataset))  # eval.writer

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
                    lm.draft_lookup = self.draft_lookup  # used while it is the only live stream
                    todo, rows_hash = self._start_unit(unit, lm)
                    w = _StreamWriter(self, lm, unit, todo, rows_hash)
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
                    messages = self.messages(p.question)
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
            self._export(w.lm, w.export, w.path, w.dataset)
        streams.remove(w.lm)

    def _stream(self, lm, unit, todo: list[int], rows_hash: str | None) -> None:
        """Compute the rows `todo` (indices). Online (`ckpt` set): `todo` runs to the end of the
        stream from the restored state (see `_StreamWriter`). Other streams compute whole
        batches of the current batch grid and write their missing rows."""
        w = _StreamWriter(self, lm, unit, todo, rows_hash)
        method, dataset, problems, path, ckpt, order = (unit.method, unit.dataset, unit.problems, unit.path,
                                                        unit.folder, unit.order)
        n = len(problems)
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
                messages = [self.messages(p.question)
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
                self._vllm = VLLMBackend(self.cfg.model, self.cfg.dtype, lm.tokenizer, **self.hub_kwargs())
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


def lm_render(lm, messages) -> str:
    from zs_llm.model import render_prompt

    return render_prompt(lm.tokenizer, messages)
