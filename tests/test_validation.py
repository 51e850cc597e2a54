"""One check for every option (`zs_llm.settings.check_value`), generated from the fields themselves:
for every field of `Launch`, `RunConfig`, `AdaptConfig` and each method's config, values of the
wrong type and out of its declared range are refused with the same one-line message by every
entry point (the dataclass, `AdaptConfig.from_dict`, a flag, `--set`, a YAML file, a method spec);
keys given twice and fields given by two sources with different values are refused; empty lists,
limits past a generated stream's size and YAML alias bombs are refused fast, before anything is
built."""

import dataclasses
import json
import math
import random
import time

import pytest
import yaml

from eval.cli import main as cli_main
from eval.datasets import DATASETS, load_problems
from eval.options import (
    MAX_YAML_BYTES,
    MAX_YAML_NODES,
    Launch,
    OptionParser,
    options,
    parse_options,
    read_options,
    read_yaml,
)
from eval.runner import RunConfig, Runner
from zs_llm import METHODS, AdaptConfig
from zs_llm.adapt import adapt_on_problem
from zs_llm.settings import type_name


# --- the declared fields ------------------------------------------------------------------------
def declared() -> list[tuple[str, str | None, dataclasses.Field]]:
    """(where the field lives, the method that owns it, field) for every option a user can set:
    `launch`, `run`, `adapt` (shared AdaptConfig fields) or `method` (a method's own, with the
    first method that has it)."""
    out = [("launch", None, f) for f in dataclasses.fields(Launch)]
    out += [("run", None, f) for f in dataclasses.fields(RunConfig) if f.name != "adapt"]
    out += [("adapt", "tent", f) for f in dataclasses.fields(AdaptConfig) if f.name not in ("method", "method_args")]
    seen = set()
    for name, cls in METHODS.items():
        for f in dataclasses.fields(cls.config_class):
            if f.name not in seen:
                seen.add(f.name)
                out.append(("method", name, f))
    return out


FIELDS = declared()


def kinds(f: dataclasses.Field) -> set[str]:
    return {p.strip().split("[")[0] for p in type_name(f.type).split("|")}


def text_of(v) -> str:
    return str(v).lower() if isinstance(v, bool) else repr(v) if isinstance(v, float) else str(v)


def bad_values(f: dataclasses.Field, rng: random.Random) -> list[tuple[object, str | None]]:
    """(value, its command-line text or None where the command line cannot write it) pairs that
    the field must refuse: the wrong type (a bool for an int, a float for an int, text for a
    number, a list, a mapping, None), out of its declared range, outside its choices."""
    base, meta = kinds(f), f.metadata
    out: list[tuple[object, str | None]] = []
    if "None" not in base:  # (in a text field "none" is the word, not None: no command-line form)
        out.append((None, None if "str" in base else "none"))
    if "list" in base:
        if not meta.get("empty_ok"):
            out.append(([], ","))
        out += [([["a", "b"]], None), ([1], None), ([""], None), (["x", "x"], "x,x")]
        if f.name != "subset":  # RunConfig reads subset's mapping form too (eval.datasets.parse_subsets)
            out.append(({"a": 1}, None))
    elif "bool" in base:
        out += [(1, "1"), (0, "0"), (0.5, "0.5"), ("maybe", "maybe"), ([True], None), ({"a": True}, None)]
    elif "int" in base:
        half = rng.randint(2, 99) + 0.5
        out += [(True, "true"), (False, "false"), (half, repr(half)), ("abc", "abc"), ([1], None),
                ({"a": 1}, None)]
    elif "float" in base:
        out += [(True, "true"), ("abc", "abc"), ([1.0], None), ({"a": 1.0}, None), (math.nan, "nan"),
                (math.inf, "inf"), (-math.inf, "-inf")]
    elif "str" in base:
        out += [(rng.randint(0, 9), None), (True, None), (["a"], None), ("", "")]
    is_int = "int" in base
    step = 1 if is_int else rng.uniform(1e-3, 10.0)
    far = rng.randint(2, 10**6) if is_int else rng.uniform(10.0, 1e6)
    outside = []
    if meta.get("min") is not None:
        outside += [meta["min"] - step, meta["min"] - far]
    if meta.get("gt") is not None:
        outside += [meta["gt"], meta["gt"] - far]
    if meta.get("max") is not None:
        outside += [meta["max"] + step, meta["max"] + far]
    if meta.get("lt") is not None:
        outside += [meta["lt"], meta["lt"] + far]
    out += [(v, repr(v)) for v in outside]  # repr writes a number that reads back as the same number
    if meta.get("choices") is not None:
        out.append((["not_a_choice"], "not_a_choice") if "list" in base else ("not_a_choice", "not_a_choice"))
    return out


