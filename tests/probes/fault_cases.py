"""Generated fault cases: one generator per class of input, seeded, so the fault suite covers inputs
nobody wrote by hand (random option names, values and orders; random points of change between a
kill and its resume).

    .venv/bin/python tests/probes/fault_injection.py --only generated --seeds 4 [--classes options ...]

A generator takes a `random.Random` and returns `Case`s: plain data (a category, a name, a kind and
the parameters its executor reads), so one seed always gives the same cases and a test checks them
without running anything. `run_case` sets a case up, runs it and classifies the result into
fault_injection's outcomes. Every `eval` command runs in a child forked from the suite's process
(memory capped, killed past its time limit, output captured); a library call runs in-process.

The expected outcome of each class is the one issue 23 defines, judged through public behaviour
only (exit code and last line of `eval run` / `eval report`, rows, run.json, metrics.json, a
library exception's message):
- run identity: a resume after the model's weights, the data file, $ZS_LLM_DATA_DIR, the chat
  template or the prompt style changed is refused in one line naming what changed;
- lock and folders: a second run is refused even when .lock was deleted under the first; an --out
  inside another run's folder or holding one is refused; `report` on a killed run names the
  streams that are incomplete;
- sampling: with n_samples k and temperature > 0 a row's samples differ, a rerun reproduces them,
  and metrics.json holds maj@k, pass@k and avg@n;
- valid state: a SAR stream's exported adapter loads, and a killed SAR run resumes from its
  checkpoint (no quarantine/, the runner's "resuming from the checkpoint after N problems" line
  when a checkpoint was on disk, rows equal to the uninterrupted run's);
- architectures: several methods on one tiny model of every architecture in zs_llm.testing run;
- options, bad golds, user errors: refused with one line (`error: ...` and exit 2, or a one-line
  ValueError/TypeError/FileNotFoundError) naming the field, file and line, or what to fix, within
  OPTION_TIMEOUT_S (a peft-wrapped model may instead be accepted and adapt).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import shutil
import signal
import string
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

OPTION_TIMEOUT_S = 45  # a refusal takes about a second; past this the case is a hang
RUN_TIMEOUT_S = 180  # a tiny run that is meant to finish
MEMORY_CAP_GB = 4  # address space a child may add: an alias bomb or a huge LoRA fails instead of swapping

# --- cases ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    category: str
    name: str
    kind: str  # which executor runs it (EXECUTORS)
    params: dict = field(default_factory=dict)  # JSON-able: the generator's random draws


def _word(rng: random.Random, n: int | None = None) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(n or rng.randint(3, 9)))


def _shuffled(rng: random.Random, pairs: list[list[str]]) -> list[str]:
    """Flag/value pairs in a random order, flattened."""
    pairs = list(pairs)
    rng.shuffle(pairs)
    return [x for p in pairs for x in p]


def _run_pairs(rng: random.Random, **over) -> list[list[str]]:
    """`eval run` options of a tiny run as flag/value pairs in a random order; {model} and {out}
    are filled in later, an option given None is left out."""
    base = {"--model": "{model}", "--out": "{out}", "--limit": "2", "--methods": "noadapt",
            "--max_new_tokens": "3", **over}
    pairs = [[k, v] for k, v in base.items() if v is not None]
    pairs += [[rng.choice(["--no_progress", "--no-progress"])], ["--no_report"]]
    rng.shuffle(pairs)
    return pairs


def _run_args(rng: random.Random, **over) -> list[str]:
    return ["run", *[x for p in _run_pairs(rng, **over) for x in p]]


def _dataset_lines(rng: random.Random, name: str, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        answer = f"{a} + {b} = {a + b}. #### {a + b}" if name == "gsm8k" else str(a + b)
        rows.append({"question": f"What is {a} + {b}?", "answer": answer})
    return rows


# --- run identity -------------------------------------------------------------------------------
IDENTITY_CHANGES = {  # what changes between the kill and the resume -> words the refusal must hold
    "model weights": ["model"],
    "data file edited": ["gsm8k|test.jsonl"],
    "$ZS_LLM_DATA_DIR elsewhere": ["gsm8k|test.jsonl|ZS_LLM_DATA_DIR|data"],
    "chat template": ["template|chat"],
    "prompt style": ["prompt"],
}
PLAIN_STYLES = ("boxed", "answer_line", "plain", "llama31_paraphrase")  # no published source to read


def gen_identity(rng: random.Random) -> list[Case]:
    cases = []
    for change, words in IDENTITY_CHANGES.items():
        methods = rng.sample(["noadapt", "tent", "zerosiam"], rng.randint(1, 2))
        n = rng.randint(3, 5)
        k = rng.randint(2, n * len(methods))  # the k-th row write dies: at least one whole row is on disk
        style, other = rng.sample(PLAIN_STYLES, 2)
        p = {"change": change, "words": words, "methods": methods, "n": n, "k": k, "frac": round(rng.uniform(0.3, 1), 3),
             "line": rng.randrange(n), "weights_seed": rng.randint(1, 10**6), "style": style, "other_style": other,
             "prefix": _word(rng), "data": _dataset_lines(rng, "gsm8k", n)}
        cases.append(Case("run identity", f"{change}, {','.join(methods)}, killed at row {k}", "identity", p))
    return cases


# --- lock and folders ----------------------------------------------------------------------------
def gen_locks(rng: random.Random) -> list[Case]:
    run_name = f"run-{_word(rng, 5)}"
    inside = "/".join([rng.choice(["rows", "state", "adapters", _word(rng)]), *[_word(rng) for _ in range(rng.randint(0, 2))]])
    above = "/".join([_word(rng) for _ in range(rng.randint(0, 2))] + [run_name])
    methods = rng.sample(["noadapt", "tent", "zerosiam"], 2)
    rows_before, n = rng.randint(0, 2), rng.randint(2, 4)
    k = rng.randint(1, 2 * n - 1)  # the run dies before its last row
    return [
        Case("lock and folders", f".lock deleted after {rows_before} rows, then a second run", "lock_deleted",
             {"rows_before": rows_before, "sleep": round(rng.uniform(0.3, 0.6), 2), "methods": methods,
              "argv": _run_args(rng, **{"--methods": ",".join(methods), "--limit": "4", "--batch_size": "1"})}),
        Case("lock and folders", f"--out inside a run: {run_name}/{inside}", "refuse",
             {"prerun": _run_args(rng, **{"--out": "{w}/" + run_name}), "out": f"{{w}}/{run_name}/{inside}",
              "argv": _run_args(rng), "words": [run_name]}),
        Case("lock and folders", f"--out holding a run: top/{above}", "refuse",
             {"prerun": _run_args(rng, **{"--out": "{w}/top/" + above}), "out": "{w}/top", "argv": _run_args(rng),
              "words": [run_name]}),
        Case("lock and folders", f"report on a run killed at row {k}", "report_incomplete",
             {"k": k, "methods": methods, "n": n,
              "argv": _run_args(rng, **{"--methods": ",".join(methods), "--limit": str(n), "--stream_batch": "1"})}),
    ]


# --- sampling -------------------------------------------------------------------------------------
def gen_sampling(rng: random.Random) -> list[Case]:
    k, method = rng.randint(2, 5), rng.choice(["noadapt", "tent", "zerosiam"])
    t, top_p = round(rng.uniform(0.7, 1.5), 2), round(rng.uniform(0.9, 1.0), 2)
    argv = _run_args(rng, **{"--methods": method, "--n_samples": str(k), "--limit": "3", "--max_new_tokens": "4",
                             "--top_p": str(top_p), "--set": f"temperature={t}", "--seed": str(rng.randint(0, 99))})
    return [Case("sampling", f"{method}, n_samples {k}, temperature {t}, top_p {top_p}", "sampling",
                 {"argv": argv, "k": k})]


# --- valid state: SAR -------------------------------------------------------------------------------
def gen_sar(rng: random.Random) -> list[Case]:
    cases = []
    for what in ("export", "resume"):
        method = rng.choice(["sar", "zerosiam+sar"])
        n = rng.randint(3, 5)
        argv = _run_args(rng, **{"--methods": method, "--limit": str(n), "--max_new_tokens": str(rng.randint(3, 5)),
                                 "--checkpoint_every": str(rng.randint(1, 2)), "--stream_batch": "1",
                                 "--lr": f"{rng.choice([1e-4, 1e-3, 1e-2]):g}"})
        k = rng.randint(2, n)
        name = f"{method}: exported adapter loads" if what == "export" else f"{method}: killed at row {k}, resumed"
        cases.append(Case("valid state: SAR", name, f"sar_{what}", {"argv": argv, "k": k, "n": n}))
    return cases


# --- several methods on every tiny architecture ----------------------------------------------------
LORA_METHODS = ("tent", "zerosiam", "come", "eminf", "sar", "slot", "zerosiam+sar", "zerosiam+eata")


def gen_archs(rng: random.Random) -> list[Case]:
    from zs_llm.testing import ARCHS, MORE_ARCHS

    cases = []
    for arch in ARCHS + MORE_ARCHS:
        methods = rng.sample(LORA_METHODS, rng.randint(2, 3)) + (["noadapt"] if rng.random() < 0.5 else [])
        rng.shuffle(methods)
        argv = _run_args(rng, **{"--model": "{arch}", "--methods": ",".join(methods), "--stream_batch":
                                 rng.choice(["1", "2"])})
        cases.append(Case("architectures", f"{arch}: {','.join(methods)}", "arch",
                          {"arch": arch, "methods": methods, "argv": argv}))
    return cases


# --- options ------------------------------------------------------------------------------------------
INT_FIELDS = {"limit": "run", "batch_size": "run", "checkpoint_every": "run", "n_samples": "run",
              "max_new_tokens": "adapt", "lora_r": "adapt", "steps": "adapt", "chunk_size": "adapt",
              "draft_lookup": "run"}  # a launch option: flat, like the run's
OUT_OF_RANGE = {  # field -> values outside its range
    "lora_alpha": lambda rng: -rng.randint(1, 64),
    "lora_dropout": lambda rng: round(rng.uniform(1.01, 5), 2),
    "top_p": lambda rng: round(rng.uniform(1.01, 5), 2),
    "guard_max_answer_share": lambda rng: round(rng.uniform(1.01, 5), 2),
    "guard_max_degenerate": lambda rng: round(rng.uniform(1.01, 5), 2),
    "temperature": lambda rng: -round(rng.uniform(0.01, 2), 2),
    "momentum": lambda rng: -round(rng.uniform(0.01, 2), 2),
    "lr": lambda rng: -rng.choice([1e-4, 1e-3, 1e-2]),
    "draft_lookup": lambda rng: rng.choice([-rng.randint(1, 9), rng.randint(65, 10 ** 6)]),
}
TWO_VALUES = {"lr": ("1e-3", "1e-2"), "max_new_tokens": ("3", "4"), "momentum": ("0.5", "0.9"), "lora_r": ("4", "8"),
              "temperature": ("0.0", "0.5"), "lora_alpha": ("8", "16"), "steps": ("1", "2")}
LIST_FIELDS = ("methods", "datasets", "lora_target_modules", "subset")


def _yaml_value(v) -> str:
    return json.dumps(v)  # JSON is YAML


def _place(rng: random.Random, name: str, value, target: str = "adapt") -> dict:
    """One option given through a flag, a YAML file or --set (adapt settings only): the argv piece
    and the files it needs."""
    how = rng.choice(["flag", "yaml", "set"] if target == "adapt" else ["flag", "yaml"])
    if how == "flag":
        return {"how": how, "argv": [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]}
    if how == "set":
        return {"how": how, "argv": ["--set", f"{name}={str(value).lower() if isinstance(value, bool) else value}"]}
    file = f"{_word(rng)}.yaml"
    body = f"{name}: {_yaml_value(value)}\n" if rng.random() < 0.5 or target != "adapt" \
        else f"adapt:\n  {name}: {_yaml_value(value)}\n"
    return {"how": how, "argv": ["--config", "{w}/" + file], "files": {file: body}}


def _option_case(rng: random.Random, label: str, piece: dict, words: list[str], field: str | None = None,
                 **over) -> Case:
    """A run whose options are valid but for `piece`; the base's own flag for `field` is left out
    (a flag would override the YAML value under test)."""
    if field:
        over.setdefault(f"--{field}", None)
    pairs = _run_pairs(rng, **over)
    pairs.insert(rng.randint(0, len(pairs)), piece["argv"])  # the offending option anywhere among the others
    return Case("options", f"{label} ({piece['how']})", "refuse",
                {"argv": ["run", *[x for p in pairs for x in p]], "offending": piece["argv"],
                 "files": piece.get("files", {}), "words": words})


def gen_options(rng: random.Random) -> list[Case]:
    cases = []
    # empty lists
    name = rng.choice(["methods", "datasets"])
    text = rng.choice(["", ",", " , ", ",,", " "])
    if rng.random() < 0.5:
        piece = {"how": "flag", "argv": [f"--{name}", text]}
    else:
        file = f"{_word(rng)}.yaml"
        piece = {"how": "yaml", "argv": ["--config", "{w}/" + file],
                 "files": {file: f"{name}: {rng.choice(['[]', json.dumps(text), json.dumps([text])])}\n"}}
    cases.append(_option_case(rng, f"empty {name} {text!r}", piece, [name[:-1]], name))
    # a duplicate YAML key
    name = rng.choice(sorted(TWO_VALUES))
    a, b = TWO_VALUES[name]
    file = f"{_word(rng)}.yaml"
    lines = [f"{name}: {a}", f"{name}: {b}"] + [f"{_f}: {_v}" for _f, _v in rng.sample(
        [("seed", rng.randint(0, 9)), ("batch_size", rng.randint(1, 8))], rng.randint(0, 2))]
    rng.shuffle(lines)
    cases.append(_option_case(rng, f"duplicate YAML key {name}", {"how": "yaml", "argv": ["--config", "{w}/" + file],
                                                                  "files": {file: "\n".join(lines) + "\n"}},
                              [name], name))
    # the same field from two places, different values
    name = rng.choice(sorted(TWO_VALUES))
    a, b = rng.sample(TWO_VALUES[name], 2)
    if rng.random() < 0.5:
        piece = {"how": "flag and --set", "argv": _shuffled(rng, [[f"--{name}", a], ["--set", f"{name}={b}"]])}
    else:
        file = f"{_word(rng)}.yaml"
        body = [f"{name}: {a}", f"adapt:\n  {name}: {b}"]
        rng.shuffle(body)
        piece = {"how": "flat and adapt: in one YAML", "argv": ["--config", "{w}/" + file],
                 "files": {file: "\n".join(body) + "\n"}}
    cases.append(_option_case(rng, f"{name} given twice ({a} and {b})", piece, [name], name))
    # wrong types: a bool or a non-integral float for an int
    for _ in range(2):
        name = rng.choice(sorted(INT_FIELDS))
        value = rng.choice([True, False, round(rng.uniform(0.1, 9.9), 2) + 0.01])
        piece = _place(rng, name, value, INT_FIELDS[name])
        cases.append(_option_case(rng, f"{name}={value} ({type(value).__name__} for int)", piece, [name], name))
    # out-of-range values
    for name in rng.sample(sorted(OUT_OF_RANGE), 2):
        value = OUT_OF_RANGE[name](rng)
        cases.append(_option_case(rng, f"{name}={value} out of range", _place(rng, name, value,
                                                                               INT_FIELDS.get(name, "adapt")),
                                  [name], name,
                                  **({"--methods": "tent"} if name.startswith("lora") else {})))
    # a huge --limit on a stream built for the whole limit (arith is a fixed set of 500, cut to the
    # limit as a read set is: a limit past its end runs the whole set, by design)
    limit = 10 ** rng.randint(9, 18) + rng.randint(0, 999)
    stream = rng.choice(["long", "imbalanced", "mixed"])
    cases.append(_option_case(rng, f"--limit {limit} on {stream}", {"how": "flag", "argv": ["--limit", str(limit)]},
                              ["limit"], "limit", **{"--datasets": stream}))
    # a YAML alias bomb in a random field: each anchor a list of `width` copies of the one before
    depth, width = rng.randint(7, 10), rng.randint(6, 10)
    name = rng.choice(LIST_FIELDS)
    file = f"{_word(rng)}.yaml"
    anchors = ["&a0 [x]"] + [f"&a{i} [{', '.join(['*a' + str(i - 1)] * width)}]" for i in range(1, depth)]
    value = f"[{', '.join(anchors)}]"
    body = f"{name}: {value}\n" if rng.random() < 0.5 or name in ("methods", "datasets", "subset") \
        else f"adapt:\n  {name}: {value}\n"
    cases.append(_option_case(rng, f"YAML alias bomb {width}^{depth - 1} in {name}",
                              {"how": "yaml", "argv": ["--config", "{w}/" + file], "files": {file: body}},
                              [f"{file}|{name}"], name))
    # nested lists
    name = rng.choice(LIST_FIELDS)
    inner = {"methods": "tent", "datasets": "arith", "lora_target_modules": "q_proj", "subset": "arith=sample:2"}[name]
    nested = rng.choice([[[inner]], [inner, [inner]], [[[inner]]]])
    file = f"{_word(rng)}.yaml"
    piece = {"how": "yaml", "argv": ["--config", "{w}/" + file], "files": {file: f"{name}: {json.dumps(nested)}\n"}}
    cases.append(_option_case(rng, f"nested list {name}: {json.dumps(nested)}", piece, [name], name))
    # a random unknown option name
    name = _word(rng)
    cases.append(_option_case(rng, f"unknown option {name}", _place(rng, name, rng.randint(0, 9)), [name]))
    return cases


# --- bad golds and chat roles ---------------------------------------------------------------------
GOLD_SETS = ("math500", "aime24", "college_math", "gsm8k", "amc23")
BAD_GOLDS = {"null": None, "NaN": float("nan"), "object": {"value": 5}, "list": [5]}


def gen_golds(rng: random.Random) -> list[Case]:
    cases = []
    for label, gold in BAD_GOLDS.items():
        name, n = rng.choice(GOLD_SETS), rng.randint(1, 6)
        rows = _dataset_lines(rng, name, n)
        bad = rng.randrange(n)
        rows[bad]["answer"] = gold
        text = "".join(json.dumps(r) + "\n" for r in rows)  # json writes NaN as the bare token NaN
        argv = _run_args(rng, **{"--datasets": name, "--data_dir": "{w}/data", "--limit": None})
        cases.append(Case("bad golds and roles", f"{label} gold in {name} line {bad + 1} of {n}", "refuse",
                          {"argv": argv, "files": {f"data/{name}/test.jsonl": text},
                           "words": [f"test.jsonl line {bad + 1}"]}))
    role = rng.choice(["wizard", "narrator", "tool_result", "User", "", _word(rng)])
    at = rng.randint(0, 2)
    cases.append(Case("bad golds and roles", f"chat role {role!r} at message {at}", "library",
                      {"what": "role", "role": role, "at": at, "method": rng.choice(["noadapt", "tent", "zerosiam"])}))
    # the same through a published style's template file (Llama 3 header tokens or ChatML)
    role = rng.choice(["wizard", "narrator", "critic", "tool_result", _word(rng)])
    turns = [("user", "Solve: {question}")]
    turns.insert(rng.randint(0, 1), (role, "You are a calculator."))
    if rng.random() < 0.5:
        how, text = "Llama 3", "<|begin_of_text|>" + "".join(
            f"<|start_header_id|>{r}<|end_header_id|>\n\n{c}<|eot_id|>" for r, c in turns)
    else:
        how, text = "ChatML", "".join(f"<|im_start|>{r}\n{c}<|im_end|>\n" for r, c in turns)
    style = rng.choice(["meta_llama31_math", "openr1_boxed", "lighteval_math500"])
    argv = _run_args(rng, **{"--prompt_style": style, "--prompt_template": "{w}/template.txt"})
    cases.append(Case("bad golds and roles", f"role {role!r} in a {how} template for {style}", "refuse",
                      {"argv": argv, "files": {"template.txt": text}, "words": [role]}))
    return cases


# --- user errors that must not be tracebacks --------------------------------------------------------
TRACEBACKS = "user errors: no traceback"  # the hand-written part has a category "user errors"


def gen_user_errors(rng: random.Random, cuda: bool = False, vllm: bool = False) -> list[Case]:
    """`cuda`, `vllm`: what this machine has (a device or backend it has is no error)."""
    method = rng.choice(LORA_METHODS[:4])
    devices = ["bogus", "gpu", "cdua", "tpu", "cpu:x", "npu", "xla"] + ([] if cuda else ["cuda", "cuda:1", "cuda:7"])
    device = rng.choice(devices)
    lora_r = 10 ** rng.randint(7, 12) + rng.randint(0, 99)
    hub_set = rng.choice(["gsm8k", "math500", "aime24", "amc23"])
    damage = rng.choice(["truncate", "not json", "a list", "empty", "binary", "drop adapt_config", "adapt_config a string"])
    a, b = rng.sample(["tent", "zerosiam", "sar", "come", "slot", "eminf"], 2)
    width = rng.choice([16, 48, 64])
    cases = [
        Case(TRACEBACKS, f"--device {device} on this torch", "refuse",
             {"argv": _run_args(rng, **{"--device": device, "--methods": rng.choice(["noadapt", "tent"])}),
              "words": ["device"]}),
        Case(TRACEBACKS, f"--lora_r {lora_r}", "refuse",
             {"argv": _run_args(rng, **{"--lora_r": str(lora_r), "--methods": rng.choice(["tent", "zerosiam"])}),
              "words": ["lora_r"]}),
        Case(TRACEBACKS, f"--source hub offline ({hub_set})", "refuse",
             {"argv": _run_args(rng, **{"--source": "hub", "--datasets": hub_set}), "words": ["hub"],
              "env": {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}}),
        Case(TRACEBACKS, "--backend vllm without vllm", "refuse",
             {"argv": _run_args(rng, **{"--backend": "vllm"}), "words": ["vllm"]}),
        Case(TRACEBACKS, f"peft-wrapped model given to ZeroSiamLM ({method})", "library",
             {"what": "peft", "method": method, "r": rng.choice([2, 4, 8])}),
        Case(TRACEBACKS, f"damaged zs_llm_config.json ({damage})", "library",
             {"what": "config", "damage": damage, "frac": round(rng.uniform(0.1, 0.9), 3), "method": a}),
        Case(TRACEBACKS, f"adapter of width 32 on a base of width {width}", "library",
             {"what": "width", "width": width, "method": a}),
        Case(TRACEBACKS, f"save_pretrained {b} into a folder that held {a}", "library",
             {"what": "stale", "first": a, "second": b, "adapt_first": rng.random() < 0.5}),
    ]
    return [c for c in cases if not (vllm and "vllm" in c.name)]


GENERATORS = {
    "identity": gen_identity,
    "locks": gen_locks,
    "sampling": gen_sampling,
    "sar": gen_sar,
    "archs": gen_archs,
    "options": gen_options,
    "golds": gen_golds,
    "user errors": gen_user_errors,
}


def generate(seeds: list[int], classes: list[str] | None = None, quick: bool = False, cuda: bool = False,
             vllm: bool = False) -> list[Case]:
    """Every class's cases for each seed (a class's RNG is seeded by its name and the seed); `quick`
    keeps the first two cases of each class and seed."""
    cases = []
    for seed in seeds:
        for name, gen in GENERATORS.items():
            if classes and name not in classes:
                continue
            rng = random.Random(f"{name}-{seed}")
            made = gen(rng, cuda=cuda, vllm=vllm) if name == "user errors" else gen(rng)
            seen: set[str] = set()
            for i, c in enumerate(made[:2] if quick else made):
                label = f"seed {seed}: {c.name}" + (f" (#{i})" if c.name in seen else "")  # a draw may repeat
                seen.add(c.name)
                cases.append(Case(c.category, label, c.kind, c.params))
    return cases


# --- classifying -------------------------------------------------------------------------------------
def names_all(text: str, words: list[str]) -> list[str]:
    """The words (each 'a|b' is a choice) that `text` does not name, case-insensitively."""
    low = text.lower()
    return [w for w in words if not any(x.lower() in low for x in w.split("|"))]


def classify_refusal(code: int | None, text: str, words: list[str], timed_out: bool = False) -> tuple[str, str]:
    """An input that must be refused: exit 2 with a last line `error: ...` naming `words`, no traceback."""
    lines = [x for x in text.strip().splitlines() if x.strip()]
    last = lines[-1] if lines else ""
    if timed_out:
        return "hang", f"no answer within the time limit; last line: {last[:200]}"
    if "Traceback (most recent call last)" in text:
        return "crash", f"traceback: {last[:250]}"
    if code == 0:
        return "silently wrong", f"accepted (exit 0); last line: {last[:200]}"
    if code is None or code < 0:
        return "crash", f"killed by signal {-(code or 0)}: {last[:200]}"
    missing = names_all(last, words)
    if code == 2 and last.startswith("error: ") and not missing:
        return "clean", ""
    return "crash", f"exit {code}, the line does not name {missing}: {last[:250]}"


def classify_exception(exc: BaseException | None, words: list[str]) -> tuple[str, str]:
    """A library call that must raise a one-line ValueError/TypeError naming `words`."""
    if exc is None:
        return "silently wrong", "accepted"
    msg = str(exc)
    if isinstance(exc, (ValueError, TypeError, FileNotFoundError)) and "\n" not in msg.strip() and \
            not names_all(msg, words):
        return "clean", ""
    return "crash", f"{type(exc).__name__}: {' '.join(msg.split())[:250]}"


# --- children: `eval` commands ------------------------------------------------------------------------
def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)


def _cap_memory(gb: float) -> None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            now = int(line.split()[1]) * 1024
            resource.setrlimit(resource.RLIMIT_AS, (now + int(gb * 2**30), resource.RLIM_INFINITY))


def child_cli(argv: list[str], env: dict, log: str, kill_at_row: int = 0, frac: float = 1.0,
              sleep: float = 0.0) -> None:
    """`python -m eval ARGV` in this forked child, its output into `log`; optionally killed at the
    `kill_at_row`-th row write (after `frac` of the line) or slowed by `sleep` seconds a row."""
    import huggingface_hub.constants
    import torch

    from eval.cli import main as cli_main
    from eval.rows import RowsAppender

    torch.set_num_threads(1)
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    huggingface_hub.constants.HF_HUB_OFFLINE = True  # nothing here may reach the network
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(fd, "w", buffering=1, closefd=False)  # also where pytest had put them
    _cap_memory(MEMORY_CAP_GB)
    if kill_at_row or sleep:
        original, count = RowsAppender.append, [0]

        def append(self, line):
            count[0] += 1
            time.sleep(sleep)
            if count[0] == kill_at_row:
                cut = int(frac * (len(line) + 1))
                self.f.write((line + "\n")[:cut])
                self.f.flush()
                os.fsync(self.f.fileno())
                _die()
            original(self, line)

        RowsAppender.append = append
    try:
        code = cli_main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - the traceback is the finding
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


@dataclass
class Ctx:
    """What an executor needs from the suite: the scratch folder, the tiny model and a fork context."""

    work: Path
    model_dir: Path
    mp: object

    def folder(self, case: Case) -> Path:
        d = self.work / "gen" / hashlib.sha256(f"{case.kind} {case.name}".encode()).hexdigest()[:12]
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d


def fill(argv: list[str], **values) -> list[str]:
    out = []
    for a in argv:
        for k, v in values.items():
            a = a.replace("{" + k + "}", str(v))
        out.append(a)
    return out


def cli(ctx: Ctx, argv: list[str], log: Path, env: dict | None = None, timeout: float = OPTION_TIMEOUT_S,
        wait: bool = True, **kw):
    """Run `eval ARGV` in a forked child: (exit code, output, timed out), or the process if not `wait`."""
    sys.stdout.flush()
    sys.stderr.flush()
    p = ctx.mp.Process(target=child_cli, args=(argv, env or {}, str(log)), kwargs=kw)
    p.start()
    if not wait:
        return p
    return finish(p, log, timeout)


def finish(p, log: Path, timeout: float):
    p.join(timeout)
    timed_out = p.is_alive()
    if timed_out:
        p.kill()
        p.join()
    text = log.read_text(errors="replace") if log.exists() else ""
    return p.exitcode, text, timed_out


def stream_rows(out: Path) -> dict[str, list[dict]]:
    """{rows file stem: valid rows} of a run folder."""
    from eval.rows import scan_rows

    return {p.stem: scan_rows(p).rows for p in sorted((out / "rows").glob("*.jsonl"))} if (out / "rows").is_dir() else {}


def _signatures(out: Path) -> dict[str, list]:
    from eval.runner import result_signature

    return {k: sorted((r["index"], result_signature(r)) for r in rows) for k, rows in stream_rows(out).items()}


# --- executors ---------------------------------------------------------------------------------------
def run_refuse(ctx: Ctx, case: Case) -> tuple[str, str]:
    p, w = case.params, ctx.folder(case)
    for rel, text in p.get("files", {}).items():
        (w / rel).parent.mkdir(parents=True, exist_ok=True)
        (w / rel).write_text(text)
    values = {"model": ctx.model_dir, "w": w}
    if p.get("prerun"):
        code, text, _ = cli(ctx, fill(p["prerun"], **values), w / "prerun.log", timeout=RUN_TIMEOUT_S)
        if code != 0:
            return "crash", f"the run before the case failed (exit {code}): {text.strip()[-200:]}"
    out = fill([p.get("out", "{w}/out")], **values)[0]
    code, text, timed_out = cli(ctx, fill(p["argv"], out=out, **values), w / "case.log", env=p.get("env"))
    return classify_refusal(code, text, p["words"], timed_out)


def _write_data(folder: Path, rows: list[dict]) -> None:
    (folder / "gsm8k").mkdir(parents=True, exist_ok=True)
    (folder / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def run_identity(ctx: Ctx, case: Case) -> tuple[str, str]:
    """Run, kill at a row, change one thing the run's identity rests on, resume: refused, naming it."""
    from transformers import AutoTokenizer

    from zs_llm.testing import tiny_model

    p, w = case.params, ctx.folder(case)
    model, out = w / "model", w / "out"
    shutil.copytree(ctx.model_dir, model)
    _write_data(w / "data1", p["data"])
    edited = [dict(r) for r in p["data"]]
    edited[p["line"]]["question"] = edited[p["line"]]["question"].replace("What is", "Compute")
    argv = ["run", "--model", str(model), "--out", str(out), "--datasets", "gsm8k", "--limit", str(p["n"]),
            "--methods", ",".join(p["methods"]), "--max_new_tokens", "3", "--stream_batch", "1", "--no_progress",
            "--no_report", "--prompt_style", p["style"]]
    env = {"ZS_LLM_DATA_DIR": str(w / "data1")}
    code, text, _ = cli(ctx, argv, w / "first.log", env, RUN_TIMEOUT_S, kill_at_row=p["k"], frac=p["frac"])
    if code != -signal.SIGKILL:
        return "crash", f"the first run exited with {code} before its kill: {text.strip()[-200:]}"
    change = p["change"]
    if change == "model weights":
        tiny_model("llama", seed=p["weights_seed"]).save_pretrained(model)
    elif change == "data file edited":
        _write_data(w / "data1", edited)
    elif change == "$ZS_LLM_DATA_DIR elsewhere":
        _write_data(w / "data2", edited)
        env = {"ZS_LLM_DATA_DIR": str(w / "data2")}
    elif change == "chat template":
        tok = AutoTokenizer.from_pretrained(model)
        tok.chat_template = p["prefix"] + ": " + tok.chat_template
        tok.save_pretrained(model)
    elif change == "prompt style":
        argv[argv.index("--prompt_style") + 1] = p["other_style"]
    code, text, timed_out = cli(ctx, argv, w / "resume.log", env, RUN_TIMEOUT_S)
    outcome, detail = classify_refusal(code, text, p["words"], timed_out)
    if outcome == "silently wrong":
        detail = f"resumed after the {change} changed: its rows mix two runs"
    return outcome, detail


