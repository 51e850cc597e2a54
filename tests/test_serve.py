"""The adapting server (zs_llm.serve) on tiny random models: the official `openai` client against a
real uvicorn server, tenants kept apart, server-sent events token by token, errors as OpenAI error
objects, the queue's back-pressure and timeout, kill -9 and restart (a real subprocess), and the
page in a headless browser."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from zs_llm import AdaptConfig, Streams, ZeroSiamLM  # noqa: E402
from zs_llm.adapt import adapt_on_problem, adapt_round  # noqa: E402
from zs_llm.serve import Engine  # noqa: E402
from zs_llm.serve.app import create_app, read_keys  # noqa: E402
from zs_llm.serve.engine import TokenSink  # noqa: E402
from zs_llm.testing import tiny_model  # noqa: E402

SPEC = "zerosiam+clip"
TOKENS = 12
KEYS = "key-a alice\nkey-b bob\nkey-op *  # the operator\n"


def config():
    return AdaptConfig.from_spec(SPEC, {"max_new_tokens": TOKENS, "lr": 0.05})


def host(tok):
    return ZeroSiamLM(tiny_model("llama"), tok, config())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(engine, keys=None, **kw):
    """A real uvicorn server on a free loopback port, in a thread: yields its base URL."""
    import uvicorn

    app = create_app(engine, keys, **kw)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert t.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        t.join(timeout=30)


def http(url, method="GET", body=None, key=None, raw: bytes | None = None):
    """(status, headers, parsed JSON or text) of one request, errors included."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, headers, text = r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        status, headers, text = e.code, dict(e.headers), e.read().decode()
    try:
        return status, headers, json.loads(text)
    except ValueError:
        return status, headers, text


def client(url, key="unused"):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def ask(c, text, **kw):
    return c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": text}], **kw)


@pytest.fixture
def keys_file(tmp_path):
    p = tmp_path / "keys.txt"
    p.write_text(KEYS)
    return read_keys(p)


def state_bytes(state_dir: Path, stream: str) -> bytes:
    return (state_dir / "streams" / stream / "state.safetensors").read_bytes()


# --- the loop's token stream -----------------------------------------------------------------
@pytest.mark.parametrize("pooled, answer", [(False, "draft"), (True, "draft"), (True, "regenerate")])
def test_on_token_gets_each_answer_token_as_generated(tok, pooled, answer):
    # a large step, so that a regenerated answer differs from its draft
    lr = 50.0 if answer == "regenerate" else 0.05
    lm = ZeroSiamLM(tiny_model("llama"), tok, config().replace(answer=answer, lr=lr))
    streams = Streams(lm)
    names = ["a", "b"] if pooled else ["a"]
    got = {n: [] for n in names}
    results = adapt_round([(streams.stream(n), f"question {n}?", None) for n in names],
                          on_token=[got[n].append for n in names])
    eos = {tok.eos_token_id}
    for n, r in zip(names, results):
        sink = TokenSink(tok, eos, TOKENS)
        for t in got[n]:
            sink(t)
        assert len(got[n]) >= r.answer_tokens > 0
        assert tok.decode(sink.ids, skip_special_tokens=True) == r.answer
        assert len(got[n]) <= TOKENS  # one generation streamed
        if answer == "regenerate":  # the regenerated answer's, not the draft's
            assert r.answer != r.draft


def test_token_sink_stops_at_the_end_token_and_the_limit_and_holds_back_partial_characters(tok):
    pieces = []
    sink = TokenSink(tok, {tok.eos_token_id}, limit=3, emit=pieces.append)
    for t in tok.encode("abcd", add_special_tokens=False):
        sink(t)
    assert sink.ids == tok.encode("abc", add_special_tokens=False) and pieces == ["a", "b", "c"]
    assert sink.done and not sink.ended_by_eos
    sink = TokenSink(tok, {tok.eos_token_id}, limit=9, emit=pieces.append)
    for t in [*tok.encode("x", add_special_tokens=False), tok.eos_token_id, *tok.encode("y", add_special_tokens=False)]:
        sink(t)
    assert sink.ended_by_eos and tok.decode(sink.ids) == "x"
    held = []
    sink = TokenSink(tok, set(), limit=9, emit=held.append)
    sink.flush("ab\ufffd")
    assert held == []
    sink.flush("abc")
    assert held == ["abc"]


