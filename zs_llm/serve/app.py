"""The HTTP face of the engine: OpenAI's chat and text completion endpoints (plain and server-sent
events), the streams' own endpoints, Prometheus metrics and the page.

Who is asking decides which stream answers. With a keys file, the `Authorization: Bearer KEY`
header names the tenant (a key mapped to `*` is the operator's: it sees every stream and the
metrics, and answers nothing). Without one, the request's `user` field names the stream, else
all requests share the stream `shared`, and every stream is visible to every caller (the server
is then for one trusted user or a trusted network).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import html
import json
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..model import CHAT_ROLES, check_prompt, prompt_ids
from .engine import STREAM_ID, Engine, Job, ServeError
from .page import PAGE

OPERATOR = "*"
#: request fields whose meaning the server would silently drop: refused, naming them
UNSUPPORTED = {"tools": None, "functions": None, "tool_choice": None, "logit_bias": None, "stop": None,
               "logprobs": False, "top_logprobs": None, "best_of": 1, "echo": False, "suffix": None,
               "presence_penalty": 0, "frequency_penalty": 0}
LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


def read_keys(path: str | Path) -> dict[str, str]:
    """A keys file: one `KEY STREAM` pair per line (`#` starts a comment); STREAM `*` makes KEY the
    operator's. ValueError naming the line when a line is malformed or a key repeats."""
    keys: dict[str, str] = {}
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ValueError(f"--keys {p}: cannot read it ({e.strerror}); give a file of 'KEY STREAM' lines") from None
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not (parts[1] == OPERATOR or STREAM_ID.fullmatch(parts[1])):
            raise ValueError(f"--keys {p} line {n}: expected 'KEY STREAM' (STREAM of letters, digits, _.@- up to "
                             f"64 characters, or * for the operator), got {line!r}")
        if parts[0] in keys:
            raise ValueError(f"--keys {p} line {n}: the key is given twice; each key names one stream")
        keys[parts[0]] = parts[1]
    if not keys:
        raise ValueError(f"--keys {p} holds no 'KEY STREAM' line; add one per tenant")
    return keys


