"""Fault injection: kill -9 at random points, damaged files, concurrent runs, bad input, NaN/inf.

    .venv/bin/python tests/probes/fault_injection.py [--seeds 12] [--quick] [--work DIR] [--json FILE]

Every case runs on tiny random models (`zs_llm.testing`) and is classified:
- clean: the outcome is right (a resumed run equals an uninterrupted one row by row and state by
  state; a bad input is refused in one line that names what to fix);
- silently wrong: a run finished with rows or states that differ from the uninterrupted run's,
  or a bad input was accepted;
- crash: a traceback (or an unexpected exception) where a one-line error belongs, or a resume
  that failed;
- data lost: a valid row (or a damaged line) that existed before the resume is neither in the
  rows nor in quarantine/, or a file the run did not write was removed;
- hang: a case that ran past its time limit.

kill -9 cases run in children forked from this process (everything imported, torch on one
thread, no other threads alive), so a case costs a fork, not an interpreter start (an
interpreter start with torch takes 10-30 s on 2 busy cores): a child runs the harness with a hook that sends
itself SIGKILL at the k-th row write (after a random part of the line), inside the k-th
checkpoint write (at a random file operation), around the k-th optimizer step, or the parent
kills it after a random delay. The parent then resumes the run in-process and compares rows
(all fields but wall-clock times) and every checkpoint the resume wrote (sha256 of its tensor
file, optimizer metadata) with an uninterrupted run of the same configuration. The table
prints category, cases, clean, silently wrong, crash, data lost, hang.

The `generated` part (tests/probes/fault_cases.py) grows the suite by class, not by case: for each of
--seeds seeds, a generator per class draws new inputs (option names, values and orders through
flags, YAML and --set; what changes between a kill and its resume, and where the kill falls; bad
golds; every tiny architecture with random methods; ...). `--classes` runs some of them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import multiprocessing as mp
import os
import pathlib
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for _path in (REPO, Path(__file__).resolve().parent):  # the harness, and fault_cases beside this script
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from fault_cases import GENERATORS, Ctx, generate, run_case  # noqa: E402
from tqdm import tqdm  # noqa: E402

import eval.grading  # noqa: E402
import eval.runner  # noqa: E402
import eval.writer  # noqa: E402
import zs_llm.checkpoint  # noqa: E402
from eval.rows import RowsAppender, RunFolderBusy, RunLock, scan_rows  # noqa: E402
from eval.runner import RunConfig, Runner, list_checkpoints, result_signature  # noqa: E402
from zs_llm.adapt import adapt_on_problem  # noqa: E402
from zs_llm.testing import char_tokenizer, tiny_model  # noqa: E402

OUTCOMES = ("clean", "silently wrong", "crash", "data lost", "hang")
# Streams run one at a time (stream_batch 1): a resume is judged bit for bit against the
# uninterrupted run, and a pool that resumes with other streams beside it rounds its batched
# matmuls differently (the runner then quarantines and rewrites the rows that changed;
# tests/test_pool_runner.py checks a pooled kill and resume).
CONFIGS = {
    # batched noadapt beside an online, checkpointed ZeroSiam stream (SGD, a checkpoint per problem)
    "A": dict(methods=["noadapt", "zerosiam"], limit=6, batch_size=4, checkpoint_every=1, stream_batch=1,
              adapt={"max_new_tokens": 5, "lr": 1e-2, "predictor_lr": 1e-2}),
    # two online streams with AdamW state, a checkpoint every second problem (kills between them replay)
    "B": dict(methods=["tent", "zerosiam:alpha=0.5"], limit=6, batch_size=2, checkpoint_every=2, stream_batch=1,
              adapt={"max_new_tokens": 4, "lr": 1e-3, "optimizer": "adamw"}),
}
CASE_TIMEOUT_S = 120
PARTS = ("kills", "saves", "damage", "concurrency", "user", "nonfinite", "generated")


def _no_grader_start(self):  # arith golds are integers, graded without the worker: start it lazily
    pass


eval.grading.Grader.start = _no_grader_start
tqdm.monitor_interval = 0  # no monitor thread: a fork must not copy a lock another thread holds


# --- results ---------------------------------------------------------------------------------
@dataclass
class Result:
    category: str
    name: str
    outcome: str
    detail: str = ""


@dataclass
class Bench:
    work: Path
    model_dir: Path
    results: list[Result] = field(default_factory=list)
    refs: dict = field(default_factory=dict)  # config -> (signatures, states)
    kills: int = 0  # processes that died by SIGKILL
    resumed: int = 0  # of them, harness runs resumed and compared with an uninterrupted run

    def add(self, category: str, name: str, outcome: str, detail: str = "") -> None:
        assert outcome in OUTCOMES, outcome
        self.results.append(Result(category, name, outcome, detail))
        mark = "ok " if outcome == "clean" else "!! "
        print(f"  {mark}{category:<24} {name:<44} {outcome}" + (f": {detail[:300]}" if detail else ""), flush=True)

    def run_config(self, key: str, **over) -> RunConfig:
        c = {**CONFIGS[key], **over}
        return RunConfig(model=str(self.model_dir), datasets=["arith"], **c)


# --- recording states -----------------------------------------------------------------------
STATES: dict[tuple[str, int], str] = {}


def _record_states():
    """Wrap save_checkpoint so every checkpoint written records (stream, problems) -> its state."""
    original = zs_llm.checkpoint.save_checkpoint

    def recording(lm, directory, extra=None):
        d = original(lm, directory, extra)
        if d.name.isdigit():
            STATES[(d.parent.name, int(d.name))] = state_key(d)
        return d

    zs_llm.checkpoint.save_checkpoint = recording


def state_key(folder: Path) -> str:
    """A checkpoint's state: its tensors (the sha256 of their file), optimizer metadata (learning
    rates, step counts), problems seen and guard state. Not the rows hash: rows carry wall-clock times."""
    meta = json.loads((folder / "state.json").read_text())
    return json.dumps([meta["sha256"], meta["optimizer"], meta["problems_seen"], meta["extra"].get("guard")],
                      sort_keys=True)


_record_states()


def signatures(out: Path) -> dict:
    sig = {}
    for path in sorted((out / "rows").glob("*.jsonl")):
        f = scan_rows(path)
        sig[path.name] = sorted((r["index"], result_signature(r)) for r in f.rows)
    return sig


def snapshot_rows(out: Path) -> dict[str, tuple[set[str], set[str]]]:
    """Per rows file: (valid row lines, bad line texts) as they are now."""
    snap = {}
    for path in sorted((out / "rows").glob("*.jsonl")):
        f = scan_rows(path)
        snap[path.name] = (set(f.lines), {b.text for b in f.bad if b.text.strip()})
    return snap


def quarantined_texts(out: Path) -> set[str]:
    texts = set()
    for p in (out / "quarantine").glob("*.jsonl") if (out / "quarantine").is_dir() else []:
        for line in p.read_text(encoding="utf-8").splitlines():
            texts.add(json.loads(line)["text"])
    return texts


def judge_resume(bench: Bench, key: str, out: Path, before: dict) -> tuple[str, str]:
    """Resume `out` in this process and compare it with the uninterrupted run of config `key`."""
    ref_sig, ref_states = bench.refs[key]
    STATES.clear()
    try:
        with time_limit(CASE_TIMEOUT_S):
            Runner(bench.run_config(key), out, progress=False).run()
    except TimeoutError:
        return "hang", "resume ran past its time limit"
    except Exception as e:  # noqa: BLE001 - a failed resume is the finding
        return "crash", f"resume failed: {type(e).__name__}: {e}"
    after = {name: set(scan_rows(out / "rows" / name).lines) for name in before}
    kept = quarantined_texts(out)
    for name, (lines, bad) in before.items():
        lost = [x for x in lines if x not in after.get(name, set()) and x not in kept]
        lost += [x for x in bad if x not in kept]
        if lost:
            return "data lost", f"{name}: {len(lost)} line(s) neither in the rows nor in quarantine"
    sig = signatures(out)
    if sig != ref_sig:
        diff = [n for n in ref_sig if sig.get(n) != ref_sig[n]]
        return "silently wrong", f"rows differ from the uninterrupted run in {diff}"
    for k, v in STATES.items():
        if ref_states.get(k) != v:
            return "silently wrong", f"state after {k[1]} problems of {k[0]} differs from the uninterrupted run's"
    for folder in (out / "state").iterdir() if (out / "state").is_dir() else []:
        for n, p in list_checkpoints(folder):
            if ref_states.get((folder.name, n)) != state_key(p):
                return "silently wrong", f"checkpoint {folder.name}/{n} on disk differs from the uninterrupted run's"
    left = [p.name for p in out.rglob(".*.tmp-*")]
    if left:
        return "crash", f"temporary files left after the resume: {left[:3]}"
    return "clean", ""


@contextlib.contextmanager
def time_limit(seconds: int):
    def fire(signum, frame):
        raise TimeoutError

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --- children: a run that kills itself ------------------------------------------------------
def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)


class FileBomb:
    """SIGKILL at the n-th file operation while armed; a `Path.write_bytes` it stops is cut in half first."""

    def __init__(self, n: int):
        self.n, self.calls, self.armed = n, 0, False

    def install(self) -> None:
        bomb = self

        def wrap(owner, name):
            original = getattr(owner, name)

            def hooked(*a, **k):
                if bomb.armed:
                    bomb.calls += 1
                    if bomb.calls >= bomb.n:
                        if owner is pathlib.Path and name == "write_bytes":
                            with open(a[0], "wb") as f:
                                f.write(a[1][: len(a[1]) // 2])
                        die()
                return original(*a, **k)

            setattr(owner, name, hooked)

        for name in ("fsync", "replace", "rename", "unlink"):
            wrap(os, name)
        for name in ("rename", "unlink", "write_text", "write_bytes"):
            wrap(pathlib.Path, name)
        wrap(shutil, "rmtree")


def child_run(model_dir: str, out: str, key: str, mode: str, k: int, j: int, frac: float) -> None:
    """A harness run on `out` that kills itself: mode rows (k-th row write, `frac` of the line),
    checkpoint (k-th checkpoint, j-th file operation), step (k-th optimizer step, before or after
    the update by j), or none."""
    torch.set_num_threads(1)
    if mode == "rows":
        original = RowsAppender.append
        count = [0]

        def append(self, line):
            count[0] += 1
            if count[0] == k:
                cut = int(frac * (len(line) + 2))  # len + 1: the whole line and its newline
                self.f.write((line + "\n")[:cut] if cut <= len(line) else line + "\n")
                self.f.flush()
                os.fsync(self.f.fileno())
                die()
            original(self, line)

        RowsAppender.append = append
    elif mode == "checkpoint":
        bomb = FileBomb(j)
        bomb.install()
        save, prune = zs_llm.checkpoint.save_checkpoint, eval.writer.prune_checkpoints
        count = [0]

        def armed(fn):
            def run(*a, **kw):
                bomb.armed = count[0] == k
                try:
                    return fn(*a, **kw)
                finally:
                    bomb.armed = False

            return run

        def counted_save(*a, **kw):
            count[0] += 1
            return armed(save)(*a, **kw)

        zs_llm.checkpoint.save_checkpoint = counted_save
        eval.writer.prune_checkpoints = armed(prune)
    elif mode == "step":
        count = [0]
        for cls in (torch.optim.SGD, torch.optim.AdamW):
            original = cls.step

            def step(self, *a, _original=original, **kw):
                count[0] += 1
                if count[0] == k and j == 0:
                    die()
                out = _original(self, *a, **kw)
                if count[0] == k:
                    die()
                return out

            cls.step = step
    elif mode == "slow":
        original = RowsAppender.append

        def append(self, line):
            time.sleep(frac)
            original(self, line)

        RowsAppender.append = append
    cfg = RunConfig(model=model_dir, datasets=["arith"], **CONFIGS[key])
    try:
        Runner(cfg, out, progress=False).run()
    except RunFolderBusy:
        os._exit(3)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def child_cache(model_dir: str, folder: str, j: int) -> None:
    """Write the model cache (a tiny model stands in for SmolLM2), killed at the j-th file operation."""
    from zs_llm.loading import write_cache

    bomb = FileBomb(j)
    bomb.install()
    bomb.armed = True
    write_cache(tiny_model("llama"), char_tokenizer(), Path(folder))
    os._exit(0)


def child_save_pretrained(folder: str, seed: int, j: int) -> None:
    """Save an adapter over an older save of the same folder, killed at the j-th file operation."""
    from zs_llm import AdaptConfig, ZeroSiamLM

    torch.set_num_threads(1)
    lm = ZeroSiamLM(tiny_model("llama"), char_tokenizer(), AdaptConfig(method="zerosiam", max_new_tokens=4,
                                                                          seed=seed))
    with torch.no_grad():
        lm.predictor.weight.add_(float(seed))  # this save's predictor: identity + seed
    bomb = FileBomb(j)
    bomb.install()
    bomb.armed = True
    lm.save_pretrained(folder)
    os._exit(0)


def child_real_cache(cache: str, j: int) -> None:
    """Load the embedded SmolLM2 from its GGUF with an empty cache, killed at the j-th file
    operation of the cache write."""
    import zs_llm.loading

    os.environ["ZS_LLM_CACHE"] = cache
    bomb = FileBomb(j)
    bomb.install()
    original = zs_llm.loading.write_cache

    def write(*a, **kw):
        bomb.armed = True
        return original(*a, **kw)

    zs_llm.loading.write_cache = write
    zs_llm.loading.load_model("smollm2-135m-instruct")
    os._exit(0)


def spawn(ctx, target, *args) -> mp.Process:
    p = ctx.Process(target=target, args=args)
    p.start()
    return p


def join(p: mp.Process, timeout: float = CASE_TIMEOUT_S) -> int | None:
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        return None
    return p.exitcode


# --- the categories -------------------------------------------------------------------------
def kill_cases(bench: Bench, ctx, mode: str, seeds: list[int], durations: dict[str, float]) -> None:
    category = {"rows": "kill -9 in rows write", "checkpoint": "kill -9 in checkpoint", "step": "kill -9 in opt. step",
                "time": "kill -9 at random time"}[mode]
    for seed in seeds:
        rng = random.Random(f"{mode}-{seed}")
        key = "AB"[seed % 2]
        c = CONFIGS[key]
        adapting = [m for m in c["methods"] if not m.startswith("noadapt")]
        n_rows = c["limit"] * len(c["methods"])
        n_ckpt = -(-c["limit"] // c["checkpoint_every"]) * len(adapting)
        k = rng.randint(1, {"rows": n_rows, "checkpoint": n_ckpt, "step": c["limit"] * len(adapting), "time": 1}[mode])
        j = rng.randint(1, 13) if mode == "checkpoint" else rng.randint(0, 1)
        frac = rng.random()
        out = bench.work / f"kill-{mode}-{seed}"
        name = f"seed {seed}, config {key}, " + {"rows": f"row {k}, {frac:.0%} of the line",
                                                  "checkpoint": f"checkpoint {k}, file op {j}",
                                                  "step": f"step {k}, {'before' if j == 0 else 'after'} the update",
                                                  "time": ""}[mode]
        if mode == "time":
            delay = rng.uniform(0.05, 0.95) * durations[key]
            name += f"after {delay:.2f} s"
            p = spawn(ctx, child_run, str(bench.model_dir), str(out), key, "none", 0, 0, 0.0)
            time.sleep(delay)
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
            code = join(p)
        else:
            code = join(spawn(ctx, child_run, str(bench.model_dir), str(out), key, mode, k, j, frac))
        if code is None:
            bench.add(category, name, "hang", "the killed run did not end")
            continue
        if code not in (0, -signal.SIGKILL):
            bench.add(category, name, "crash", f"the run exited with {code} before the kill")
            continue
        bench.kills += code == -signal.SIGKILL
        bench.resumed += code == -signal.SIGKILL
        if code == 0:
            name += " (finished first)"
        outcome, detail = judge_resume(bench, key, out, snapshot_rows(out) if (out / "rows").exists() else {})
        bench.add(category, name, outcome, detail)
        shutil.rmtree(out, ignore_errors=True)


def damage_cases(bench: Bench, quick: bool) -> None:
    """Damaged rows files and checkpoints in a finished run of config A, then a resume."""
    z, n = "zerosiam__arith.jsonl", "noadapt__arith.jsonl"

    def lines(path):
        return path.read_text(encoding="utf-8", errors="surrogateescape").splitlines(keepends=True)

    def edit(out, name, fn):
        p = out / "rows" / name
        p.write_text("".join(fn(lines(p))), encoding="utf-8", errors="surrogateescape")

    def corrupt(i):
        return lambda ls: ls[:i] + [ls[i][: len(ls[i]) // 3] + "\n"] + ls[i + 1:]

    def edited(ls):
        row = json.loads(ls[1])
        row["extracted"], row["correct"] = "42", True
        return [ls[0], json.dumps(row) + "\n"] + ls[2:]

    def damage_ckpt(out, how):
        p = out / "rows" / z
        p.write_text("".join(lines(p)[:-1]))  # the last row lost: resume needs the (damaged) checkpoint 5
        folder = sorted((out / "state" / "zerosiam__arith").iterdir())[0]
        f = folder / "state.safetensors"
        if how == "truncate":
            f.write_bytes(f.read_bytes()[:-64])
        elif how == "delete_json":
            (folder / "state.json").unlink()
        else:
            from safetensors.torch import load, save

            t = load(f.read_bytes())
            name = sorted(t)[0]
            t[name] = t[name].clone()
            t[name].view(-1)[0] = float("nan") if how == "nan" else 1e30
            f.write_bytes(save(t))  # the recorded sha256 no longer matches either

    cases = {
        "corrupt middle line (zerosiam row 3)": lambda out: edit(out, z, corrupt(3)),
        "corrupt middle line (noadapt row 1)": lambda out: edit(out, n, corrupt(1)),
        "torn last row, checkpoint past it": lambda out: edit(out, z, lambda ls: ls[:-1] + [ls[-1][:50]]),
        "non-UTF-8 bytes in a line": lambda out: (out / "rows" / z).write_bytes(
            (out / "rows" / z).read_bytes().replace(b'"index": 2', b'"ind\xff\xfe": 2', 1)),
        "duplicated line": lambda out: edit(out, z, lambda ls: ls[:3] + [ls[2]] + ls[3:]),
        "line deleted (a gap)": lambda out: edit(out, z, lambda ls: ls[:2] + ls[3:]),
        "blank line inserted": lambda out: edit(out, n, lambda ls: ls[:2] + ["\n"] + ls[2:]),
        "edited row (valid JSON)": lambda out: edit(out, z, edited),
        "rows file emptied": lambda out: (out / "rows" / z).write_text(""),
        "rows file deleted": lambda out: (out / "rows" / z).unlink(),
        "rows out of order": lambda out: edit(out, z, lambda ls: ls[::-1]),
        "truncated state.safetensors": lambda out: damage_ckpt(out, "truncate"),
        "state.json deleted": lambda out: damage_ckpt(out, "delete_json"),
        "NaN in a checkpoint tensor": lambda out: damage_ckpt(out, "nan"),
        "1e30 in a checkpoint tensor": lambda out: damage_ckpt(out, "huge"),
    }
    if quick:
        cases = dict(list(cases.items())[:2] + [("truncated state.safetensors", cases["truncated state.safetensors"])])
    for name, damage in cases.items():
        out = bench.work / "damage"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(bench.work / "ref-A", out)
        try:
            damage(out)
        except Exception as e:  # noqa: BLE001
            bench.add("damaged files", name, "crash", f"could not damage: {e}")
            continue
        outcome, detail = judge_resume(bench, "A", out, snapshot_rows(out))
        bench.add("damaged files", name, outcome, detail)


def report_cases(bench: Bench) -> None:
    from eval.cli import main as cli_main

    out = bench.work / "report"
    for name, damage, want in [
        ("corrupted line: refused", lambda p: p.write_text(p.read_text().replace('"index": 3', '"index": 3,,', 1)),
         (2, "is damaged (line 4")),
        ("torn last line: flagged", lambda p: p.write_text(p.read_text()[:-30]), (0, "last line cut short")),
        ("missing row: flagged", lambda p: p.write_text("".join(p.read_text().splitlines(True)[1:])),
         (0, "rows [0] missing")),
    ]:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(bench.work / "ref-A", out)
        damage(out / "rows" / "zerosiam__arith.jsonl")
        code, text = capture(lambda: cli_main(["report", str(out)]))
        ok = code == want[0] and want[1] in text and (code == 0 or text.strip().count("\n") == 0)
        if ok:
            bench.add("report on damage", name, "clean")
        elif code == 0 and want[0] == 2:
            bench.add("report on damage", name, "silently wrong", "a report from a damaged file, exit 0")
        else:
            bench.add("report on damage", name, "crash" if "Traceback" in text else "silently wrong", text[-300:])


def capture(fn) -> tuple[int | None, str]:
    """(return value or exit code, stdout+stderr) of fn(); a traceback is part of the text."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            code = fn()
        except SystemExit as e:
            code = e.code
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            code = None
    return code, buf.getvalue()