# --- two tenants through the official client -----------------------------------------------
def test_openai_client_two_tenants_adapt_separately_and_reset_touches_one(tok, tmp_path, keys_file):
    state = tmp_path / "state"
    engine = Engine(host(tok), state, "tiny")
    with running(engine, keys_file) as url:
        alice, bob = client(url, "key-a"), client(url, "key-b")
        assert [m.id for m in alice.models.list().data] == ["tiny"]
        for q in ("What is 2+3?", "And 7*6?"):
            ra = ask(alice, q)
            rb = ask(bob, "Name a prime " + q)
            assert isinstance(ra.choices[0].message.content, str) and ra.choices[0].finish_reason in ("stop", "length")
            assert ra.usage.completion_tokens <= TOKENS and ra.usage.prompt_tokens > 0
        assert ra.model_extra["zs_llm"]["stream"] == "alice" and rb.model_extra["zs_llm"]["stream"] == "bob"
        assert ra.model_extra["zs_llm"]["problem"] == 2
        # each key sees its own stream only; the operator sees both
        _, _, seen = http(url + "/v1/streams", key="key-a")
        assert [s["id"] for s in seen["data"]] == ["alice"] and seen["data"][0]["problems"] == 2
        assert len(seen["data"][0]["series"]["entropy"]) == 2
        _, _, seen = http(url + "/v1/streams", key="key-op")
        assert [s["id"] for s in seen["data"]] == ["alice", "bob"]
        # the exported adapters differ from each other and from a fresh stream's
        ea = http(url + "/v1/streams/alice/export", "POST", key="key-a")[2]
        eb = http(url + "/v1/streams/bob/export", "POST", key="key-b")[2]
        fresh = Streams(host(tok)).stream("fresh")
        fresh.save_pretrained(tmp_path / "fresh")
        from safetensors.torch import load_file

        adapters = [load_file(Path(e["path"]) / "adapter_model.safetensors") for e in (ea, eb)]
        adapters.append(load_file(tmp_path / "fresh" / "adapter_model.safetensors"))
        assert adapters[0].keys() == adapters[1].keys() == adapters[2].keys()
        for i, j in ((0, 1), (0, 2), (1, 2)):
            assert any(not torch.equal(adapters[i][k], adapters[j][k]) for k in adapters[0])
        # alice may neither see nor reset bob's stream (404, as if it did not exist)
        bob_before = state_bytes(state, "bob")
        status, _, body = http(url + "/v1/streams/bob/reset", "POST", key="key-a")
        assert status == 404 and body["error"]["code"] == "stream_not_found"
        assert http(url + "/v1/streams/bob", key="key-a")[0] == 404
        # a reset of alice's stream leaves bob's bitwise unchanged
        status, _, body = http(url + "/v1/streams/alice/reset", "POST", key="key-a")
        assert status == 200 and body["problems"] == 0
        assert state_bytes(state, "bob") == bob_before
        eb2 = http(url + "/v1/streams/bob/export", "POST", key="key-b")[2]
        assert eb2["files"] == eb["files"]
        ea2 = http(url + "/v1/streams/alice/export", "POST", key="key-a")[2]
        assert ea2["files"]["adapter_model.safetensors"] != ea["files"]["adapter_model.safetensors"]
        # alice's reset stream answers as a fresh stream would
        again = ask(alice, "What is 2+3?").choices[0].message.content
        assert again == adapt_on_problem(Streams(host(tok)).stream("x"), "What is 2+3?").answer
        # the operator key watches, but answers nothing
        with pytest.raises(openai.PermissionDeniedError):
            ask(client(url, "key-op"), "hi")
        status, _, text = http(url + "/metrics", key="key-op")
        assert status == 200
        assert re.search(r'zs_serve_requests_total\{endpoint="chat",status="200"\} 5', text)
        assert 'zs_serve_stream_problems{stream="alice"} 1' in text
        assert 'zs_serve_stream_problems{stream="bob"} 2' in text
        assert re.search(r'zs_serve_stream_verdict\{stream="bob",verdict="[a-z-]+"\} 1', text)
        assert http(url + "/metrics", key="key-a")[0] == 403


