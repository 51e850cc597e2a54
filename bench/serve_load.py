"""Load on the adapting server (`python -m zs_llm.serve`): N concurrent clients and M tenants on
loopback, side by side in one run with the same problems through `adapt_generate` one at a time
in this process, the server one request at a time (`--max_pool 1`) and `noadapt` serving (the cost
of adapting); then a kill -9 during load, a restart, and a count of answers lost and wrong.

    .venv/bin/python bench/serve_load.py                       # SmolLM2, 4 clients, 4 tenants x 4 problems, 32 tokens
    .venv/bin/python bench/serve_load.py --model tiny          # the logic on a tiny random model (seconds)

Each tenant's problems are the seeded `arith` set's, dealt round-robin (tenant t gets problems t,
t+M, ...); client c sends the problems of tenants c, c+N, ... one request at a time (closed loop),
so every serving mode sees the same problems in the same per-tenant order. Answers end at the
model's end token or `--tokens`, so the modes may generate different amounts: the table gives the
mean completion tokens beside the rates.

The kill: a fresh pooled server, the same load; once half the requests are answered the server is
killed with SIGKILL and started again on its state folder; clients whose request failed retry it
once the server is back. Wrong answers are counted three ways, all must be 0: an answer a client
received whose update the restarted stream does not hold (its problem number above the count the
stream resumed at), a stream's problem numbers not rising by one from the resumed count, an answer
from another tenant's stream.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from _common import REPO, arith_messages


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


class Server:
    """`python -m zs_llm.serve` in a subprocess on a free loopback port."""

    def __init__(self, model: str, method: str, state: Path, tokens: int, threads: int, max_pool: int, log: Path,
                 extra: list[str] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "zs_llm.serve", "--model", model, "--served_model_name", "m",
                    "--method", method, "--set", f"max_new_tokens={tokens}", "--state_dir", str(state),
                    "--port", str(self.port), "--threads", str(threads), "--max_pool", str(max_pool),
                    "--max_queue", "256", "--log_level", "warning", *extra]
        self.log = log
        self.proc = None

    def start(self) -> float:
        t = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(self.cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        while True:
            try:
                if get(self.url + "/health")["status"] == "ok":
                    return time.perf_counter() - t
            except OSError:
                pass
            if self.proc.poll() is not None or time.perf_counter() - t > 600:
                raise RuntimeError(f"the server did not start; its log: {self.log.read_text()[-3000:]}")
            time.sleep(0.25)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)


def plan(tenants: int, per_tenant: int, clients: int) -> dict[int, list[tuple[str, int, list]]]:
    """Each client's requests in order: (tenant, index in the tenant's stream, messages)."""
    msgs = arith_messages(tenants * per_tenant)
    out: dict[int, list] = {c: [] for c in range(clients)}
    for i in range(per_tenant):
        for t in range(tenants):
            out[t % clients].append((f"t{t}", i, msgs[i * tenants + t]))
    return out


def load(url: str, work: dict, tokens: int, max_seconds: float, on_answer=None, retry_wait: float = 0,
         before_request=None) -> list[dict]:
    """Run the clients; one record per request: tenant, index, ok, seconds, tokens, extension.
    A failed request is retried (with `retry_wait`) once the server is healthy; `before_request`,
    where given, is called before every request (the kill test holds requests there)."""
    import openai

    records: list[dict] = []
    lock = threading.Lock()
    t_end = time.perf_counter() + max_seconds

    def client(items):
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=900)
        for tenant, i, messages in items:
            if time.perf_counter() > t_end:
                return
            attempt = 0
            while True:
                if before_request is not None:
                    before_request()
                t = time.perf_counter()
                rec = {"tenant": tenant, "index": i, "attempt": attempt}
                try:
                    r = c.chat.completions.create(model="m", messages=messages, max_tokens=tokens, user=tenant)
                    rec.update(ok=True, seconds=time.perf_counter() - t, tokens=r.usage.completion_tokens,
                               ext=r.model_extra["zs_llm"], at=time.perf_counter())
                except Exception as e:  # noqa: BLE001 - a lost answer is what the kill test counts
                    rec.update(ok=False, error=type(e).__name__, at=time.perf_counter())
                with lock:
                    records.append(rec)
                if rec["ok"]:
                    if on_answer:
                        on_answer(len([r for r in records if r["ok"]]))
                    break
                if not retry_wait:
                    break
                attempt += 1
                wait_healthy(url, retry_wait)

    threads = [threading.Thread(target=client, args=(items,)) for items in work.values()]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return records


def wait_healthy(url: str, limit: float) -> None:
    t = time.perf_counter()
    while time.perf_counter() - t < limit:
        try:
            if get(url + "/health")["status"] == "ok":
                return
        except OSError:
            pass
        time.sleep(0.25)


def engine_seconds(url: str) -> dict[str, float]:
    """The server's time in its loop and in checkpoints so far (from /metrics)."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    out = {}
    for key in ("loop", "checkpoint"):
        line = next(ln for ln in text.splitlines() if ln.startswith(f"zs_serve_{key}_seconds_total "))
        out[f"{key}_s"] = float(line.split()[1])
    return out