def concurrency_cases(bench: Bench, ctx) -> None:
    key = "A"
    # a second run while the first runs: refused at once, naming the first's PID
    out = bench.work / "conc-second"
    p = spawn(ctx, child_run, str(bench.model_dir), str(out), key, "slow", 0, 0, 0.4)
    wait_for(lambda: str(p.pid) in read(out / ".lock"))
    t = time.time()
    try:
        Runner(bench.run_config(key), out, progress=False).run()
        bench.add("concurrent runs", "second run on a running folder", "silently wrong", "it ran")
    except RunFolderBusy as e:
        ok = f"PID {p.pid}" in str(e) and time.time() - t < 5
        bench.add("concurrent runs", "second run on a running folder", "clean" if ok else "crash", "" if ok else str(e))
    except Exception as e:  # noqa: BLE001
        bench.add("concurrent runs", "second run on a running folder", "crash", repr(e))
    code = join(p)
    if code != 0:
        bench.add("concurrent runs", "the first run, undisturbed", "crash", f"exit {code}")
    else:
        sig = signatures(out)
        bench.add("concurrent runs", "the first run, undisturbed",
                  "clean" if sig == bench.refs[key][0] else "silently wrong")
    # two runs started together: one runs, the other is refused (or finds the work done)
    out = bench.work / "conc-together"
    ps = [spawn(ctx, child_run, str(bench.model_dir), str(out), key, "none", 0, 0, 0.0) for _ in range(2)]
    codes = sorted(join(q) for q in ps)
    if None in codes:
        bench.add("concurrent runs", "two runs started together", "hang")
    elif codes not in ([0, 0], [0, 3]):
        bench.add("concurrent runs", "two runs started together", "crash", f"exit codes {codes}")
    else:
        ok = signatures(out) == bench.refs[key][0]
        bench.add("concurrent runs", f"two runs started together (exits {codes})", "clean" if ok else "silently wrong")
    # the holder killed: its lock goes with it, and the resume is exact
    out = bench.work / "conc-killed"
    p = spawn(ctx, child_run, str(bench.model_dir), str(out), key, "slow", 0, 0, 0.3)
    wait_for(lambda: read(out / "rows" / "noadapt__arith.jsonl").count("\n") >= 2)
    os.kill(p.pid, signal.SIGKILL)
    killed = join(p) == -signal.SIGKILL
    bench.kills += killed
    bench.resumed += killed
    outcome, detail = judge_resume(bench, key, out, snapshot_rows(out))
    bench.add("concurrent runs", "lock holder killed, then resumed", outcome, detail)
    # the ranks of one multi-process run share the folder; any other run is refused
    out = bench.work / "conc-ranks"
    held = [RunLock(out, 0, 2).acquire(), RunLock(out, 1, 2).acquire()]
    refused = []
    for rank, world in ((0, 1), (0, 2), (1, 3)):
        try:
            RunLock(out, rank, world).acquire().release()
        except RunFolderBusy:
            refused.append((rank, world))
    for h in held:
        h.release()
    bench.add("concurrent runs", "ranks share a folder, others refused",
              "clean" if refused == [(0, 1), (0, 2), (1, 3)] else "silently wrong", f"refused {refused}")
    # --overwrite removes what a run wrote and nothing else
    out = bench.work / "conc-overwrite"
    Runner(bench.run_config(key, limit=2), out, progress=False).run()
    (out / "mine.txt").write_text("notes")
    (out / "plots-of-mine").mkdir()
    Runner(bench.run_config(key, limit=3), out, progress=False, overwrite=True).run()
    kept = (out / "mine.txt").exists() and (out / "plots-of-mine").is_dir()
    bench.add("concurrent runs", "--overwrite keeps unrelated files", "clean" if kept else "data lost")