class Metrics:
    """Counters behind /metrics."""

    def __init__(self):
        self.requests: dict[tuple[str, int], int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.tokens = {"prompt": 0, "completion": 0}

    def observe(self, endpoint: str, status: int, seconds: float | None = None) -> None:
        self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1
        if seconds is not None:
            i = next((k for k, b in enumerate(LATENCY_BUCKETS) if seconds <= b), len(LATENCY_BUCKETS))
            self.buckets[i] += 1
            self.latency_sum += seconds

    def text(self, engine: Engine) -> str:
        out = ["# HELP zs_serve_requests_total Completion requests answered, by endpoint and HTTP status.",
               "# TYPE zs_serve_requests_total counter"]
        out += [f'zs_serve_requests_total{{endpoint="{e}",status="{s}"}} {n}'
                for (e, s), n in sorted(self.requests.items())]
        out += ["# HELP zs_serve_request_seconds Time from arrival to the full answer of successful requests.",
                "# TYPE zs_serve_request_seconds histogram"]
        total = 0
        for b, n in zip((*LATENCY_BUCKETS, "+Inf"), self.buckets):
            total += n
            out.append(f'zs_serve_request_seconds_bucket{{le="{b}"}} {total}')
        out += [f"zs_serve_request_seconds_sum {self.latency_sum:.6f}", f"zs_serve_request_seconds_count {total}",
                "# HELP zs_serve_tokens_total Tokens of successful requests.", "# TYPE zs_serve_tokens_total counter"]
        out += [f'zs_serve_tokens_total{{kind="{k}"}} {v}' for k, v in self.tokens.items()]
        st = engine.stats
        out += ["# HELP zs_serve_rounds_total Pooled rounds run.", "# TYPE zs_serve_rounds_total counter",
                f"zs_serve_rounds_total {st['rounds']}",
                "# HELP zs_serve_loop_seconds_total Time in the adaptation loop (drafts, updates, answers).",
                "# TYPE zs_serve_loop_seconds_total counter", f"zs_serve_loop_seconds_total {st['loop_s']:.3f}",
                "# HELP zs_serve_checkpoint_seconds_total Time writing the streams' checkpoints.",
                "# TYPE zs_serve_checkpoint_seconds_total counter",
                f"zs_serve_checkpoint_seconds_total {st['checkpoint_s']:.3f}",
                "# HELP zs_serve_pool_size Streams in the last round.", "# TYPE zs_serve_pool_size gauge",
                f"zs_serve_pool_size {st['pool_size']}",
                "# HELP zs_serve_queue_depth Requests waiting for their round.", "# TYPE zs_serve_queue_depth gauge",
                f"zs_serve_queue_depth {len(engine.pending)}",
                "# HELP zs_serve_streams Streams hosted.", "# TYPE zs_serve_streams gauge",
                f"zs_serve_streams {len(engine.streams.streams)}",
                "# HELP zs_serve_stream_problems Problems a stream has adapted on.",
                "# TYPE zs_serve_stream_problems gauge"]
        described = [engine.describe(n, series=False) for n in sorted(engine.streams.streams)]
        out += [f'zs_serve_stream_problems{{stream="{d["id"]}"}} {d["problems"]}' for d in described]
        out += ["# HELP zs_serve_stream_verdict A stream's verdict (1 for the current one).",
                "# TYPE zs_serve_stream_verdict gauge"]
        out += [f'zs_serve_stream_verdict{{stream="{d["id"]}",verdict="{d["verdict"]}"}} 1' for d in described]
        out += ["# HELP zs_serve_stream_guard_events_total Collapse-guard rollbacks of a stream.",
                "# TYPE zs_serve_stream_guard_events_total counter"]
        out += [f'zs_serve_stream_guard_events_total{{stream="{d["id"]}"}} {len(d["guard_events"])}'
                for d in described]
        return "\n".join(out) + "\n"


def _bad(message: str, param: str | None = None, code: str | None = "invalid_value") -> ServeError:
    return ServeError(400, message, "invalid_request_error", code, param)


def _int(body: dict, name: str, lo: int, hi: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(f"{name} must be an integer from {lo} to {hi}, got {v!r}", name)
    if not lo <= v <= hi:
        raise _bad(f"{name} is {v}; this server allows {lo} to {hi}", name)
    return v


def _float(body: dict, name: str, lo: float, hi: float, lo_open: bool = False) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise _bad(f"{name} must be a number, got {v!r}", name)
    if v > hi or v < lo or (lo_open and v == lo):
        raise _bad(f"{name} is {v}; it must be {'above' if lo_open else 'at least'} {lo:g} and at most {hi:g}", name)
    return float(v)


def _messages(raw) -> list[dict]:
    """OpenAI chat messages as zs_llm prompts take them: text content (string or text parts), the
    roles system/user/assistant (`developer` read as system)."""
    if not isinstance(raw, list) or not raw:
        raise _bad("messages must be a non-empty list of {'role': ..., 'content': ...} objects", "messages")
    out = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"{where} is a {type(m).__name__}; each message is an object with 'role' and 'content'", where)
        role = m.get("role")
        role = "system" if role == "developer" else role
        if role not in CHAT_ROLES:
            raise _bad(f"{where}.role is {m.get('role')!r}; this server takes {', '.join(CHAT_ROLES)} (and developer)",
                       f"{where}.role")
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for k, part in enumerate(content):
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise _bad(f"{where}.content[{k}] is a {kind!r} part; this server reads text parts only "
                               "({'type': 'text', 'text': ...})", f"{where}.content")
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise _bad(f"{where}.content must be a string or a list of text parts, got "
                       f"{type(content).__name__}", f"{where}.content")
        out.append({"role": role, "content": content})
    return out


class Api:
    """What the endpoints share: who is asking (`keys`), the checks a completion request goes through,
    and the answer's two shapes (one JSON object, or server-sent events)."""

    def __init__(self, engine: Engine, keys: dict[str, str] | None, max_tokens_limit: int | None,
                 default_max_tokens: int | None):
        cfg = engine.host.zs_config
        self.engine, self.keys, self.cfg = engine, keys, cfg
        self.limit = max_tokens_limit or cfg.max_new_tokens
        self.default_tokens = min(default_max_tokens or cfg.max_new_tokens, self.limit)
        self.tokenizer = copy.deepcopy(engine.host.tokenizer)  # the worker thread keeps its own
        self.context = engine.host.context_length
        self.metrics = Metrics()
        self.model = engine.model_name

    # --- who is asking ------------------------------------------------------------------
    def key_stream(self, request: Request) -> str | None:
        """The stream the request's key maps to (OPERATOR for the operator); None without a keys file."""
        if self.keys is None:
            return None
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer ") or not auth[7:].strip():
            raise ServeError(401, "no API key: send 'Authorization: Bearer KEY' with a key from the server's keys "
                             "file (openai.OpenAI(api_key=KEY, base_url=...))", "invalid_request_error",
                             "missing_api_key")
        stream = self.keys.get(auth[7:].strip())
        if stream is None:
            raise ServeError(401, "incorrect API key: it is not in the server's keys file", "invalid_request_error",
                             "invalid_api_key")
        return stream

    def tenant(self, request: Request, body: dict) -> str:
        stream = self.key_stream(request)
        if stream == OPERATOR:
            raise ServeError(403, "this is the operator's key (*): it watches streams and answers nothing; use a "
                             "tenant's key", "invalid_request_error", "operator_key")
        if stream is not None:
            return stream
        user = body.get("user")
        if user in (None, ""):
            return "shared"
        if not isinstance(user, str) or not STREAM_ID.fullmatch(user):
            raise _bad(f"user must be letters, digits and _.@- (up to 64 characters, starting with a letter or "
                       f"digit): it names your stream; got {user!r}", "user")
        return user

    def visible(self, request: Request, name: str | None = None) -> list[str]:
        """The streams the caller may see (one stream: `name`, else 404 as if it did not exist)."""
        stream = self.key_stream(request)
        hosted = sorted(self.engine.streams.streams)
        seen = hosted if stream in (None, OPERATOR) else [s for s in hosted if s == stream]
        if name is not None:
            if name not in seen:
                raise ServeError(404, f"no stream {name!r} that this key may see", "invalid_request_error",
                                 "stream_not_found", "id")
            return [name]
        return seen

    # --- a completion request -----------------------------------------------------------
    def common(self, body: dict) -> dict:
        """The generation fields every completion request shares, checked."""
        name, model = body.get("model"), self.model
        if not isinstance(name, str) or not name:
            raise _bad(f"model is required; this server serves {model!r}", "model", "missing_model")
        if name != model:
            raise ServeError(404, f"the model {name!r} does not exist here; this server serves {model!r} "
                             "(GET /v1/models)", "invalid_request_error", "model_not_found", "model")
        for k, neutral in UNSUPPORTED.items():
            if k in body and body[k] is not None and body[k] != neutral and body[k] != []:
                raise _bad(f"{k} is not supported by this server; drop it from the request", k, "unsupported_parameter")
        _int(body, "n", 1, 1)  # one choice per request: each is a problem the stream adapts on
        stream = body.get("stream", False)
        if not isinstance(stream, bool) and stream is not None:
            raise _bad(f"stream must be true or false, got {stream!r}", "stream")
        mt = _int(body, "max_completion_tokens", 1, self.limit)
        mt = mt if mt is not None else _int(body, "max_tokens", 1, self.limit)
        return {"max_tokens": mt or self.default_tokens, "temperature": _float(body, "temperature", 0.0, 2.0),
                "top_p": _float(body, "top_p", 0.0, 1.0, lo_open=True), "seed": _int(body, "seed", 0, 2**31 - 1),
                "stream": bool(stream), "usage_in_stream": bool((body.get("stream_options") or {}).get(
                    "include_usage")) if isinstance(body.get("stream_options"), dict) else False}

    def check_length(self, prompt, max_tokens: int) -> None:
        try:
            check_prompt(prompt)
        except ValueError as e:
            raise _bad(str(e).replace("give adapt_generate", "give the model"), "messages") from None
        n = prompt_ids(self.tokenizer, prompt).shape[1]
        if self.context is not None and n + max_tokens > self.context:
            raise ServeError(400, f"this model's context is {self.context} tokens; the prompt is {n} tokens and "
                             f"max_tokens {max_tokens}: shorten the prompt or lower max_tokens",
                             "invalid_request_error", "context_length_exceeded", "messages")

    async def read(self, request: Request, chat: bool) -> tuple[str, object, dict]:
        """The request's stream, prompt (messages for chat) and generation fields, checked."""
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as e:
            raise _bad(f"the request body is not JSON ({e}); send a JSON object", code="invalid_json") from None
        if not isinstance(body, dict):
            raise _bad("the request body must be a JSON object", code="invalid_json")
        stream = self.tenant(request, body)
        opts = self.common(body)
        if chat:
            prompt = _messages(body.get("messages"))
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise _bad("prompt must be one string (this server answers one prompt per request)", "prompt")
        self.check_length(prompt, opts["max_tokens"])
        return stream, prompt, opts

    async def complete(self, request: Request, chat: bool):
        endpoint = "chat" if chat else "completions"
        t0 = time.monotonic()
        try:
            stream, prompt, opts = await self.read(request, chat)
        except ServeError as e:
            self.metrics.observe(endpoint, e.status)
            raise
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        emit = (lambda text: loop.call_soon_threadsafe(queue.put_nowait, ("delta", text))) if opts["stream"] else None
        job = Job(stream=stream, prompt=prompt, max_tokens=opts["max_tokens"], temperature=opts["temperature"],
                  top_p=opts["top_p"], seed=opts["seed"], emit=emit, timeout=self.engine.timeout)
        try:
            fut = self.engine.submit(job)
        except ServeError as e:
            self.metrics.observe(endpoint, e.status)
            raise
        reply = Reply(self, chat, t0)
        if not opts["stream"]:
            try:
                answer = await asyncio.wrap_future(fut)
            except ServeError as e:
                self.metrics.observe(endpoint, e.status)
                raise
            except asyncio.CancelledError:
                self.engine.cancel(job)
                raise
            return JSONResponse(reply.whole(answer))
        fut.add_done_callback(lambda f: loop.call_soon_threadsafe(queue.put_nowait, ("done", f)))
        return StreamingResponse(reply.events(queue, job, opts["usage_in_stream"]), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class Reply:
    """One completion's answer in OpenAI's shapes: a whole `chat.completion` / `text_completion`
    object, or its chunks as server-sent events; both count it in the metrics."""

    def __init__(self, api: Api, chat: bool, t0: float):
        self.api, self.chat, self.t0 = api, chat, t0
        self.endpoint = "chat" if chat else "completions"
        self.rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def usage(self, answer) -> dict:
        """The answer's usage, counted in the metrics."""
        m = self.api.metrics
        m.observe(self.endpoint, 200, time.monotonic() - self.t0)
        m.tokens["prompt"] += answer.prompt_tokens
        m.tokens["completion"] += answer.completion_tokens
        return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                "total_tokens": answer.prompt_tokens + answer.completion_tokens}

    @staticmethod
    def extension(answer) -> dict:
        return {"stream": answer.stream, "problem": answer.problem, "entropy": answer.entropy,
                "events": answer.events, "queued_s": round(answer.queued_s, 3), "round_size": answer.round_size}

    def whole(self, answer) -> dict:
        usage = self.usage(answer)
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": answer.text},
                      "finish_reason": answer.finish_reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": answer.text, "finish_reason": answer.finish_reason, "logprobs": None}
        return {"id": self.rid, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.api.model, "choices": [choice], "usage": usage,
                "zs_llm": self.extension(answer)}

    def data(self, choices: list, **more) -> str:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return "data: " + json.dumps({"id": self.rid, "object": kind, "created": self.created,
                                      "model": self.api.model, "choices": choices, **more}) + "\n\n"

    def chunk(self, piece: str | None, finish_reason=None, role: bool = False, **more) -> str:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": piece} if piece else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": piece or "", "finish_reason": finish_reason, "logprobs": None}
        return self.data([choice], **more)

    async def events(self, queue: asyncio.Queue, job: Job, usage_in_stream: bool):
        """The answer's chunks as they come from the worker (`queue`: text pieces, then the done future)."""
        started = False
        try:
            if self.chat:
                yield self.chunk(None, role=True)
            while True:
                what, item = await queue.get()
                started = True
                if what == "delta":
                    yield self.chunk(item)
                    continue
                try:
                    answer = item.result()
                except ServeError as e:
                    self.api.metrics.observe(self.endpoint, e.status)
                    yield "data: " + json.dumps(e.body()) + "\n\n"
                    return
                usage = self.usage(answer)
                yield self.chunk(None, answer.finish_reason, zs_llm=self.extension(answer))
                if usage_in_stream:
                    yield self.data([], usage=usage)
                yield "data: [DONE]\n\n"
                return
        finally:
            if not started:
                self.api.engine.cancel(job)  # the client left before its round: the stream never sees it