def run_lock_deleted(ctx: Ctx, case: Case) -> tuple[str, str]:
    """A slow run holds the folder; .lock is deleted under it; a second run must still be refused."""
    p, w = case.params, ctx.folder(case)
    argv = fill(p["argv"], model=ctx.model_dir, out=w / "out")
    first = cli(ctx, argv, w / "first.log", timeout=RUN_TIMEOUT_S, wait=False, sleep=p["sleep"])
    lock, rows = w / "out" / ".lock", w / "out" / "rows"
    deadline = time.time() + 60
    while time.time() < deadline and not (lock.exists() and sum(
            f.read_text(errors="replace").count("\n") for f in rows.glob("*.jsonl")) >= p["rows_before"]):
        time.sleep(0.05)
    try:
        lock.unlink()
        code, text, timed_out = cli(ctx, argv, w / "second.log", timeout=RUN_TIMEOUT_S)
    finally:
        if first.is_alive():
            os.kill(first.pid, signal.SIGKILL)
        first.join()
    outcome, detail = classify_refusal(code, text, [], timed_out)
    if outcome == "silently wrong":
        detail = "a second run wrote into a folder another run holds"
    return outcome, detail


def run_report_incomplete(ctx: Ctx, case: Case) -> tuple[str, str]:
    """A run killed at row k; `eval report` must name each stream that is incomplete."""
    p, w = case.params, ctx.folder(case)
    out = w / "out"
    code, text, _ = cli(ctx, fill(p["argv"], model=ctx.model_dir, out=out), w / "run.log", timeout=RUN_TIMEOUT_S,
                        kill_at_row=p["k"])
    if code != -signal.SIGKILL:
        return "crash", f"the run exited with {code} before its kill: {text.strip()[-200:]}"
    have = {stem.split("__")[0]: len(rows) for stem, rows in stream_rows(out).items()}
    incomplete = [m for m in p["methods"] if have.get(m, 0) < p["n"]]
    if not (out / "rows").is_dir():
        return "crash", "the killed run left no rows/ folder"
    code, text, timed_out = cli(ctx, ["report", str(out)], w / "report.log", timeout=RUN_TIMEOUT_S)
    if timed_out:
        return "hang", "report ran past its time limit"
    if "Traceback (most recent call last)" in text:
        return "crash", text.strip().splitlines()[-1][:250]
    said = [line for line in text.splitlines() if "incomplete" in line.lower()]
    missing = [m for m in incomplete if not any(m in line for line in said)]
    if code in (0, 2) and said and not missing:
        return "clean", ""
    return "silently wrong", f"exit {code}; incomplete streams {incomplete} not named as such ({missing})"