def read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def wait_for(cond, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not cond():
        time.sleep(0.05)


def cache_cases(bench: Bench, ctx, seeds: list[int], real: bool) -> None:
    from zs_llm import AdaptConfig, ZeroSiamLM
    from zs_llm.loading import cache_complete, write_cache

    for seed in seeds:
        rng = random.Random(f"cache-{seed}")
        j = rng.randint(1, 30)
        folder = bench.work / f"cache-{seed}" / "smollm2-135m-instruct"
        code = join(spawn(ctx, child_cache, str(bench.model_dir), str(folder), j))
        bench.kills += code == -signal.SIGKILL
        name = f"seed {seed}: model cache write, file op {j}" + (" (finished first)" if code == 0 else "")
        complete = cache_complete(folder)
        if code == 0 and not complete:
            bench.add("kill -9 in cache write", name, "silently wrong", "a finished write left an incomplete cache")
            continue
        if not complete:
            write_cache(tiny_model("llama"), char_tokenizer(), folder)  # what the next load does
        from transformers import AutoModelForCausalLM

        try:
            m = AutoModelForCausalLM.from_pretrained(folder)
            same = all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), tiny_model("llama").state_dict()
                                                         .values()))
            left = list(folder.parent.glob(".*tmp*"))
            bench.add("kill -9 in cache write", name, "clean" if same and cache_complete(folder) and not left else
                      "silently wrong", "" if same else "the rebuilt cache holds other weights")
        except Exception as e:  # noqa: BLE001
            bench.add("kill -9 in cache write", name, "data lost", f"the cache does not load: {e}")
    for seed in seeds:
        rng = random.Random(f"save-{seed}")
        j = rng.randint(1, 24)
        folder = bench.work / f"adapter-{seed}"
        old = ZeroSiamLM(tiny_model("llama"), char_tokenizer(), AdaptConfig(method="zerosiam", max_new_tokens=4))
        old.save_pretrained(folder)  # the previous save: identity predictor
        code = join(spawn(ctx, child_save_pretrained, str(folder), seed + 1, j))
        bench.kills += code == -signal.SIGKILL
        name = f"seed {seed}: save_pretrained over a save, file op {j}" + (" (finished first)" if code == 0 else "")
        try:
            lm = ZeroSiamLM.from_pretrained(folder, tiny_model("llama"), char_tokenizer())
            w = lm.predictor.weight.detach()
            shift = float((w - torch.eye(w.shape[0])).mean())
            whole = abs(shift) < 1e-6 or abs(shift - (seed + 1)) < 1e-4
            bench.add("kill -9 in adapter save", name, "clean" if whole else "silently wrong",
                      "" if whole else "a mix of two saves loaded")
        except (FileNotFoundError, ValueError) as e:
            one = "\n" not in str(e) and ("save" in str(e))
            bench.add("kill -9 in adapter save", name + " (refused)", "clean" if one else "crash", str(e))
        except Exception as e:  # noqa: BLE001
            bench.add("kill -9 in adapter save", name, "crash", repr(e))
    if real:
        from zs_llm.loading import load_model

        cache = bench.work / "real-cache"
        j = random.Random("real").randint(2, 8)
        code = join(spawn(ctx, child_real_cache, str(cache), j), timeout=900)
        bench.kills += code == -signal.SIGKILL
        label = f"SmolLM2 cache, file op {j}" + (" (finished first)" if code == 0 else "")
        os.environ["ZS_LLM_CACHE"] = str(cache)
        try:
            model, tok = load_model("smollm2-135m-instruct")  # rebuilds when incomplete
            again, _ = load_model("smollm2-135m-instruct")  # from the cache
            ids = tok("What is 2 + 3?", return_tensors="pt").input_ids
            same = torch.equal(model(ids).logits, again(ids).logits)
            bench.add("kill -9 in cache write", label, "clean" if same and
                      cache_complete(cache / "smollm2-135m-instruct") else "silently wrong")
        except Exception as e:  # noqa: BLE001
            bench.add("kill -9 in cache write", label, "data lost", repr(e)[:300])
        finally:
            os.environ.pop("ZS_LLM_CACHE", None)