def summary(name: str, records: list[dict], seconds: float) -> dict:
    ok = [r for r in records if r["ok"]]
    lat = sorted(r["seconds"] for r in ok)
    p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))] if lat else float("nan")
    return {"serving": name, "requests": len(ok), "seconds": seconds, "per_min": 60 * len(ok) / seconds,
            "p50": statistics.median(lat) if lat else float("nan"), "p95": p95,
            "tokens": statistics.mean(r["tokens"] for r in ok) if ok else float("nan"),
            "pool": statistics.mean(r["ext"]["round_size"] for r in ok if r.get("ext")) if ok and ok[0].get("ext")
            else 1.0}


def sequential(model: str, method: str, work: dict, tokens: int, threads: int) -> tuple[list[dict], float]:
    """The same problems through zs_llm.adapt_generate, one at a time, in this process (the order a
    round-robin over the clients' queues gives)."""
    import torch

    import zs_llm
    from zs_llm import AdaptConfig, Streams, ZeroSiamLM, load_model

    torch.set_num_threads(threads)
    host = ZeroSiamLM(*load_model(model), AdaptConfig.from_spec(method, {"max_new_tokens": tokens}))
    streams = Streams(host)
    queue = [item for k in range(max(len(v) for v in work.values())) for v in work.values() if k < len(v)
             for item in [v[k]]]
    zs_llm.adapt_generate(streams.stream("warm"), queue[0][2])  # first-call costs, as the servers' warm-up
    records = []
    t0 = time.perf_counter()
    for tenant, i, messages in queue:
        t = time.perf_counter()
        r = zs_llm.adapt_generate(streams.stream(tenant), messages, return_result=True)
        records.append({"tenant": tenant, "index": i, "ok": True, "seconds": time.perf_counter() - t,
                        "tokens": r.answer_tokens})
        print(f"  sequential {len(records)}/{len(queue)}: {records[-1]['seconds']:.1f} s", flush=True)
    return records, time.perf_counter() - t0


def served(name, model, method, work, tokens, threads, max_pool, tmp, max_seconds) -> dict:
    srv = Server(model, method, tmp / name, tokens, threads, max_pool, tmp / f"{name}.log")
    start_s = srv.start()
    try:
        load(srv.url, {0: [("warm", 0, work[0][0][2])]}, tokens, max_seconds)  # first-call costs
        t = time.perf_counter()
        before = engine_seconds(srv.url)
        recs = load(srv.url, work, tokens, max_seconds)
        out = summary(name, recs, time.perf_counter() - t)
        after = engine_seconds(srv.url)
        out.update({k: after[k] - before[k] for k in after}, start_s=start_s)
        return out
    finally:
        srv.stop()