def _metric_keys(obj) -> set[str]:
    keys = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            keys.add(str(k))
            keys |= _metric_keys(v)
    elif isinstance(obj, list):
        for v in obj:
            keys |= _metric_keys(v)
    return keys


def run_sampling(ctx: Ctx, case: Case) -> tuple[str, str]:
    p, w = case.params, ctx.folder(case)
    runs = []
    for name in ("a", "b"):
        code, text, timed_out = cli(ctx, fill(p["argv"], model=ctx.model_dir, out=w / name), w / f"{name}.log",
                                    timeout=RUN_TIMEOUT_S)
        if timed_out:
            return "hang", "the sampled run ran past its time limit"
        if code != 0:
            return "crash", f"exit {code}: {text.strip()[-250:]}"
        runs.append(stream_rows(w / name))
    rows = [r for rs in runs[0].values() for r in rs]
    if not rows or any(len(r.get("responses") or []) != p["k"] for r in rows):
        return "silently wrong", f"rows do not hold {p['k']} samples each"
    same = [r["index"] for r in rows if len(set(r["responses"])) == 1]
    if same:
        return "silently wrong", f"rows {same}: all {p['k']} samples identical"
    if {k: [r["responses"] for r in v] for k, v in runs[0].items()} != \
            {k: [r["responses"] for r in v] for k, v in runs[1].items()}:
        return "silently wrong", "a rerun with the same seeds samples other answers"
    code, text, _ = cli(ctx, ["report", str(w / "a")], w / "report.log", timeout=RUN_TIMEOUT_S)
    if code != 0:
        return "crash", f"report exit {code}: {text.strip()[-250:]}"
    keys = _metric_keys(json.loads((w / "a" / "metrics.json").read_text()))
    lacking = [m for m in ("maj@", "pass@", "avg@") if not any(k.startswith(m) for k in keys)]
    if lacking:
        return "silently wrong", f"metrics.json has no {', '.join(x + 'k' for x in lacking)}"
    return "clean", ""