def user_error_cases(bench: Bench, quick: bool) -> None:
    """Each input a new user or a careless operator gives: one line, exit 2, naming file/field/fix."""
    from eval.cli import main as cli_main
    from recipes._common import cli as recipe_cli
    from recipes._common import split

    w = bench.work / "user"
    w.mkdir(exist_ok=True)
    model = str(bench.model_dir)

    def run_argv(*extra, out=None):
        return ["run", "--model", model, "--out", str(out or (w / "o")), "--limit", "2", "--methods", "noadapt",
                "--no-progress", *extra]

    def yaml_file(name, text):
        (w / name).write_text(text)
        return str(w / name)

    def data(name, folder, text):
        d = w / name / folder
        d.mkdir(parents=True, exist_ok=True)
        (d / "test.jsonl").write_text(text)
        return str(w / name)

    def damaged_run_json():
        out = w / "rj"
        Runner(bench.run_config("A", methods=["noadapt"], limit=1), out, progress=False).run()
        (out / "run.json").write_text('{\n  "config_hash": \n')
        return run_argv(out=out)

    def recipe(argv):
        old = sys.argv
        sys.argv = ["recipe", *argv]
        try:
            recipe_cli(split, REPO / "recipes" / "configs" / "smollm2_135m_math.yaml")
            return 0
        finally:
            sys.argv = old

    cases = [
        ("invalid YAML", lambda: run_argv("--config", yaml_file("a.yaml", "limit: 2\n  methods: [x\n")),
         ["a.yaml", "invalid YAML at line"]),
        ("YAML lr: fast", lambda: run_argv("--config", yaml_file("b.yaml", "adapt:\n  lr: fast\n")),
         ["b.yaml", "lr expects float", "e.g. 1.0e-4"]),
        ("YAML seed: ten", lambda: run_argv("--config", yaml_file("c.yaml", "seed: ten\n")), ["c.yaml", "seed expects int"]),
        ("YAML misspelt field", lambda: run_argv("--config", yaml_file("d.yaml", "limt: 3\n")), ["d.yaml", "limt"]),
        ("YAML misspelt setting", lambda: run_argv("--config", yaml_file("e.yaml", "adapt:\n  lrr: 1\n")),
         ["e.yaml", "lrr"]),
        ("YAML not a mapping", lambda: run_argv("--config", yaml_file("f.yaml", "- 1\n- 2\n")), ["f.yaml", "mapping"]),
        ("config file missing", lambda: run_argv("--config", str(w / "none.yaml")), ["none.yaml", "does not exist"]),
        ("--set lr=nan", lambda: run_argv("--methods", "tent", "--set", "lr=nan"), ["lr=nan", "finite"]),
        ("--set temperature=inf", lambda: run_argv("--set", "temperature=inf"), ["temperature=inf", "finite"]),
        ("--set lr=abc", lambda: run_argv("--set", "lr=abc"), ["lr=abc", "expects float"]),
        ("spec zerosiam:alpha=nan", lambda: run_argv("--methods", "zerosiam:alpha=nan"), ["alpha=nan", "finite"]),
        ("unknown method", lambda: run_argv("--methods", "tnet"), ["tnet"]),
        ("--out under a file", lambda: touch(w / "afile") and run_argv(out=w / "afile" / "run"),
         ["afile", "is a file", "--out"]),
        ("--out is a file", lambda: run_argv(out=w / "afile"), ["afile", "--out"]),
        ("damaged run.json", damaged_run_json, ["run.json is damaged", "--overwrite"]),
        ("unknown hub id (offline)", lambda: run_argv(out=w / "hub")[:2] + ["zs-llm-bench/no-such-model"]
         + run_argv(out=w / "hub")[3:], ["no-such-model", "local model folder"]),
        ("dataset line not JSON", lambda: run_argv("--datasets", "gsm8k", "--data-dir", data(
            "d1", "gsm8k", '{"question": "a", "answer": "#### 1"}\n{"quest\n')), ["test.jsonl line 2"]),
        ("AIME row without answer", lambda: run_argv("--datasets", "aime24", "--data-dir", data(
            "d2", "aime24", '{"problem": "2+2?"}\n')), ["test.jsonl line 1", "has no answer"]),
        ("empty dataset file", lambda: run_argv("--datasets", "gsm8k", "--data-dir", data("d3", "gsm8k", "\n")),
         ["holds no problems"]),
        ("lone surrogate in a question", lambda: run_argv("--datasets", "gsm8k", "--data-dir", data(
            "d4", "gsm8k", '{"question": "a\\ud800", "answer": "#### 1"}\n')), ["lone surrogate"]),
        ("--data-dir missing", lambda: run_argv("--datasets", "gsm8k", "--data-dir", str(w / "nodata")),
         ["nodata", "--data-dir"]),
        ("report on a folder without rows", lambda: ["report", str(w)], ["no rows/ folder"]),
    ]
    recipe_cases = [
        ("recipe --config misspelt field", lambda: ["--config", yaml_file("g.yaml", "lrr: 1\n")], ["g.yaml", "lrr"]),
        ("recipe --config invalid YAML", lambda: ["--config", yaml_file("h.yaml", "lr: [1\n")],
         ["h.yaml", "invalid YAML"]),
        ("recipe --lr abc", lambda: ["--lr", "abc"], ["--lr", "'abc'", "expects float"]),
        ("recipe YAML limit: many", lambda: ["--config", yaml_file("i.yaml", "limit: many\n")],
         ["i.yaml", "limit expects int"]),
    ]
    if quick:
        cases, recipe_cases = cases[:3], recipe_cases[:1]
    import huggingface_hub.constants

    offline, huggingface_hub.constants.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE, True
    try:
        for name, make, words in cases:
            judge_error(bench, name, lambda make=make: cli_main(make()), words)
        for name, make, words in recipe_cases:
            judge_error(bench, name, lambda make=make: recipe(make()), words)
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE = offline
    # accepted, not refused: PyYAML's string '1e-4' is the number it means
    code, text = capture(lambda: recipe(["--config", yaml_file("j.yaml", "lr: 1e-4\nmethods: [tent]\n")]))
    bench.add("user errors", "recipe YAML lr: 1e-4 is read as 1e-4", "clean" if code == 0 else "crash", text[-200:])
    library_errors(bench, quick)


