"""The adapting engine behind the server: one online stream per tenant on one model, a bounded
queue, pooled rounds, and a durable checkpoint of every stream after every update.

One worker thread owns the model. Requests wait in one queue in arrival order; each round takes
the oldest waiting request of each stream (at most `max_pool` streams) and runs them as one
`zs_llm.adapt.adapt_round`, the loop the evaluation harness drives, so a stream's problems are
answered and adapted on in the order they arrived and requests of different tenants arriving
together share one batched generation and one backward. After the round each stream that took a
problem is checkpointed (`zs_llm.checkpoint.save_checkpoint`, atomic) before its answer is
released: an answer a client received is always in the state a restart resumes from, and a
request cut off by a crash gets an error, never an answer the state does not hold.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import logging
import math
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..adapt import AdaptResult, adapt_round, eos_ids
from ..api import Streams
from ..checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from ..model import ZeroSiamLM

log = logging.getLogger("zs_llm.serve")

#: a stream id: what a keys file or a request's `user` may name
STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
#: problems of each stream kept for /v1/streams, the page and the verdict (saved with its checkpoint)
HISTORY = 256
#: the server's record of what its state folder was made with
SERVER_RECORD = "server.json"


class ServeError(Exception):
    """An error for the client, as an OpenAI error object with an HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class TokenSink:
    """Watches one request's answer tokens as they are generated: stops at the first end token or
    at `limit`, and hands each new piece of decoded text to `emit` (None: nothing is decoded, the
    sink only records how the answer ended). Text is held back while it ends in a partial UTF-8
    character (the replacement character)."""

    def __init__(self, tokenizer, eos: set[int], limit: int, emit: Callable[[str], None] | None = None):
        self.tokenizer, self.eos, self.limit, self.emit = tokenizer, eos, limit, emit
        self.ids: list[int] = []
        self.sent = ""
        self.done = False
        self.ended_by_eos = False

    def __call__(self, token: int) -> None:
        if self.done:
            return
        if token in self.eos:
            self.done = self.ended_by_eos = True
            return
        self.ids.append(token)
        self.done = len(self.ids) >= self.limit
        if self.emit is not None:
            self.flush(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def flush(self, text: str, final: bool = False) -> None:
        """Send what `text` adds to what was sent (all of it when `final`)."""
        if self.emit is None or (not final and text.endswith("\ufffd")):
            return
        if text.startswith(self.sent) and len(text) > len(self.sent):
            self.emit(text[len(self.sent):])
            self.sent = text


@dataclasses.dataclass
class Job:
    """One request waiting for its stream's turn."""

    stream: str
    prompt: str | list[dict]
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    emit: Callable[[str], None] | None = None  # streamed text pieces (called from the worker thread)
    timeout: float = 600.0
    arrived: float = dataclasses.field(default_factory=time.monotonic)
    future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)

    @property
    def deadline(self) -> float:
        return self.arrived + self.timeout


@dataclasses.dataclass
class Answer:
    """What a request gets back."""

    stream: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    problem: int  # the stream's problem count with this one
    entropy: float | None
    events: list[str]
    queued_s: float
    round_size: int


def lock_state_dir(state_dir: Path):
    """Make `state_dir` and hold its lock for the caller's life (the open file returned): one server
    per folder, since a second would overwrite the first's checkpoints (the OS drops the lock when
    the process dies, kill -9 included)."""
    import fcntl

    state_dir.mkdir(parents=True, exist_ok=True)
    lock_file = open(state_dir / ".lock", "w")  # noqa: SIM115 - held for the engine's life
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock_file.close()
        raise ValueError(f"--state_dir {state_dir} is in use by another server (it holds the folder's "
                         "lock); stop that one or give another --state_dir") from None
    return lock_file