def test_without_keys_the_user_field_names_the_stream(tok, tmp_path):
    engine = Engine(host(tok), tmp_path / "s", "tiny")
    with running(engine) as url:
        c = client(url)
        assert ask(c, "hi", user="carol").model_extra["zs_llm"]["stream"] == "carol"
        assert ask(c, "hi").model_extra["zs_llm"]["stream"] == "shared"
        r = c.completions.create(model="tiny", prompt="2+2=", max_tokens=4, user="carol")
        assert r.model_extra["zs_llm"] == {**r.model_extra["zs_llm"], "stream": "carol", "problem": 2}
        assert r.usage.completion_tokens <= 4
        _, _, body = http(url + "/v1/streams?series=false")
        assert {s["id"]: s["problems"] for s in body["data"]} == {"carol": 2, "shared": 1}


# --- server-sent events ------------------------------------------------------------------------
def test_stream_true_sends_tokens_before_the_round_ends_and_matches_the_plain_answer(tok, tmp_path):
    engine = Engine(host(tok), tmp_path / "s", "tiny")
    release, order = threading.Event(), []
    original = engine.checkpoint

    def slow_checkpoint(name):  # the update's checkpoint waits until the client has seen a token
        order.append("checkpoint waits")
        release.wait(20)
        order.append("checkpoint")
        original(name)

    engine.checkpoint = slow_checkpoint
    with running(engine) as url:
        c = client(url)
        pieces = []
        stream = ask(c, "Count: 1 2 3", user="s1", stream=True, stream_options={"include_usage": True})
        usage = finish = None
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            if not chunk.choices:
                continue
            ch = chunk.choices[0]
            if ch.delta.content:
                if not pieces:
                    order.append("first token at the client")
                    release.set()
                pieces.append(ch.delta.content)
            finish = ch.finish_reason or finish
        assert order.index("first token at the client") < order.index("checkpoint")
        assert len(pieces) > 1 and finish in ("stop", "length")
        text = "".join(pieces)
        release.set()
        plain = ask(c, "Count: 1 2 3", user="s2").choices[0].message.content  # a fresh stream, the same problem
        assert text == plain
        assert usage is not None and usage.completion_tokens == len(tok.encode(text, add_special_tokens=False))
        # the text completion endpoint streams too
        parts = [ch.choices[0].text for ch in c.completions.create(model="tiny", prompt="abc", max_tokens=5,
                                                                     stream=True, user="s3") if ch.choices]
        assert 0 < len("".join(parts)) <= 5


# --- bad requests --------------------------------------------------------------------------
LONG = "x" * 2100  # the tiny model's context is 2048 tokens, one per character

BAD = [
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "model_not_found"),
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "missing_model"),
    ({"model": "tiny", "messages": "hi"}, 400, "invalid_value"),
    ({"model": "tiny", "messages": []}, 400, "invalid_value"),
    ({"model": "tiny", "messages": [{"role": "robot", "content": "hi"}]}, 400, "invalid_value"),
    ({"model": "tiny", "messages": [{"role": "user", "content": 3}]}, 400, "invalid_value"),
    ({"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "invalid_value"),
    ({"model": "tiny", "messages": [{"role": "system", "content": "be brief"}]}, 400, "invalid_value"),
    ({"model": "tiny", "messages": [{"role": "user", "content": LONG}]}, 400, "context_length_exceeded"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "invalid_value"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000}, 400, "invalid_value"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"}, 400, "invalid_value"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": -1}, 400, "invalid_value"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "invalid_value"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stop": ["\n"]}, 400, "unsupported_parameter"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "user": "../etc"}, 400, "invalid_value"),
    ([1, 2], 400, "invalid_json"),
]


def test_bad_requests_get_openai_error_objects_and_leave_streams_alone(tok, tmp_path):
    engine = Engine(host(tok), tmp_path / "s", "tiny")
    with running(engine) as url:
        for body, status, code in BAD:
            got, _, err = http(url + "/v1/chat/completions", "POST", body)
            assert (got, err["error"]["code"]) == (status, code), (body, err)
            msg = err["error"]["message"]
            assert err["error"]["type"] and "Traceback" not in msg and "\n" not in msg
        got, _, err = http(url + "/v1/chat/completions", "POST", raw=b"{not json")
        assert got == 400 and err["error"]["code"] == "invalid_json"
        got, _, err = http(url + "/v1/completions", "POST", {"model": "tiny", "prompt": ["a", "b"]})
        assert got == 400 and err["error"]["param"] == "prompt"
        got, _, err = http(url + "/v1/nowhere")
        assert got == 404 and err["error"]["code"] == "not_found"
        with pytest.raises(openai.BadRequestError, match="takes system, user"):
            client(url).chat.completions.create(model="tiny", messages=[{"role": "tool", "content": "x"}])
        with pytest.raises(openai.NotFoundError, match="serves 'tiny'"):
            client(url).chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
        assert engine.streams.streams == {}  # no bad request opened (or adapted) a stream