def touch(path: Path) -> bool:
    path.write_text("x")
    return True


def judge_error(bench: Bench, name: str, fn, words: list[str]) -> None:
    code, text = capture(fn)
    last = text.strip().splitlines()[-1] if text.strip() else ""
    if "Traceback" in text:
        bench.add("user errors", name, "crash", text.strip().splitlines()[-1])
    elif code in (0, None):
        bench.add("user errors", name, "silently wrong", f"accepted (exit {code})")
    elif code == 2 and last.startswith("error: ") and all(x in last for x in words):
        bench.add("user errors", name, "clean")
    else:
        bench.add("user errors", name, "crash", f"exit {code}: {last[:200]}")


def library_errors(bench: Bench, quick: bool) -> None:
    from zs_llm import AdaptConfig, ZeroSiamLM, adapt_generate

    lm = ZeroSiamLM(tiny_model("llama"), char_tokenizer(), AdaptConfig(method="tent", max_new_tokens=4))
    cases = [
        ("adapt_generate(lm, None)", lambda: adapt_generate(lm, None), "the prompt is NoneType"),
        ("message without content", lambda: adapt_generate(lm, [{"role": "user"}]), "has no 'content'"),
        ("lone surrogate in a prompt", lambda: adapt_generate(lm, "2+2=\udc80"), "lone surrogate"),
        ("empty prompt", lambda: adapt_generate(lm, "  "), "empty prompt"),
        ("AdaptConfig(lr=nan, temperature=nan)", lambda: AdaptConfig(lr=float("nan"), temperature=float("nan")),
         "not a finite number"),
        ("AdaptConfig(momentum=inf)", lambda: AdaptConfig(momentum=float("inf")), "not a finite number"),
        ("AdaptConfig(method='zerosiam', alpha=nan)", lambda: AdaptConfig(method="zerosiam", alpha=float("nan")),
         "not a finite number"),
    ]
    if quick:
        cases = cases[:2]
    for name, fn, words in cases:
        try:
            fn()
            bench.add("user errors", name, "silently wrong", "accepted")
        except ValueError as e:
            ok = words in str(e) and "\n" not in str(e)
            bench.add("user errors", name, "clean" if ok else "crash", "" if ok else str(e))
        except Exception as e:  # noqa: BLE001
            bench.add("user errors", name, "crash", repr(e))