def _error(e: ServeError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def add_error_handlers(app) -> None:
    """Every error in OpenAI's error shape: ours, FastAPI's 404/405 and validation errors, and a 500
    that names only the exception's type (the log has the rest)."""

    @app.exception_handler(ServeError)
    async def _serve_error(request, e: ServeError):
        return _error(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return _error(ServeError(e.status_code, f"{request.method} {request.url.path}: {e.detail}",
                                 "invalid_request_error", code))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e):
        first = e.errors()[0] if e.errors() else {}
        return _error(_bad(f"{'.'.join(map(str, first.get('loc', ())))}: {first.get('msg', 'invalid request')}"))

    @app.exception_handler(Exception)
    async def _internal(request, e):
        return _error(ServeError(500, f"internal error ({type(e).__name__}); the server's log has the details",
                                 "server_error"))


def add_stream_routes(app, api: Api) -> None:
    """The endpoints besides the completions: models, health, the streams (list, one, reset,
    export), metrics and the page."""
    engine, model, cfg = api.engine, api.model, api.cfg

    @app.get("/v1/models")
    async def models(request: Request):
        api.key_stream(request)
        return {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "zs_llm",
                                            "method": cfg.label()}]}

    @app.get("/health")
    async def health():
        alive = engine._thread is not None and engine._thread.is_alive()
        body = {"status": "ok" if alive else "worker stopped", "model": model, "streams": len(engine.streams.streams),
                "queue": len(engine.pending), "rounds": engine.stats["rounds"]}
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/v1/streams")
    async def streams(request: Request, series: bool = True):
        return {"object": "list", "data": [engine.describe(n, series=series) for n in api.visible(request)]}

    @app.get("/v1/streams/{name}")
    async def one_stream(request: Request, name: str):
        return engine.describe(api.visible(request, name)[0])

    @app.post("/v1/streams/{name}/reset")
    async def reset(request: Request, name: str):
        name = api.visible(request, name)[0]
        return await asyncio.wrap_future(engine.call(lambda: engine.reset(name)))

    @app.post("/v1/streams/{name}/export")
    async def export(request: Request, name: str):
        name = api.visible(request, name)[0]
        return await asyncio.wrap_future(engine.call(lambda: engine.export(name)))

    @app.get("/metrics")
    async def prometheus(request: Request):
        if api.key_stream(request) not in (None, OPERATOR):
            raise ServeError(403, "the metrics name every stream: they need the operator's key (a key mapped to * "
                             "in the keys file)", "invalid_request_error", "operator_only")
        return PlainTextResponse(api.metrics.text(engine), media_type="text/plain; version=0.0.4")

    @app.get("/")
    async def page():
        return HTMLResponse(PAGE.replace("__MODEL__", html.escape(model)).replace("__METHOD__", cfg.label()))


def create_app(engine: Engine, keys: dict[str, str] | None = None, max_tokens_limit: int | None = None,
               default_max_tokens: int | None = None):
    """The FastAPI application serving `engine` (started and stopped with the app)."""
    api = Api(engine, keys, max_tokens_limit, default_max_tokens)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, engine.close)

    app = FastAPI(title="zs_llm adapting server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine, app.state.metrics, app.state.api = engine, api.metrics, api
    add_error_handlers(app)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await api.complete(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await api.complete(request, chat=False)

    add_stream_routes(app, api)
    return app