def run_sar_export(ctx: Ctx, case: Case) -> tuple[str, str]:
    from zs_llm import ZeroSiamLM
    from zs_llm.testing import char_tokenizer, tiny_model

    p, w = case.params, ctx.folder(case)
    code, text, timed_out = cli(ctx, fill(p["argv"], model=ctx.model_dir, out=w / "out"), w / "run.log",
                                timeout=RUN_TIMEOUT_S)
    if timed_out:
        return "hang", "the run ran past its time limit"
    if code != 0:
        return "crash", f"exit {code}: {text.strip()[-250:]}"
    folders = list((w / "out" / "adapters").glob("*")) if (w / "out" / "adapters").is_dir() else []
    if not folders:
        return "data lost", "the finished stream exported no adapter"
    try:
        ZeroSiamLM.from_pretrained(folders[0], tiny_model("llama"), char_tokenizer())
    except Exception as e:  # noqa: BLE001
        return "crash", f"its exported adapter does not load: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
    return "clean", ""


def run_sar_resume(ctx: Ctx, case: Case) -> tuple[str, str]:
    p, w = case.params, ctx.folder(case)
    ref, out = w / "ref", w / "out"
    code, text, _ = cli(ctx, fill(p["argv"], model=ctx.model_dir, out=ref), w / "ref.log", timeout=RUN_TIMEOUT_S)
    if code != 0:
        return "crash", f"the uninterrupted run failed (exit {code}): {text.strip()[-200:]}"
    argv = fill(p["argv"], model=ctx.model_dir, out=out)
    code, text, _ = cli(ctx, argv, w / "first.log", timeout=RUN_TIMEOUT_S, kill_at_row=p["k"])
    if code != -signal.SIGKILL:
        return "crash", f"the run exited with {code} before its kill: {text.strip()[-200:]}"
    ckpts = [int(c.name) for c in (out / "state").glob("*/*") if c.name.isdigit()] if (out / "state").is_dir() else []
    code, text, timed_out = cli(ctx, argv, w / "resume.log", timeout=RUN_TIMEOUT_S)
    if timed_out:
        return "hang", "the resume ran past its time limit"
    if code != 0:
        return "crash", f"the resume failed (exit {code}): {text.strip()[-250:]}"
    if (out / "quarantine").is_dir() and any((out / "quarantine").iterdir()):
        return "silently wrong", f"a valid SAR checkpoint was quarantined: {sorted(x.name for x in (out / 'quarantine').iterdir())[:2]}"
    if any(c > 0 for c in ckpts) and "resuming from the checkpoint after" not in text:
        return "silently wrong", f"checkpoints {sorted(ckpts)} were on disk, the resume replayed from 0"
    if _signatures(out) != _signatures(ref):
        return "silently wrong", "the resumed rows differ from the uninterrupted run's"
    return "clean", ""