def test_streams_past_max_streams_are_refused(tok, tmp_path):
    with running(Engine(host(tok), tmp_path / "s", "tiny", max_streams=1)) as url:
        ask(client(url), "hi", user="one")
        with pytest.raises(openai.PermissionDeniedError, match="at most 1 streams"):
            ask(client(url), "hi", user="two")
        assert ask(client(url), "again", user="one").model_extra["zs_llm"]["problem"] == 2


def test_keys_are_checked(tok, tmp_path, keys_file):
    with running(Engine(host(tok), tmp_path / "s", "tiny"), keys_file) as url:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
        assert http(url + "/v1/chat/completions", "POST", body)[2]["error"]["code"] == "missing_api_key"
        status, _, err = http(url + "/v1/chat/completions", "POST", body, key="nope")
        assert status == 401 and err["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            ask(client(url, "nope"), "hi")


@pytest.mark.parametrize("text, error", [("k1 a\nk1 b\n", "given twice"), ("k1\n", "expected 'KEY STREAM'"),
                                         ("k1 ../x\n", "expected 'KEY STREAM'"), ("# none\n", "no 'KEY STREAM'")])
def test_bad_keys_files_are_refused_naming_the_line(tmp_path, text, error):
    p = tmp_path / "keys.txt"
    p.write_text(text)
    with pytest.raises(ValueError, match=error):
        read_keys(p)


# --- the queue -----------------------------------------------------------------------------
def blocked(engine):
    """Hold the worker between rounds until the returned event is set. Returns once the worker is
    inside the hold: a request sent before that could be taken into a round with the hold itself
    (the worker takes the control calls and the queued jobs together), and never be seen queued."""
    gate, entered = threading.Event(), threading.Event()
    engine.call(lambda: (entered.set(), gate.wait(120)))
    assert entered.wait(60), "the worker did not take the hold"
    return gate


def wait_until(cond, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.01)


def test_requests_arriving_together_are_pooled_in_arrival_order_and_a_full_queue_gets_429(tok, tmp_path):
    engine = Engine(host(tok), tmp_path / "s", "tiny", max_queue=3, max_pool=4)
    with running(engine) as url:
        gate = blocked(engine)
        out = {}

        def send(i, user):
            out[i] = http(url + "/v1/chat/completions", "POST",
                          {"model": "tiny", "user": user, "messages": [{"role": "user", "content": f"q{i}"}]})

        threads = []
        for i, user in enumerate(["a", "b", "a"]):  # queued in this order
            threads.append(threading.Thread(target=send, args=(i, user)))
            threads[-1].start()
            wait_until(lambda: len(engine.pending) >= i + 1, f"request {i} queued")
        status, headers, err = http(url + "/v1/chat/completions", "POST",
                                    {"model": "tiny", "user": "c", "messages": [{"role": "user", "content": "x"}]})
        assert status == 429 and err["error"]["code"] == "queue_full" and int(headers["retry-after"]) >= 1
        gate.set()
        for t in threads:
            t.join(60)
        ext = {i: out[i][2]["zs_llm"] for i in range(3)}
        assert ext[0]["round_size"] == ext[1]["round_size"] == 2  # a's first and b's pooled into one round
        assert ext[2]["round_size"] == 1 and (ext[0]["problem"], ext[2]["problem"]) == (1, 2)  # a's in order
        _, _, text = http(url + "/metrics")
        assert 'zs_serve_requests_total{endpoint="chat",status="429"} 1' in text
        assert "zs_serve_rounds_total 2" in text


def test_a_request_past_its_timeout_is_refused_unrun(tok, tmp_path):
    engine = Engine(host(tok), tmp_path / "s", "tiny", timeout=0.3)
    with running(engine) as url:
        gate = blocked(engine)
        threading.Timer(1.0, gate.set).start()
        status, _, err = http(url + "/v1/chat/completions", "POST",
                              {"model": "tiny", "user": "a", "messages": [{"role": "user", "content": "x"}]})
        assert status == 504 and err["error"]["code"] == "timeout"
        assert "a" not in engine.streams.streams or engine.streams.streams["a"].problems_seen == 0


# --- kill -9 and restart -------------------------------------------------------------------
def start_server(tiny_dir, state, keys, port, log):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "zs_llm.serve", "--model", str(tiny_dir), "--served_model_name", "tiny",
           "--method", SPEC, "--set", f"max_new_tokens={TOKENS}", "--set", "lr=0.05", "--state_dir", str(state),
           "--keys", str(keys), "--port", str(port), "--threads", "1", "--log_level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        try:
            if http(f"http://127.0.0.1:{port}/health")[0] == 200:
                return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the server did not start: {Path(log.name).read_text()[-3000:]}")
        time.sleep(0.2)


def test_kill_9_and_restart_resume_both_streams(tok, tmp_path, tiny_dir):
    state, keys = tmp_path / "state", tmp_path / "keys.txt"
    keys.write_text(KEYS)
    port = free_port()
    asked = {"key-a": ["1+1?", "2+2?", "3+3?"], "key-b": ["Say hi", "Say bye"]}
    with open(tmp_path / "server.log", "w") as log:
        proc = start_server(tiny_dir, state, keys, port, log)
        try:
            url = f"http://127.0.0.1:{port}"
            for key, qs in asked.items():
                for q in qs[:-1]:
                    ask(client(url, key), q)
            before = {s: state_bytes(state, s) for s in ("alice", "bob")}
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        proc = start_server(tiny_dir, state, keys, port, log)
        try:
            _, _, seen = http(url + "/v1/streams?series=false", key="key-op")
            assert {s["id"]: s["problems"] for s in seen["data"]} == {"alice": 2, "bob": 1}
            assert all("resumed after problem" in s["notes"][-1] for s in seen["data"])
            assert {s: state_bytes(state, s) for s in ("alice", "bob")} == before
            # the next answer of each stream is the one an uninterrupted stream gives
            ref = Streams(ZeroSiamLM(tiny_model("llama"), tok, config()))
            for key, name in (("key-a", "alice"), ("key-b", "bob")):
                lm = ref.stream(name)
                for q in asked[key][:-1]:
                    adapt_on_problem(lm, q)
                want = adapt_on_problem(lm, asked[key][-1]).answer
                got = ask(client(url, key), asked[key][-1])
                assert got.choices[0].message.content == want
                assert got.model_extra["zs_llm"]["problem"] == len(asked[key])
        finally:
            proc.terminate()
            proc.wait(30)


def test_a_state_dir_is_one_servers_and_of_one_configuration(tok, tmp_path):
    first = Engine(host(tok), tmp_path / "s", "tiny")
    with pytest.raises(ValueError, match="in use by another server"):
        Engine(host(tok), tmp_path / "s", "tiny")
    first.close()
    other = ZeroSiamLM(tiny_model("llama"), tok, AdaptConfig.from_spec("tent+clip", {"max_new_tokens": TOKENS}))
    with pytest.raises(ValueError, match="another config.*new --state_dir"):
        Engine(other, tmp_path / "s", "tiny")


def test_a_damaged_checkpoint_is_quarantined_and_its_stream_starts_afresh(tok, tmp_path):
    engine = Engine(host(tok), tmp_path / "s", "tiny")
    engine.start()
    try:
        for name in ("a", "b"):
            from zs_llm.serve import Job

            engine.submit(Job(stream=name, prompt="hi", max_tokens=4)).result(60)
    finally:
        engine.close()
    f = tmp_path / "s" / "streams" / "a" / "state.safetensors"
    f.write_bytes(f.read_bytes()[:-7])
    again = Engine(host(tok), tmp_path / "s", "tiny")
    assert again.streams.streams["a"].problems_seen == 0 and again.streams.streams["b"].problems_seen == 1
    assert "damaged" in again.notes["a"][0] and list((tmp_path / "s" / "quarantine").iterdir())


# --- the page in a real browser ------------------------------------------------------------
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "headless_shell")