def non_finite_cases(bench: Bench, quick: bool) -> None:
    """NaN/inf in the loss, the gradients, the logits, and in saved files."""
    from safetensors.torch import load_file, save_file

    from zs_llm import AdaptConfig, ZeroSiamLM
    from zs_llm.checkpoint import load_checkpoint, save_checkpoint
    from zs_llm.diagnostics import collapse_measures

    def make():
        return ZeroSiamLM(tiny_model("llama"), char_tokenizer(), AdaptConfig(method="zerosiam", max_new_tokens=4,
                                                                                lr=1e-2))

    def stream(lm, n=4):
        """n problems; returns (rows for the verdict, whether any trainable tensor moved)."""
        before = {k: v.clone() for k, v in lm.state_tensors().items()}
        rows = []
        for i in range(n):
            res = adapt_on_problem(lm, f"{i}+1=", problem_id=str(i))
            rows.append({"response": res.answer, "extracted": None, "correct": None, "steps": res.steps})
        moved = any(not torch.equal(before[k], v) for k, v in lm.state_tensors().items())
        finite = all(bool(torch.isfinite(v).all()) for v in lm.state_tensors().values())
        return rows, moved, finite

    def poisoned(kind):
        lm = make()
        if kind in ("NaN loss", "inf loss"):
            value = float("nan") if kind == "NaN loss" else float("inf")
            original = lm.method.backward

            def backward(lm_, batch):
                stats = original(lm_, batch)
                stats["loss"] = value
                return stats

            lm.method.backward = backward
        elif kind == "NaN gradient":
            lm.predictor.weight.register_hook(lambda g: g * float("nan"))
        elif kind == "inf gradient":
            lm.predictor.weight.register_hook(lambda g: g + float("inf"))
        elif kind == "NaN logits":
            lm.head.register_forward_hook(lambda m, a, out: out * float("nan"))
        return lm

    kinds = ["NaN loss", "inf loss", "NaN gradient", "inf gradient", "NaN logits"]
    if quick:
        kinds = kinds[:2]
    for kind in kinds:
        try:
            with contextlib.redirect_stderr(io.StringIO()), warnings_off():
                rows, moved, finite = stream(poisoned(kind))
            skipped = all(s["skipped"] for r in rows for s in r["steps"]) and all(r["steps"] for r in rows)
            verdict = collapse_measures(rows)["verdict"]
            ok = skipped and not moved and finite and verdict == "no-update"
            bench.add("non-finite values", kind, "clean" if ok else "silently wrong",
                      "" if ok else f"skipped {skipped}, moved {moved}, finite {finite}, verdict {verdict}")
        except Exception as e:  # noqa: BLE001
            bench.add("non-finite values", kind, "crash", repr(e)[:300])
    # files: a checkpoint or a saved predictor / adapter holding NaN, inf or 1e30
    d = bench.work / "nonfinite"
    lm = make()
    with warnings_off():
        adapt_on_problem(lm, "1+1=")
    save_checkpoint(lm, d / "ckpt", {})
    lm.save_pretrained(d / "adapter")
    files = [("checkpoint", d / "ckpt" / "state.safetensors", "t.predictor.weight"),
             ("saved predictor", d / "adapter" / "predictor.safetensors", "weight"),
             ("saved LoRA adapter", d / "adapter" / "adapter_model.safetensors", None)]
    values = [("NaN", float("nan")), ("inf", float("inf")), ("1e30", 1e30)]
    if quick:
        values = values[:1]
    for what, path, tensor in files:
        for label, value in values:
            backup = path.read_bytes()
            t = load_file(str(path))
            name = tensor or sorted(t)[0]
            t[name].view(-1)[0] = value
            save_file(t, str(path))
            for hashed in (True, False):
                if not hashed and what == "checkpoint":  # the hash made to match: only the value check is left
                    meta = json.loads((d / "ckpt" / "state.json").read_text())
                    meta["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
                    (d / "ckpt" / "state.json").write_text(json.dumps(meta))
                elif not hashed:  # as if saved by an older version, without recorded hashes
                    cfg = json.loads((d / "adapter" / "zs_llm_config.json").read_text())
                    cfg.pop("files", None)
                    (d / "adapter" / "zs_llm_config.json").write_text(json.dumps(cfg))
                case = f"{label} in a {what}" + ("" if hashed else " (hash not recorded or matching)")
                fresh = make()
                try:
                    if what == "checkpoint":
                        load_checkpoint(fresh, d / "ckpt")
                    else:
                        ZeroSiamLM.from_pretrained(d / "adapter", tiny_model("llama"), char_tokenizer())
                    bench.add("non-finite values", case, "silently wrong", "loaded")
                except ValueError as e:
                    named = (path.name in str(e)) and "\n" not in str(e)
                    bench.add("non-finite values", case, "clean" if named else "crash", "" if named else str(e))
                except Exception as e:  # noqa: BLE001
                    bench.add("non-finite values", case, "crash", repr(e)[:300])
            path.write_bytes(backup)
            save_checkpoint(lm, d / "ckpt", {})
            lm.save_pretrained(d / "adapter")  # the hashes again


def generated_cases(bench: Bench, ctx, seeds: list[int], classes: list[str] | None, quick: bool) -> None:
    """tests/probes/fault_cases.py: a generator per class of input, each seed a new draw of cases."""
    import importlib.util

    cases = generate(seeds, classes, quick=quick, cuda=torch.cuda.is_available(),
                     vllm=importlib.util.find_spec("vllm") is not None)
    print(f"generated cases: {len(cases)} ({', '.join(classes or GENERATORS)}; seeds {seeds})", flush=True)
    run_ctx = Ctx(bench.work, bench.model_dir, ctx)
    for case in cases:
        outcome, detail = run_case(run_ctx, case)
        bench.add(case.category, case.name, outcome, detail)


@contextlib.contextmanager
def warnings_off():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --- main -----------------------------------------------------------------------------------
def table(results: list[Result]) -> tuple[str, dict]:
    by = defaultdict(Counter)
    for r in results:
        by[r.category][r.outcome] += 1
    lines = ["| category | cases | " + " | ".join(OUTCOMES) + " |", "|---|" + "---|" * (len(OUTCOMES) + 1)]
    total = Counter()
    for cat, c in by.items():
        lines.append(f"| {cat} | {sum(c.values())} | " + " | ".join(str(c[o]) for o in OUTCOMES) + " |")
        total.update(c)
    lines.append(f"| **total** | {sum(total.values())} | " + " | ".join(str(total[o]) for o in OUTCOMES) + " |")
    return "\n".join(lines), {"cases": sum(total.values()), **{o: total[o] for o in OUTCOMES}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10, help="seeds per kill -9 category (at least 10 for the issue)")
    ap.add_argument("--quick", action="store_true", help="2 seeds per kill category and a few cases of the rest")
    ap.add_argument("--real-model", action="store_true", help="also kill the first load of the embedded SmolLM2 "
                    "while it writes its cache (two GGUF loads: minutes)")
    ap.add_argument("--only", choices=PARTS, action="append", help="run only these parts (repeatable)")
    ap.add_argument("--classes", choices=list(GENERATORS), action="append", help="the generated part: only these "
                    "classes (repeatable)")
    ap.add_argument("--gen-seeds", type=int, help="seeds of the generated part (default: --seeds; --quick: 1, two "
                    "cases per class)")
    ap.add_argument("--work", help="scratch folder (default: a temporary one, removed at the end)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="zs_faults_"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "tiny_llama"
    tiny_model("llama").save_pretrained(model_dir)
    char_tokenizer().save_pretrained(model_dir)
    bench = Bench(work, model_dir)
    ctx = mp.get_context("fork")
    seeds = list(range(2 if args.quick else args.seeds))

    parts = args.only or PARTS
    durations = {}
    needs_refs = set(parts) & {"kills", "damage", "concurrency"}  # the parts that compare with these runs
    if needs_refs:
        print("uninterrupted reference runs", flush=True)
    for key in CONFIGS if needs_refs else ():
        STATES.clear()
        out = Runner(bench.run_config(key), work / f"ref-{key}", progress=False).run()
        bench.refs[key] = (signatures(out), dict(STATES))
        t = time.time()
        code = join(spawn(ctx, child_run, str(model_dir), str(work / f"time-{key}"), key, "none", 0, 0, 0.0))
        durations[key] = time.time() - t
        if code != 0 or signatures(work / f"time-{key}") != bench.refs[key][0]:
            print(f"a forked run of config {key} does not reproduce the in-process one (exit {code})")
            return 1
    if needs_refs:
        print(f"  forked run: {', '.join(f'{k} {v:.1f} s' for k, v in durations.items())}", flush=True)

    if "kills" in parts:
        for mode in ("rows", "checkpoint", "step", "time"):
            kill_cases(bench, ctx, mode, seeds, durations)
    if "saves" in parts:
        cache_cases(bench, ctx, seeds[:1] if args.quick else seeds[:3], args.real_model)
    if "damage" in parts:
        damage_cases(bench, args.quick)
        report_cases(bench)
    if "concurrency" in parts:
        concurrency_cases(bench, ctx)
    if "user" in parts:
        user_error_cases(bench, args.quick)
    if "nonfinite" in parts:
        non_finite_cases(bench, args.quick)
    if "generated" in parts:
        n = args.gen_seeds if args.gen_seeds is not None else (1 if args.quick else args.seeds)
        generated_cases(bench, ctx, list(range(n)), args.classes, args.quick)

    text, totals = table(bench.results)
    print("\n" + text)
    print(f"\nkill -9: {bench.kills} processes killed, {bench.resumed} of them harness runs resumed and compared "
          f"row by row and state by state; {len(bench.results)} cases in {time.time() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"totals": totals, "kill_resume": bench.resumed, "killed": bench.kills,
                                               "cases": [r.__dict__ for r in bench.results]}, indent=1))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    bad = sum(totals[o] for o in OUTCOMES if o != "clean")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