def run_arch(ctx: Ctx, case: Case) -> tuple[str, str]:
    from zs_llm.testing import char_tokenizer, tiny_model

    p, w = case.params, ctx.folder(case)
    model = ctx.work / "gen-archs" / p["arch"]
    if not (model / "config.json").exists():
        tiny_model(p["arch"]).save_pretrained(model)
        char_tokenizer().save_pretrained(model)
    code, text, timed_out = cli(ctx, fill(p["argv"], arch=model, out=w / "out"), w / "run.log",
                                timeout=RUN_TIMEOUT_S)
    last = text.strip().splitlines()[-1] if text.strip() else ""
    if timed_out:
        return "hang", "the run ran past its time limit"
    if code != 0:
        return "crash", f"exit {code}: {last[:250]}"
    short = {k: len(v) for k, v in stream_rows(w / "out").items() if len(v) != 2}
    if short or len(stream_rows(w / "out")) != len(p["methods"]):
        return "data lost", f"streams without their 2 rows: {short or 'some missing'}"
    return "clean", ""


def run_library(ctx: Ctx, case: Case) -> tuple[str, str]:
    import torch

    from zs_llm import AdaptConfig, ZeroSiamLM, adapt_generate
    from zs_llm.testing import char_tokenizer, tiny_model

    p, w = case.params, ctx.folder(case)
    what = p["what"]

    def make(method, model=None):
        return ZeroSiamLM(model or tiny_model("llama"), char_tokenizer(), AdaptConfig(method=method, max_new_tokens=3))

    def attempt(fn, words):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - what it raised is the finding
            return classify_exception(e, words)
        return classify_exception(None, words)

    if what == "role":
        lm = make(p["method"])
        msgs = [{"role": "user", "content": "What is 2 + 3?"}] * 2
        msgs.insert(p["at"], {"role": p["role"], "content": "You are a calculator."})
        return attempt(lambda: adapt_generate(lm, msgs), [repr(p["role"]) if p["role"] else "role"])
    if what == "peft":
        from peft import LoraConfig, get_peft_model

        wrapped = get_peft_model(tiny_model("llama"), LoraConfig(r=p["r"], target_modules=["q_proj", "v_proj"]))
        try:
            lm = make(p["method"], wrapped)
            adapt_generate(lm, "What is 2 + 3?")
        except Exception as e:  # noqa: BLE001
            return classify_exception(e, ["peft|PeftModel"])
        return "clean", "accepted and adapted"  # wrapping a peft model is allowed when it works
    lm = make(p.get("method") or p["first"])
    if what == "config":
        lm.save_pretrained(w / "a")
        f = w / "a" / "zs_llm_config.json"
        text = f.read_text()
        meta = json.loads(text)
        damaged = {"truncate": text[: int(len(text) * p["frac"])], "not json": "{config: yes", "a list": "[1, 2]",
                   "empty": "", "binary": "\x00\xff\x01",
                   "drop adapt_config": json.dumps({k: v for k, v in meta.items() if k != "adapt_config"}),
                   "adapt_config a string": json.dumps({**meta, "adapt_config": "tent"})}[p["damage"]]
        f.write_text(damaged, errors="surrogateescape")
        return attempt(lambda: ZeroSiamLM.from_pretrained(w / "a", tiny_model("llama"), char_tokenizer()),
                       ["zs_llm_config.json"])
    if what == "width":
        lm.save_pretrained(w / "a")
        return attempt(lambda: ZeroSiamLM.from_pretrained(w / "a", tiny_model("llama", hidden=p["width"]),
                                                          char_tokenizer()), ["hidden|width|size|shape"])
    if what == "stale":
        if p["adapt_first"]:
            adapt_generate(lm, "What is 2 + 3?")
        lm.save_pretrained(w / "a")
        second = make(p["second"])
        with torch.no_grad():
            for t in second.state_tensors().values():
                if t.is_floating_point():
                    t.add_(0.01)  # not a fresh adapter: a stale one could not pass for it
        second.save_pretrained(w / "a")
        try:
            back = ZeroSiamLM.from_pretrained(w / "a", tiny_model("llama"), char_tokenizer())
        except Exception as e:  # noqa: BLE001
            return "crash", f"the second save does not load: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
        if back.zs_config.method != p["second"]:
            return "silently wrong", f"loaded {back.zs_config.method}, saved {p['second']} last"
        mine, got = second.state_tensors(), back.state_tensors()
        same = lambda a, b: a.shape == b.shape and bool(  # noqa: E731 - NaN markers (SAR's EMA) equal NaN
            (a == b).logical_or(a.isnan() & b.isnan() if a.is_floating_point() else a != a).all())
        differ = [k for k in mine if k not in got or not same(mine[k], got[k])]
        if differ or set(got) - set(mine):
            return "silently wrong", f"the loaded state is not the last save's: {differ[:3]}"
        return "clean", ""
    raise ValueError(f"unknown library case {what!r}")


EXECUTORS = {
    "refuse": run_refuse,
    "identity": run_identity,
    "lock_deleted": run_lock_deleted,
    "report_incomplete": run_report_incomplete,
    "sampling": run_sampling,
    "sar_export": run_sar_export,
    "sar_resume": run_sar_resume,
    "arch": run_arch,
    "library": run_library,
}


def run_case(ctx: Ctx, case: Case) -> tuple[str, str]:
    """(outcome, detail) of one generated case; an error of the suite itself is reported as a crash."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return EXECUTORS[case.kind](ctx, case)
    except Exception as e:  # noqa: BLE001
        return "crash", f"suite error: {type(e).__name__}: {' '.join(str(e).split())[:250]}"


def expected_count(seeds: int) -> int:
    """Cases the generators make for `seeds` seeds (the table grows with --seeds)."""
    return len(generate(list(range(seeds))))


if __name__ == "__main__":  # a listing of the generated cases, nothing run
    for c in generate([int(sys.argv[1]) if len(sys.argv) > 1 else 0]):
        print(f"{c.category:<22} {c.kind:<18} {c.name}")