def check_server_record(state_dir: Path, record: dict) -> None:
    """Write `record` (the model and configuration) into a new state folder, or refuse a folder
    whose record names another model or configuration."""
    rec_path = state_dir / SERVER_RECORD
    want = json.loads(json.dumps(record, default=str))  # as JSON holds it, so that a record read back compares equal
    if not rec_path.exists():
        atomic_write_text(rec_path, json.dumps(want, indent=1))
        return
    try:
        have = json.loads(rec_path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{rec_path} is damaged ({e}); move it away to start that state folder afresh") from None
    differs = sorted(k for k in ("model", "config") if have.get(k) != want[k])
    if differs:
        raise ValueError(f"--state_dir {state_dir} holds streams of another {' and '.join(differs)} "
                         f"({have.get('model')!r}, method {have.get('config', {}).get('method')!r}); "
                         "serve it with the same --model/--method/--set, or give a new --state_dir")


def stored_streams(root: Path) -> list[str]:
    """The streams checkpointed under `root` (made if missing), sorted; a kill's leftovers there
    (half-written folders, old ones beside their successor) are removed."""
    root.mkdir(exist_ok=True)
    names = {p.name for p in root.iterdir() if STREAM_ID.fullmatch(p.name)}
    # killed between the two renames of a checkpoint replacement: only the old folder is there
    names |= {m.group(1) for p in root.iterdir() if (m := re.fullmatch(r"\.(.+)\.old-\d+", p.name))
              and STREAM_ID.fullmatch(m.group(1))}
    for p in root.iterdir():
        m = re.fullmatch(r"\.(.+)\.(tmp|old)-\d+", p.name)
        if m and (m.group(2) == "tmp" or (root / m.group(1)).exists()):
            shutil.rmtree(p, ignore_errors=True)
    return sorted(names)


def _finite(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def history_view(hist: list[dict], series: bool = True) -> dict:
    """A stream's recent problems (`hist`, oldest first) as /v1/streams shows them: the last entropy,
    the trends, the verdict and its rule, and (`series`) each problem's measures for the page's plots."""
    from ..diagnostics import collapse_measures, rolling_top_share

    rows = [{"response": h["response"], "extracted": h["extracted"], "answer_source": h["answer_source"],
             "steps": [{"entropy": h["entropy"], "logit_norm_centered": h["logit_norm_centered"],
                        "predictor_dev": h["predictor_dev"], "skipped": h["skipped"]}]} for h in hist]
    m = collapse_measures(rows) if rows else {}
    out = {"entropy": _finite(hist[-1]["entropy"]) if hist else None,
           "entropy_trend": _finite(m.get("entropy_trend")),
           "predictor_drift": _finite(m.get("predictor_dev_final")),
           "predictor_drift_trend": _finite(trend_of([h["predictor_dev"] for h in hist])),
           "verdict": m.get("verdict", "no-data"), "verdict_rule": m.get("verdict_rule", "no problems yet")}
    if series:
        share = rolling_top_share([h["extracted"] for h in hist], 10).tolist() if hist else []
        out["series"] = {"problem": [h["problem"] for h in hist],
                         "entropy": [_finite(h["entropy"]) for h in hist],
                         "logit_norm": [_finite(h["logit_norm_centered"]) for h in hist],
                         "predictor_drift": [_finite(h["predictor_dev"]) for h in hist],
                         "answer_share": [_finite(float(x)) for x in share]}
    return out


class Engine:
    """Streams by name on one `ZeroSiamLM` (`host`), fed from a bounded queue by one worker thread.

    state_dir: every stream's checkpoint lives in `state_dir/streams/<id>` and is loaded back at
    start. max_pool: streams per round. max_queue: requests waiting at most (more: 429).
    max_streams: streams hosted at most. timeout: seconds a request may wait for its round.
    """

    def __init__(self, host: ZeroSiamLM, state_dir: str | Path, model_name: str, max_pool: int = 8,
                 max_queue: int = 64, max_streams: int = 64, timeout: float = 600.0, record: dict | None = None):
        if max_pool < 1 or max_queue < 1 or max_streams < 1 or timeout <= 0:
            raise ValueError("max_pool, max_queue and max_streams must be at least 1 and timeout above 0")
        self.host, self.model_name = host, model_name
        self.streams = Streams(host)
        self.max_pool, self.max_queue, self.max_streams, self.timeout = max_pool, max_queue, max_streams, timeout
        self.state_dir = Path(state_dir)
        self.eos = eos_ids(host)
        self.pending: list[Job] = []
        self.controls: list[tuple[Callable, concurrent.futures.Future]] = []
        self.cond = threading.Condition()
        self.lock = threading.RLock()  # histories: written by the worker, read by the HTTP handlers
        self.history: dict[str, collections.deque] = {}
        self.notes: dict[str, list[str]] = {}  # what happened to a stream outside its problems (restored, reset)
        self.stats = {"rounds": 0, "round_s": collections.deque(maxlen=50), "pool_size": 0, "requests": 0,
                      "loop_s": 0.0, "checkpoint_s": 0.0}
        self._thread: threading.Thread | None = None
        self._stop = False
        self._lock_file = None
        try:
            self._open_state(record or {})
        except BaseException:
            if self._lock_file is not None:
                self._lock_file.close()
            raise

    # --- durable state --------------------------------------------------------------------
    def _open_state(self, record: dict) -> None:
        """Check the folder was made by this model and configuration, then load every stream in it."""
        self._lock_file = lock_state_dir(self.state_dir)
        check_server_record(self.state_dir, {"model": self.model_name, "config": self.host.zs_config.to_dict(),
                                             **record})
        root = self.state_dir / "streams"
        for name in stored_streams(root):
            lm = self._new_stream(name)
            try:
                extra = load_checkpoint(lm, root / name)
            except ValueError as e:
                q = self.state_dir / "quarantine"
                q.mkdir(exist_ok=True)
                dest = q / f"{name}.{time.strftime('%Y%m%dT%H%M%S')}"
                if (root / name).exists():
                    (root / name).rename(dest)
                log.warning("stream %s: checkpoint damaged (%s); moved to %s, the stream starts afresh", name, e, dest)
                self.notes[name].append(f"checkpoint damaged at start ({e}); moved to {dest}, started afresh")
                continue
            if lm.guard is not None and extra.get("guard"):
                lm.guard.load_state_dict(extra["guard"])
            self.history[name].extend(extra.get("history", []))
            self.notes[name].append(f"resumed after problem {lm.problems_seen}")
            log.info("stream %s: resumed after problem %d", name, lm.problems_seen)

    def _new_stream(self, name: str) -> ZeroSiamLM:
        lm = self.streams.stream(name)
        self.history[name] = collections.deque(maxlen=HISTORY)
        self.notes[name] = []
        return lm

    def _rewind(self, name: str) -> None:
        """Put a stream back to its last checkpoint (its initial state when it has none): after a
        failed round, which may have stepped some streams before failing."""
        lm = self.streams.streams[name]
        d = self.state_dir / "streams" / name
        if d.exists():
            extra = load_checkpoint(lm, d)
            if lm.guard is not None and extra.get("guard"):
                lm.guard.load_state_dict(extra["guard"])
        else:
            lm.reset()

    def checkpoint(self, name: str) -> None:
        lm = self.streams.streams[name]
        save_checkpoint(lm, self.state_dir / "streams" / name, {
            "stream": name, "guard": lm.guard.state_dict() if lm.guard is not None else None,
            "history": list(self.history[name])})

    # --- the queue ------------------------------------------------------------------------
    def retry_after(self) -> int:
        """Seconds until a full queue has likely room again: the rounds ahead at the recent round time."""
        rounds = self.stats["round_s"]
        per_round = sum(rounds) / len(rounds) if rounds else 5.0
        return max(1, math.ceil(per_round * (1 + len(self.pending) / self.max_pool)))

    def submit(self, job: Job) -> concurrent.futures.Future:
        """Queue `job`; ServeError 429 (with Retry-After) when the queue is full, 403 when it would
        open a stream past `max_streams`."""
        with self.cond:
            if len(self.pending) >= self.max_queue:
                raise ServeError(429, f"the server's queue is full ({self.max_queue} requests waiting); retry after "
                                 "the time in the Retry-After header", "rate_limit_error", "queue_full",
                                 headers={"Retry-After": str(self.retry_after())})
            known = set(self.streams.streams) | {j.stream for j in self.pending}
            if job.stream not in known and len(known) >= self.max_streams:
                raise ServeError(403, f"this server hosts at most {self.max_streams} streams and all are taken; "
                                 "use an existing tenant or ask the operator to raise --max_streams",
                                 "invalid_request_error", "stream_limit_reached")
            self.pending.append(job)
            self.stats["requests"] += 1
            self.cond.notify()
        return job.future

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run `fn` on the worker thread between rounds (resets, exports): never beside a round."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self.cond:
            self.controls.append((fn, fut))
            self.cond.notify()
        return fut

    def cancel(self, job: Job) -> bool:
        """Take a job that has not started out of the queue (its client left); False once it runs."""
        with self.cond:
            if job in self.pending:
                self.pending.remove(job)
                return True
        return False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="zs-serve-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self.cond:
            self._stop = True
            for job in self.pending:
                job.future.set_exception(ServeError(503, "the server is shutting down; retry when it is back",
                                                    "server_error", "shutting_down"))
            self.pending.clear()
            self.cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def close(self) -> None:
        """Stop the worker and release the state folder (another engine may open it then)."""
        self.stop()
        self._lock_file.close()

    def _take(self) -> tuple[list, list[Job]]:
        """Wait for work; then the control calls and the round's jobs (the oldest waiting job of
        each stream, at most `max_pool` streams). Jobs past their deadline fail here, unrun."""
        with self.cond:
            while not (self.pending or self.controls or self._stop):
                self.cond.wait()
            controls, self.controls = self.controls, []
            now = time.monotonic()
            late = [j for j in self.pending if j.deadline <= now]
            for j in late:
                self.pending.remove(j)
                j.future.set_exception(ServeError(
                    504, f"the request waited {now - j.arrived:.0f} s for its turn, past the server's timeout of "
                    f"{self.timeout:g} s; it was not run (its stream did not adapt on it): retry later",
                    "timeout_error", "timeout"))
            picked: list[Job] = []
            for j in self.pending:
                if len(picked) >= self.max_pool:
                    break
                if all(p.stream != j.stream for p in picked):
                    picked.append(j)
            for j in picked:
                self.pending.remove(j)
            return controls, picked

    def _run(self) -> None:
        while True:
            controls, jobs = self._take()
            for fn, fut in controls:
                try:
                    fut.set_result(fn())
                except BaseException as e:  # noqa: BLE001 - the caller gets it
                    fut.set_exception(e)
            if jobs:
                self._round(jobs)
            with self.cond:
                if self._stop and not self.pending and not self.controls:
                    return

    # --- a round --------------------------------------------------------------------------
    def _round(self, jobs: list[Job]) -> None:
        t0 = time.monotonic()
        lms, sinks, olds = [], [], []
        try:
            for j in jobs:
                lm = self.streams.streams.get(j.stream) or self._new_stream(j.stream)
                live = {"max_new_tokens": j.max_tokens}
                live.update({k: v for k, v in (("temperature", j.temperature), ("top_p", j.top_p),
                                                ("seed", j.seed)) if v is not None})
                olds.append(lm.zs_config)
                lm.zs_config = lm.zs_config.replace(**live)
                lm.method.config = lm.zs_config
                lms.append(lm)
                sinks.append(TokenSink(self.host.tokenizer, self.eos, j.max_tokens, j.emit))
            results = adapt_round([(lm, j.prompt, None) for lm, j in zip(lms, jobs)], on_token=sinks)
        except BaseException as e:  # noqa: BLE001 - a failed round fails its requests, not the server
            log.exception("round of %d request(s) failed", len(jobs))
            for j in jobs:
                if j.stream in self.streams.streams:
                    self._rewind(j.stream)
                if not j.future.done():
                    j.future.set_exception(ServeError(500, f"the round failed ({type(e).__name__}: {e}); the "
                                                      "streams keep their state from before it", "server_error"))
            return
        finally:
            for lm, old in zip(lms, olds):
                lm.zs_config = old
                lm.method.config = old
        self.stats["rounds"] += 1
        self.stats["pool_size"] = len(jobs)
        self.stats["loop_s"] += time.monotonic() - t0
        for j, lm, sink, r in zip(jobs, lms, sinks, results):
            self._record(j.stream, lm, r)
            try:
                t = time.monotonic()
                self.checkpoint(j.stream)
                self.stats["checkpoint_s"] += time.monotonic() - t
            except Exception as e:  # noqa: BLE001 - the answer is not released when its state is not durable
                log.exception("stream %s: checkpoint failed", j.stream)
                j.future.set_exception(ServeError(500, f"the stream's state could not be saved ({e}); the answer "
                                                  "is withheld", "server_error", "checkpoint_failed"))
                continue
            sink.flush(r.answer, final=True)
            finish = "stop" if sink.ended_by_eos or r.answer_tokens < j.max_tokens else "length"
            entropy = r.steps[-1].get("entropy") if r.steps else None
            j.future.set_result(Answer(
                stream=j.stream, text=r.answer, finish_reason=finish, prompt_tokens=r.prompt_tokens,
                completion_tokens=len(sink.ids), problem=lm.problems_seen, entropy=entropy,
                events=list(r.events), queued_s=t0 - j.arrived, round_size=len(jobs)))
        self.stats["round_s"].append(time.monotonic() - t0)

    def _record(self, name: str, lm: ZeroSiamLM, r: AdaptResult) -> None:
        from ..answers import final_answer

        step = r.steps[-1] if r.steps else {}
        ans = final_answer(r.answer)
        with self.lock:
            self.history[name].append({
            "problem": lm.problems_seen, "time": time.time(),
            "entropy": step.get("entropy"), "logit_norm_centered": step.get("logit_norm_centered"),
            "predictor_dev": step.get("predictor_dev"), "skipped": bool(step.get("skipped", False)),
            "extracted": ans.text if ans else None, "answer_source": ans.source if ans else None,
                "response": r.answer[-400:], "events": r.events})

    # --- reports --------------------------------------------------------------------------
    def describe(self, name: str, series: bool = True) -> dict:
        """What /v1/streams says of a stream: problems, trends, verdict, guard events, recent series."""
        lm = self.streams.streams[name]
        with self.lock:
            hist = list(self.history[name])
        return {"id": name, "object": "stream", "problems": lm.problems_seen, "adapting": lm.adapt_enabled,
                "method": lm.zs_config.label(), **history_view(hist, series),
                "guard_events": lm.guard.events if lm.guard is not None else [], "notes": self.notes.get(name, []),
                "queued": sum(j.stream == name for j in self.pending)}

    def reset(self, name: str) -> dict:
        """Put a stream back to its initial state (and its checkpoint with it); on the worker thread."""
        lm = self.streams.streams[name]
        lm.reset()
        with self.lock:
            self.history[name].clear()
        self.notes[name].append(f"reset at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
        self.checkpoint(name)
        return self.describe(name, series=False)

    def export(self, name: str) -> dict:
        """Save a stream's adapted state as a portable adapter folder (`ZeroSiamLM.save_pretrained`)
        under `state_dir/exports/<id>`; on the worker thread."""
        from ..checkpoint import sha256_file

        lm = self.streams.streams[name]
        d = self.state_dir / "exports" / name
        if d.exists():
            shutil.rmtree(d)
        lm.save_pretrained(d, card={"stream": {"dataset": f"served stream {name}", "source": "requests to zs_llm.serve",
                                               "problems": lm.problems_seen}})
        return {"id": name, "object": "stream.export", "path": str(d.resolve()), "problems": lm.problems_seen,
                "files": {p.name: sha256_file(p) for p in sorted(d.iterdir()) if p.is_file()}}


def trend_of(values) -> float:
    from ..diagnostics import trend

    return trend([v for v in values if v is not None])