def kill_test(model, method, work, tokens, threads, max_pool, tmp, max_seconds) -> dict:
    srv = Server(model, method, tmp / "kill", tokens, threads, max_pool, tmp / "kill.log")
    srv.start()
    total = sum(len(v) for v in work.values())
    state = {"killed": False, "kill_at": None, "resumed": None}
    fire = threading.Event()
    # once the kill is set off, requests wait until the restarted server's streams are read: one
    # answered first would move a stream past the count read as its resumption point
    resumed_read = threading.Event()

    def on_answer(n):
        if n >= total // 2 and not fire.is_set():
            fire.set()

    def killer():
        fire.wait()
        srv.kill()
        state["kill_at"] = time.perf_counter()
        state["restart_s"] = srv.start()
        state["resumed"] = {s["id"]: s["problems"] for s in get(srv.url + "/v1/streams?series=false")["data"]}
        resumed_read.set()

    th = threading.Thread(target=killer)
    th.start()
    try:
        recs = load(srv.url, work, tokens, max_seconds, on_answer=on_answer, retry_wait=600,
                    before_request=lambda: resumed_read.wait(600) if fire.is_set() else None)
        fire.set()
        th.join()
    finally:
        srv.stop()
    resumed, kill_at = state["resumed"], state["kill_at"]
    ok = [r for r in recs if r["ok"]]
    lost = [r for r in recs if not r["ok"]]
    before = [r for r in ok if r["at"] < kill_at]
    wrong_durable = [r for r in before if r["ext"]["problem"] > resumed.get(r["tenant"], 0)]
    wrong_stream = [r for r in ok if r["ext"]["stream"] != r["tenant"]]
    wrong_order = 0
    advanced = 0
    for t in {r["tenant"] for r in ok}:
        after = sorted((r for r in ok if r["tenant"] == t and r["at"] >= kill_at), key=lambda r: r["at"])
        nums = [r["ext"]["problem"] for r in after]
        start = resumed.get(t, 0)
        wrong_order += sum(n != start + k + 1 for k, n in enumerate(nums))
        acked = max((r["ext"]["problem"] for r in before if r["tenant"] == t), default=0)
        advanced += start - acked  # updates the state holds whose answer the client never got
    return {"requests": total, "answered": len(ok), "lost": len(lost), "retried_ok": sum(r["attempt"] > 0 for r in ok),
            "answered_before_kill": len(before), "resumed": resumed, "restart_s": state["restart_s"],
            "wrong": len(wrong_durable) + len(wrong_stream) + wrong_order, "wrong_not_durable": len(wrong_durable),
            "wrong_stream": len(wrong_stream), "wrong_order": wrong_order, "updates_without_answer": advanced}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a model name or folder, or tiny")
    ap.add_argument("--method", default="zerosiam+clip")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--tenants", type=int, default=4)
    ap.add_argument("--problems", type=int, default=4, help="problems per tenant")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max_seconds", type=float, default=900, help="bound on each phase's sending")
    ap.add_argument("--skip", nargs="*", default=[], help="phases to leave out: sequential pooled one noadapt kill")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.clients < 1 or args.tenants < 1 or args.clients > 64 or args.tenants > 64:
        ap.error("--clients and --tenants must be 1..64 (loopback load, bounded)")
    tmp = Path(tempfile.mkdtemp(prefix="serve_load_"))
    model = args.model
    if model == "tiny":
        from zs_llm.testing import char_tokenizer, tiny_model

        model = str(tmp / "tiny")
        tiny_model("llama").save_pretrained(model)
        char_tokenizer().save_pretrained(model)
    work = plan(args.tenants, args.problems, args.clients)
    print(f"[serve_load] {args.model}, {args.method}, {args.clients} clients, {args.tenants} tenants x "
          f"{args.problems} problems, {args.tokens} tokens, {args.threads} threads; logs in {tmp}", flush=True)
    rows, kill = [], None
    pool = min(args.tenants, 8)
    if "sequential" not in args.skip:
        recs, dt = sequential(model, args.method, work, args.tokens, args.threads)
        rows.append(summary("adapt_generate one at a time, in process", recs, dt))
        rows[-1].update(loop_s=sum(r["seconds"] for r in recs), checkpoint_s=0.0)
        print(rows[-1], flush=True)
    phases = [("pooled", f"server, {args.method}, pooled (--max_pool {pool})", args.method, pool),
              ("one", f"server, {args.method}, one request at a time (--max_pool 1)", args.method, 1),
              ("noadapt", f"server, noadapt, pooled (--max_pool {pool})", "noadapt", pool)]
    for key, name, method, mp in phases:
        if key in args.skip:
            continue
        rows.append(served(name, model, method, work, args.tokens, args.threads, mp, tmp, args.max_seconds))
        print(rows[-1], flush=True)
    if "kill" not in args.skip:
        kill = kill_test(model, args.method, work, args.tokens, args.threads, pool, tmp, args.max_seconds)
        print(kill, flush=True)
    print("\n| serving | answered | requests/min | p50 latency s | p95 latency s | mean tokens | mean pool | "
          "wall s: total / loop / checkpoints |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['serving']} | {r['requests']} | {r['per_min']:.1f} | {r['p50']:.2f} | {r['p95']:.2f} | "
              f"{r['tokens']:.1f} | {r['pool']:.2f} | {r['seconds']:.0f} / {r['loop_s']:.0f} / "
              f"{r['checkpoint_s']:.1f} |")
    if kill:
        print(f"\nkill -9 after {kill['answered_before_kill']} of {kill['requests']} answers: restart "
              f"{kill['restart_s']:.1f} s, resumed at {kill['resumed']}; {kill['lost']} requests lost (errors, "
              f"retried: {kill['retried_ok']} answered on retry), {kill['updates_without_answer']} updates kept "
              f"whose answer was lost, {kill['wrong']} wrong")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "kill": kill, "args": vars(args)}, indent=1))
    return {"rows": rows, "kill": kill}


if __name__ == "__main__":
    main()