def test_the_page_renders_every_stream_with_its_sparklines_in_a_headless_browser(tok, tmp_path, keys_file):
    exe = next((p for b in BROWSERS if (p := shutil.which(b))), None)
    if exe is None:
        pytest.skip("no headless browser on PATH; scripts/setup.sh installs chromium-headless-shell with apt-get")
    engine = Engine(host(tok), tmp_path / "s", "tiny")
    with running(engine, keys_file) as url:
        for i in range(3):
            ask(client(url, "key-a"), f"{i}+{i}=?")
        ask(client(url, "key-b"), "hello")
        base = [exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'ud'}",
                "--virtual-time-budget=8000", "--window-size=1200,400"]
        page = url + "/#key=key-op"
        dom = subprocess.run([*base, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
        rows = re.findall(r'<tr data-stream="([^"]+)">(.*?)</tr>', dom, re.S)
        assert [r[0] for r in rows] == ["alice", "bob"], dom[-2000:]
        for name, row in rows:
            lines = re.findall(r'<polyline points="([^"]+)"', row)
            assert len(lines) == 4  # entropy, logit norm, predictor drift, answer share
            n = {"alice": 3, "bob": 1}[name]
            assert all(len(p.split()) == max(n, 2) for p in lines)
            assert re.search(r'class="verdict v-[a-z-]+"', row)
        tenant = subprocess.run([*base, "--dump-dom", url + "/#key=key-a"], capture_output=True, text=True,
                                timeout=120).stdout
        assert re.findall(r'<tr data-stream="([^"]+)">', tenant) == ["alice"]
        shot = tmp_path / "page.png"
        subprocess.run([*base, f"--screenshot={shot}", page], capture_output=True, timeout=120)
        if os.environ.get("ZS_SERVE_SCREENSHOT"):  # keep it to look at
            shutil.copy(shot, os.environ["ZS_SERVE_SCREENSHOT"])
    import matplotlib.image

    img = matplotlib.image.imread(shot)[..., :3]  # (H, W, 3) floats
    assert img.shape[1] == 1200 and img.std() > 0.05

    def pixels(hex_color):
        rgb = torch.tensor([int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
        return int(((torch.tensor(img) - rgb).abs().max(-1).values < 0.08).sum())

    for color in ("#1f77b4", "#9467bd", "#d62728", "#2ca02c"):  # every sparkline drawn
        assert pixels(color) > 40, color


def test_a_streaming_client_that_leaves_before_its_round_is_taken_off_the_queue(tok, tmp_path):
    engine = Engine(host(tok), tmp_path / "s", "tiny")
    with running(engine) as url:
        gate = blocked(engine)
        req = urllib.request.Request(url + "/v1/chat/completions", method="POST",
                                     headers={"Content-Type": "application/json"},
                                     data=json.dumps({"model": "tiny", "user": "gone", "stream": True,
                                                      "messages": [{"role": "user", "content": "x"}]}).encode())
        r = urllib.request.urlopen(req, timeout=30)
        assert r.readline().startswith(b"data: ")  # the role chunk: the request is queued
        assert len(engine.pending) == 1
        r.close()
        deadline = time.monotonic() + 20
        while engine.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.pending == []
        gate.set()
        ask(client(url), "y", user="stays")
        assert "gone" not in engine.streams.streams  # its stream never adapted on it


def test_a_failed_round_errors_its_requests_and_rewinds_their_streams_to_the_checkpoint(tok, tmp_path, monkeypatch):
    import zs_llm.serve.engine as engine_module

    engine = Engine(host(tok), tmp_path / "s", "tiny")
    with running(engine) as url:
        ask(client(url), "first", user="a")
        saved = state_bytes(tmp_path / "s", "a")
        real = engine_module.adapt_round

        def fails_after_stepping(items, on_token=None):
            real(items, on_token)  # the streams have stepped ...
            raise RuntimeError("out of memory")  # ... when the round fails

        monkeypatch.setattr(engine_module, "adapt_round", fails_after_stepping)
        status, _, err = http(url + "/v1/chat/completions", "POST",
                              {"model": "tiny", "user": "a", "messages": [{"role": "user", "content": "second"}]})
        assert status == 500 and "out of memory" in err["error"]["message"]
        with pytest.raises(openai.APIError, match="out of memory"):
            for _ in ask(client(url), "third", user="a", stream=True):
                pass
        monkeypatch.setattr(engine_module, "adapt_round", real)
        lm = engine.streams.streams["a"]
        assert lm.problems_seen == 1 and state_bytes(tmp_path / "s", "a") == saved
        ref = Streams(host(tok)).stream("r")
        adapt_on_problem(ref, "first")
        assert all(torch.equal(v, ref.state_tensors()[k]) for k, v in lm.state_tensors().items())
        assert ask(client(url), "again", user="a").model_extra["zs_llm"]["problem"] == 2