#: text fields whose values are free (paths, names, devices); every other text field declares its choices
FREE_TEXT = {"out", "model", "gguf_file", "device", "data_dir", "prompt_template", "protocol", "revision",
             "chat_template", "system_prompt", "include_path"}


@pytest.mark.parametrize("where,owner,f", FIELDS, ids=[f"{w}-{f.name}" for w, _, f in FIELDS])
def test_every_field_declares_its_range(where, owner, f):
    """The audit, kept: a number declares its bounds, a text field its choices (or is free text)."""
    base = kinds(f)
    if base & {"int", "float"}:
        assert any(k in f.metadata for k in ("min", "gt", "max", "lt")), f"{f.name} declares no range"
    elif base & {"str"} and "list" not in base:
        assert f.name in FREE_TEXT or f.metadata.get("choices") is not None, f"{f.name} declares no choices"


def construct(where: str, owner: str | None, name: str, value):
    if where == "launch":
        return Launch(**{name: value})
    if where == "run":
        return RunConfig(**{name: value})
    # the one rule across fields: an episodic schedule that answers with the draft never adapts an answer
    extra = {"answer": "regenerate"} if name == "schedule" else {}
    return AdaptConfig(method=owner, **{name: value}, **extra)


def refused(fn) -> str:
    with pytest.raises(ValueError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.fixture(scope="module")
def parser():
    return OptionParser()


@pytest.mark.parametrize("where,owner,f", FIELDS, ids=[f"{w}-{f.name}" for w, _, f in FIELDS])
def test_every_entry_point_refuses_a_bad_value_with_the_same_message(where, owner, f, parser, tmp_path):
    rng = random.Random(f.name)
    name = f.name
    is_run_seed = where == "adapt" and name in {g.name for g in dataclasses.fields(RunConfig)}
    cases = bad_values(f, rng)
    assert cases, name
    for i, (value, text) in enumerate(cases):
        core = refused(lambda value=value: construct(where, owner, name, value))
        assert core.startswith(name), (name, value, core)  # the message names the field first
        if where in ("adapt", "method"):
            assert refused(lambda: AdaptConfig.from_dict({"method": owner, name: value})) == core
        if where == "method":
            assert refused(lambda: METHODS[owner].config_class(**{name: value})) == core
        # a YAML file, at the top level (the harness's field, where a name is both) and under adapt:
        nests = [False] if where in ("launch", "run") else [True] if is_run_seed else [False, True]
        for nested in nests:
            y = tmp_path / f"{name}-{i}-{nested}.yaml"
            y.write_text(yaml.safe_dump({"adapt": {name: value}} if nested else {name: value}))
            assert refused(lambda y=y: read_options(y)) == f"{y}: {core}", value
        if text is None:
            continue
        if not is_run_seed:  # --seed is the harness's
            assert refused(lambda: parser.parse([f"--{name}={text}"])) == f"--{name}: {core}", value
        if where in ("adapt", "method"):
            assert refused(lambda: parser.parse(["--set", f"{name}={text}"])) == f"--set {name}={text}: {core}"
            spec = f"{owner}:{name}={text}"
            assert refused(lambda: AdaptConfig.from_spec(spec)) == f"method spec {spec!r}: {core}"


def good_values(f: dataclasses.Field) -> list:
    """Two different values the field accepts (at its bounds where it has them)."""
    base, meta = kinds(f), f.metadata
    if meta.get("choices") is not None:
        c = list(meta["choices"])[:2]
        return [[x] for x in c] if "list" in base else c
    if "bool" in base:
        return [True, False]
    if "list" in base:
        return [["q_proj"], ["q_proj", "v_proj"]]
    if "int" in base or "float" in base:
        cast = int if "int" in base and "float" not in base else float
        lo = meta.get("min", meta.get("gt", 0))
        hi = meta.get("max", meta.get("lt", lo + (10 if cast is int else 1)))
        inside = [cast(lo + (hi - lo) / 4), cast(lo + (hi - lo) / 2)]
        edges = ([meta["min"]] if "min" in meta else []) + ([meta["max"]] if "max" in meta else [])
        return [cast(x) for x in edges] + inside
    return ["a", "b"]


@pytest.mark.parametrize("where,owner,f", FIELDS, ids=[f"{w}-{f.name}" for w, _, f in FIELDS])
def test_every_entry_point_accepts_a_good_value_alike(where, owner, f, parser, tmp_path):
    """The bounds are inclusive where declared so, and a flag, YAML and the dataclass agree."""
    name = f.name
    if name in ("methods", "datasets", "model", "subset", "protocol", "fields"):
        pytest.skip("a registry name or a spec: its values are tested where it is read")
    if where == "adapt" and name == "seed":
        pytest.skip("--seed is the harness's; the methods' seed is tested in test_options")
    for value in good_values(f):
        built = construct(where, owner, name, value)
        held = getattr(built.method_config if where == "method" else built, name)
        assert held == value
        if name == "schedule":
            continue  # alone, its second choice meets the rule above
        y = tmp_path / "good.yaml"
        y.write_text(yaml.safe_dump({name: value}))
        assert read_options(y)[name] == value
        text = ",".join(value) if isinstance(value, list) else text_of(value)
        assert parser.parse([f"--{name}={text}"])[name] == value


# --- conflicts ------------------------------------------------------------------------------------
def adapt_options() -> list:
    run = {f.name for f in dataclasses.fields(RunConfig)}
    return [(o, good_values(f)) for w, _, f in FIELDS if w in ("adapt", "method") and f.name not in run
            for o in [options()[f.name]]]


def flow(v) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


@pytest.mark.parametrize("seed", range(8))
def test_a_yaml_key_given_twice_is_refused_naming_both_lines(seed, tmp_path):
    rng = random.Random(seed)
    picked = rng.sample(adapt_options(), 6)
    lines = [f"{o.name}: {flow(vals[0])}" for o, vals in picked]
    dup, vals = rng.choice(picked)
    y = tmp_path / "dup.yaml"
    nested = rng.random() < 0.5

    def write(lines):
        y.write_text("\n".join(["adapt:"] + ["  " + line for line in lines] if nested else lines) + "\n")

    write(lines)
    assert set(read_options(y)) == {o.name for o, _ in picked}  # once each: read
    lines.insert(rng.randint(0, len(lines)), f"{dup.name}: {flow(rng.choice(vals))}")  # same value or not
    write(lines)
    a, b = (i + 1 + nested for i, line in enumerate(lines) if line.startswith(f"{dup.name}:"))
    assert refused(lambda: read_options(y)) == f"{y}: {dup.name!r} is given twice (lines {a} and {b}); keep one"


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    y = tmp_path / "merge.yaml"
    y.write_text("base: &b {lr: 0.001, alpha: 0.5}\nother:\n  <<: *b\n  lr: 0.002\n")
    assert read_yaml(y) == {"base": {"lr": 0.001, "alpha": 0.5}, "other": {"lr": 0.002, "alpha": 0.5}}


@pytest.mark.parametrize("seed", range(6))
def test_one_field_from_two_sources_with_different_values_is_refused(seed, parser, tmp_path):
    rng = random.Random(100 + seed)
    o, vals = rng.choice(adapt_options())
    a, b = rng.sample(vals, 2)
    dumped = flow

    def text(v):
        return ",".join(v) if isinstance(v, list) else text_of(v)

    y = tmp_path / "both.yaml"
    y.write_text(f"{o.name}: {dumped(a)}\nadapt:\n  {o.name}: {dumped(b)}\n")
    assert refused(lambda: read_options(y)) == (f"{y}: {o.name} is given twice, as {o.name}: {a!r} and under adapt: "
                                                f"{b!r}; give it once")
    y.write_text(f"{o.name}: {dumped(a)}\nadapt:\n  {o.name}: {dumped(a)}\n")
    assert read_options(y)[o.name] == a  # the same value twice says nothing different
    msg = refused(lambda: parser.parse([f"--{o.name}={text(a)}", "--set", f"{o.name}={text(b)}"]))
    assert msg == f"{o.name} is given twice, by --{o.name} {a} and --set {o.name}={text(b)}; give it once"
    assert parser.parse(["--set", f"{o.name}={text(a)}", f"--{o.name}={text(a)}"])[o.name] == a
    owner = next(w for w, _, f in FIELDS if f.name == o.name)
    if owner == "method":
        method = next(m for m, c in METHODS.items() if o.name in {f.name for f in dataclasses.fields(c.config_class)})
        msg = refused(lambda: AdaptConfig(method=method, method_args={o.name: a}, **{o.name: b}))
        assert msg.startswith(f"{o.name} is given twice with different values")
        assert getattr(AdaptConfig(method=method, method_args={o.name: a}, **{o.name: a}).method_config, o.name) == a


def test_the_two_seeds_are_two_fields_and_later_sources_override_earlier(tmp_path):
    y = tmp_path / "seeds.yaml"
    y.write_text("seed: 2\nadapt:\n  seed: 7\nlr: 0.001\n")
    z = tmp_path / "later.yaml"
    z.write_text("lr: 0.002\n")
    given = parse_options(["--config", str(y), "--config", str(z)])
    assert given["seed"] == 2 and given["adapt"] == {"seed": 7} and given["lr"] == 0.002
    assert parse_options(["--config", str(y), "--lr", "0.003"])["lr"] == 0.003  # a flag overrides a file
    assert parse_options(["--lr", "0.1", "--lr", "0.2"])["lr"] == 0.2  # a repeated flag: the last, as in any CLI


def test_a_method_spec_naming_a_key_twice_is_refused():
    assert refused(lambda: AdaptConfig.from_spec("zerosiam:alpha=0:alpha=1")) == (
        "method spec 'zerosiam:alpha=0:alpha=1': alpha is given twice; give it once")


def test_a_run_wide_setting_no_listed_method_has_is_still_checked(tmp_path):
    out = tmp_path / "run"
    assert refused(lambda: Runner(RunConfig(methods=["tent"], adapt={"alpha": -1.0}), out, progress=False)) == \
        "alpha must be >= 0.0, got -1.0"  # refused when the config is built, before the run folder
    assert not out.exists()


@pytest.mark.parametrize("seed", range(4))
def test_a_run_configs_hash_is_the_same_before_and_after_a_run_validates_it(seed, tiny_dir, tmp_path):
    """Values given as another type their field converts (an int for a float) are held converted
    from construction: a config built again from the same values hashes as the run recorded it."""
    import json
    import random

    rng = random.Random(seed)
    adapt = {"max_new_tokens": 2, "lr": rng.choice([1, 2, 1e-2]), "predictor_lr_scale": rng.choice([1, 3, 0.5])}
    cfg = RunConfig(model=str(tiny_dir), methods=["zerosiam"], datasets=["arith"], limit=1, adapt=dict(adapt))
    out = Runner(cfg, tmp_path / "run", progress=False).run()
    again = RunConfig(model=str(tiny_dir), methods=["zerosiam"], datasets=["arith"], limit=1, adapt=dict(adapt))
    assert json.loads((out / "run.json").read_text())["config_hash"] == again.hash() == cfg.hash()


# --- the command line end to end: one line, exit code 2, nothing built -----------------------------
@pytest.mark.parametrize("argv,words", [
    (["--methods", ""], "methods is an empty list"),
    (["--methods", ","], "methods is an empty list"),
    (["--datasets", ""], "datasets is an empty list"),
    (["--datasets", "arith,arith"], "datasets lists 'arith' twice"),
    (["--lora_target_modules", ","], "lora_target_modules is an empty list"),
    (["--lora_alpha", "-16"], "lora_alpha must be in [1, 1048576], got -16"),
    (["--guard_max_answer_share", "7"], "guard_max_answer_share must be in [0.0, 1.0], got 7"),
    (["--steps", "2.5"], "steps expects int, got 2.5 (float)"),
    (["--set", "lr=1e-3", "--lr", "0.5"], "lr is given twice, by --lr 0.5 and --set lr=1e-3"),
    (["--methods", "zerosiam:alpha=-1"], "method spec 'zerosiam:alpha=-1': alpha must be >= 0.0, got -1"),
])
def test_cli_refuses_with_one_line_and_builds_nothing(argv, words, tmp_path, capsys):
    out = tmp_path / "o"
    assert cli_main(["run", "--out", str(out), "--no_progress", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err, err
    assert not out.exists()


# --- bounds: refused fast, before a stream is built ---------------------------------------------
SCALING = [name for name, spec in DATASETS.items() if spec.scales]


@pytest.mark.parametrize("name", SCALING)
def test_a_limit_past_a_generated_stream_is_refused_fast(name, tmp_path, capsys):
    spec = DATASETS[name]
    assert spec.max_size, f"{name} scales with the limit but declares no max_size"
    rng = random.Random(name)
    for limit in (spec.max_size + 1, rng.randint(spec.max_size + 2, 10**12), 10**9, 10**18):
        start = time.perf_counter()
        msg = refused(lambda limit=limit: RunConfig(datasets=[name], limit=limit))
        assert msg == f"limit {limit} is longer than the longest {name} stream ({spec.max_size} problems); give " \
                      f"limit <= {spec.max_size}"
        assert refused(lambda limit=limit: load_problems(name, limit=limit)) == msg
        out = tmp_path / f"o{limit}"
        assert cli_main(["run", "--out", str(out), "--datasets", name, "--limit", str(limit)]) == 2
        assert msg in capsys.readouterr().err and not out.exists()
        assert time.perf_counter() - start < 5.0
    assert RunConfig(datasets=[name], limit=spec.max_size).limit == spec.max_size  # the longest is allowed


def test_shift_is_bounded_by_the_gsm8k_problems_it_samples():
    assert DATASETS["shift"].max_size == 3 * DATASETS["gsm8k"].rows


def test_a_huge_limit_on_a_fixed_set_is_cut_to_the_set_not_built():
    start = time.perf_counter()
    assert RunConfig(datasets=["arith"], limit=10**9).limit == 10**9
    assert len(load_problems("arith", limit=10**9)) == 500
    assert time.perf_counter() - start < 5.0


# --- YAML read safely --------------------------------------------------------------------------------
def alias_bomb(fan: int, depth: int) -> str:
    lines = [f"a0: &a0 [{', '.join(['x'] * fan)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fan)}]" for i in range(1, depth + 1)]
    return "\n".join(lines) + f"\nmethods: *a{depth}\n"


@pytest.mark.parametrize("seed", range(5))
def test_an_alias_bomb_is_refused_fast(seed, tmp_path):
    rng = random.Random(seed)
    fan = rng.randint(2, 12)
    depth = math.ceil(math.log(MAX_YAML_NODES, fan)) + rng.randint(1, 8)  # expands past the bound
    y = tmp_path / "bomb.yaml"
    y.write_text(alias_bomb(fan, depth))
    start = time.perf_counter()
    msg = refused(lambda: read_options(y))
    assert time.perf_counter() - start < 5.0
    assert msg.startswith(f"{y}: its aliases expand to more than {MAX_YAML_NODES} values")


def test_small_aliases_and_the_other_bounds(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("adapt: &a {lr: 0.001}\n")  # an anchor used once or twice is an ordinary config
    assert read_options(y) == {"lr": 0.001}
    y.write_text("methods: &m [tent, *m]\n")  # an alias inside its own anchor never ends
    assert refused(lambda: read_options(y)).startswith(f"{y}: its aliases expand")
    y.write_text("methods: " + "[" * 5000 + "]" * 5000 + "\n")
    assert refused(lambda: read_options(y)) == f"{y}: values nested too deeply; a config holds field: value lines"
    y.write_text("# " + "x" * MAX_YAML_BYTES + "\n")
    assert refused(lambda: read_options(y)).startswith(f"{y} is {MAX_YAML_BYTES + 3} bytes")
    y.write_text("methods: !!python/object/apply:os.system [echo hi]\n")  # safe: no Python objects
    assert "invalid YAML" in refused(lambda: read_options(y))
    y.write_text("methods: [[tent, zerosiam]]\n")
    assert refused(lambda: read_options(y)) == (f"{y}: methods expects list[str], got [['tent', 'zerosiam']] (list); "
                                                "e.g. noadapt,tent,zerosiam")
    y.write_text("1: 2\n")
    assert refused(lambda: read_options(y)).startswith("unknown field(s) ['1']")


# --- sizes and seeds bounded, numpy numbers read as numbers --------------------------------------
BOUNDED = [(w, o, f) for w, o, f in FIELDS if f.metadata.get("max") is not None and "int" in kinds(f)]


def test_every_size_and_seed_declares_an_upper_bound():
    sizes = {"steps", "n_samples", "max_new_tokens", "batch_size", "stream_batch", "checkpoint_every", "lora_r",
             "seed", "logit_steps", "delta_steps"}
    assert sizes <= {f.name for _, _, f in BOUNDED}


@pytest.mark.parametrize("where,owner,f", BOUNDED, ids=[f"{w}-{f.name}" for w, _, f in BOUNDED])
def test_an_absurd_size_is_refused_fast_before_anything_loads(where, owner, f, tmp_path, capsys):
    rng = random.Random(f"absurd-{f.name}")
    top = f.metadata["max"]
    flag = "--set" if where in ("adapt", "method") and f.name != "seed" else None
    for value in (top + 1, rng.randint(top + 2, 1000 * top), 10**12, 2**63, 2**80, rng.randint(2**64, 10**40)):
        if value <= top:
            continue
        out = tmp_path / f"o{value}"
        argv = [flag, f"{f.name}={value}"] if flag else [f"--{f.name}", str(value)]
        if where == "method":
            argv += ["--methods", owner]
        start = time.perf_counter()
        assert cli_main(["run", "--out", str(out), "--no_progress", "--model", "/nonexistent", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"{f.name} must be in [{f.metadata['min']}, {top}], got {value}" in err, err
        assert time.perf_counter() - start < 5.0 and not out.exists()


def test_the_probes_absurd_commands_are_refused_in_one_line(tmp_path, capsys):
    for argv in (["--set", "steps=1000000000000", "--methods", "zerosiam"],
                 ["--n_samples", "1000000000000", "--set", "temperature=0.5"],
                 ["--set", f"seed={2**80}"]):
        assert cli_main(["run", "--out", str(tmp_path / "o"), "--no_progress", *argv]) == 2
        assert capsys.readouterr().err.strip().count("\n") == 0
        assert not (tmp_path / "o").exists()


def test_the_largest_seed_is_one_torch_takes_for_every_problem_and_sample(make_lm):
    import torch

    from zs_llm.model import sample_seed
    from zs_llm.settings import SEED_MAX

    rng = random.Random(0)
    for problem in (0, 1, rng.randint(2, 10**9), 10**12):
        for sample in (0, 1, rng.randint(2, 10**4)):
            torch.manual_seed(sample_seed(SEED_MAX, problem, sample))
            torch.Generator().manual_seed(sample_seed(SEED_MAX, problem, sample))
    lm = make_lm(method="zerosiam", seed=SEED_MAX, max_new_tokens=2, temperature=0.7)  # LoRA and predictor seeded
    assert isinstance(adapt_on_problem(lm, "1+1?").answer, str)


def numpy_forms(f: dataclasses.Field, value) -> list:
    import numpy as np

    base = kinds(f)
    if "int" in base and isinstance(value, int):
        out = [np.int64(value), np.min_scalar_type(value).type(value)]
        return out + ([np.uint64(value)] if value >= 0 else [])
    forms = [np.float64(value), np.float32(value)]
    if np.isfinite(np.float16(value)):
        forms.append(np.float16(value))
    return forms


NUMERIC = [(w, o, f) for w, o, f in FIELDS if kinds(f) & {"int", "float"} and "list" not in kinds(f)]


@pytest.mark.parametrize("where,owner,f", NUMERIC, ids=[f"{w}-{f.name}" for w, _, f in NUMERIC])
def test_numpy_numbers_are_taken_as_the_python_number_they_hold(where, owner, f):
    import numpy as np

    for value in good_values(f):
        for form in numpy_forms(f, value):
            expect = int(form) if "int" in kinds(f) and isinstance(value, int) else float(form)
            try:
                built = construct(where, owner, f.name, form)
            except ValueError as e:  # a float32 of a bound can round past it: refused as that number
                assert str(e).startswith(f"{f.name} must be"), (form, e)
                continue
            held = getattr(built.method_config if where == "method" else built, f.name)
            assert held == expect and type(held) is type(expect), (form, held)
            json.dumps(built.to_dict() if hasattr(built, "to_dict") else dataclasses.asdict(built))  # records stay JSON
    if "int" in kinds(f) and "float" not in kinds(f):  # a float of any kind is not an int, nor a numpy bool
        for form in (np.float32(2.0), np.float64(3.0), np.bool_(True)):
            msg = refused(lambda form=form: construct(where, owner, f.name, form))
            assert msg.startswith(f"{f.name} expects {type_name(f.type)}, got "), msg


@pytest.mark.parametrize("seed", range(6))
def test_an_addon_given_twice_in_a_method_spec_is_refused(seed):
    from zs_llm.config import ADDONS

    rng = random.Random(seed)
    method = rng.choice(sorted(METHODS))
    addons = rng.sample(sorted(ADDONS), rng.randint(1, len(ADDONS)))
    twice = rng.choice(addons)
    addons.insert(rng.randint(0, len(addons)), twice)
    spec = "+".join([method, *addons]) + rng.choice(["", ":lr=0.001"])
    assert refused(lambda: AdaptConfig.from_spec(spec)) == (
        f"method spec {spec!r}: the add-on +{twice} is given twice; give it once")


@pytest.mark.parametrize("seed", range(6))
def test_a_yaml_integer_with_a_leading_zero_is_refused_not_read_as_octal(seed, tmp_path):
    """YAML 1.1 reads `010` as 8 where `--set steps=010` reads 10: the file refuses it instead."""
    rng = random.Random(seed)
    field = rng.choice(["steps", "max_new_tokens", "lora_r", "seed"])
    text = "0" * rng.randint(1, 3) + str(rng.randint(1, 7)) + str(rng.randint(0, 7))
    y = tmp_path / "zero.yaml"
    y.write_text(f"methods: [zerosiam]\n{field}: {text}\n")
    assert refused(lambda: read_options(y)) == (f"{y}: {text} (line 2) has a leading zero, which YAML reads as an "
                                                "octal number; write it without the zero, or quote it")
    y.write_text(f"methods: [zerosiam]\n{field}: {text.lstrip('0')}\n")  # the same number written plainly is read
    assert read_options(y)[field] == int(text.lstrip("0"))
    y.write_text("methods: [zerosiam]\nseed: 0\n")  # a lone zero is zero
    assert read_options(y)["seed"] == 0
