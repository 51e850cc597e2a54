"""One option system for `python -m eval run` and the recipes (eval.options): --help lists every
field once with its help and default, choices come from the registries, a wrong value names the
field and its type, and a recipe's YAML and the CLI's give the same RunConfig both ways."""

import subprocess
import sys
from pathlib import Path

import pytest

from eval.cli import main as cli_main
from eval.datasets import DATASETS
from eval.options import dump_yaml, options, parse_options, run_config
from eval.prompting import PROMPT_STYLES
from recipes._common import resolve, split
from zs_llm.methods import METHODS

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"llama31_8b_math": REPO / "recipes" / "configs" / "llama31_8b_math.yaml",
           "smollm2_135m_math": REPO / "recipes" / "configs" / "smollm2_135m_math.yaml"}


def option_lines(text: str) -> list[str]:
    """The lines of a --help text that introduce an option (`  --name ...`)."""
    return [line.split()[0].rstrip(",") for line in text.splitlines() if line.startswith("  --")]


def check_help(text: str, defaults: dict[str, str]) -> None:
    names = option_lines(text)
    assert sorted(set(names)) == sorted(names), "an option is listed twice"
    for name, o in options().items():
        assert f"--{name}" in names, name
        first_words = " ".join(o.help.split()[:3])
        assert first_words in " ".join(text.split()), (name, first_words)
    for name, shown in defaults.items():
        block = " ".join(text.split(f"  --{name} ", 1)[1].split("  --", 1)[0].split())
        assert f"(default: {shown})" in block, (name, block)


def test_cli_help_lists_every_field_with_help_and_default(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["run", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    check_help(text, {"model": "smollm2-135m-instruct", "lr": "None", "max_new_tokens": "512", "alpha": "1.0"})
    assert "--config FILE" in text and "--set KEY=VALUE" in text


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_help_shows_its_yaml_defaults(recipe, capsys):
    with pytest.raises(SystemExit) as e:
        resolve(RECIPES[recipe], ["-h"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    model = "meta-llama/Llama-3.1-8B-Instruct" if recipe.startswith("llama") else "smollm2-135m-instruct"
    check_help(text, {"model": model, "out": f"runs/{recipe}", "guard": "False"})


def test_recipe_script_help_runs(tmp_path):
    """The bug that started this: `python recipes/llama31_8b_math.py --help` said "unknown field --help"."""
    proc = subprocess.run([sys.executable, str(REPO / "recipes" / "llama31_8b_math.py"), "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "accelerate launch" in proc.stdout  # the recipe's docstring: the command to run it
    check_help(proc.stdout, {"dtype": "bfloat16", "max_new_tokens": "4096"})
    assert option_lines(proc.stdout).count("--seed") == 1


def test_choices_come_from_the_registries(capsys):
    opts = options()
    assert opts["prompt_style"].choices == tuple(PROMPT_STYLES)
    assert opts["optimizer"].choices == ("sgd", "adamw")
    assert all(m in opts["methods"].help for m in METHODS) and all(d in opts["datasets"].help for d in DATASETS)
    METHODS["throwaway_method"] = METHODS["tent"]  # a method registered in one place shows in --help
    try:
        assert "throwaway_method" in options()["methods"].help
    finally:
        del METHODS["throwaway_method"]
    with pytest.raises(ValueError, match=r"--prompt_style: prompt_style='nope' is not valid; choose one of boxed"):
        parse_options(["--prompt_style", "nope"])


@pytest.mark.parametrize("argv,message", [
    (["--limit", "many"], r"--limit: limit expects int \| None, got 'many'; e.g. 10"),
    (["--lr", "fast"], r"--lr: lr expects float \| None, got 'fast'; e.g. 1.0e-4"),
    (["--guard", "maybe"], r"--guard: guard expects bool, got 'maybe'; e.g. false"),
    (["--alpha", "x"], r"--alpha: alpha expects float, got 'x'; e.g. 1.0"),
    (["--learning_rate", "1"], r"unknown field --learning_rate; valid fields: .*lr"),
    (["--limi", "3"], r"unknown field --limi"),  # no abbreviations: a typo is not --limit
    (["--set", "lrr=1"], r"lrr: not a setting of any method"),
    (["--set", "lr=abc"], r"--set lr=abc: lr expects float \| None, got 'abc'"),
])
def test_a_wrong_value_names_the_field_and_the_type(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_options(argv)


def test_yaml_values_name_file_field_and_type(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("alpha: high\n")
    with pytest.raises(ValueError, match=r"c.yaml: alpha expects float, got 'high'; e.g. 1.0"):
        parse_options(["--config", str(y)])


def test_flags_override_yaml_and_settings_reach_every_method(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("methods: [tent, zerosiam]\nlr: 1.0e-4\nalpha: 0.5\nadapt:\n  seed: 7\nseed: 2\nout: o\n")
    given = parse_options(["--config", str(y), "--lr", "3e-4", "--methods", "noadapt,zerosiam", "tent",
                           "--set", "momentum=0.5", "--no_progress"])
    cfg, launch = run_config(given)
    assert cfg.methods == ["noadapt", "zerosiam", "tent"] and cfg.seed == 2
    assert cfg.adapt == {"lr": 3e-4, "alpha": 0.5, "seed": 7, "momentum": 0.5}
    assert launch.out == "o" and launch.progress is False and launch.report is True
    assert parse_options(["--lora_target_modules", "none"])["lora_target_modules"] is None


def test_hashes_of_existing_configurations_are_unchanged():
    """Run folders resume by RunConfig.hash(): the same inputs must give the hashes they gave
    before the option system moved to HfArgumentParser (values computed with the old parsers)."""
    old_yaml = ["--datasets", "arith,math500", "--limit", "10", "--prompt_style", "boxed", "--max_new_tokens", "96",
                "--methods", "noadapt,tent,zerosiam"]
    run, _, _ = split(resolve(RECIPES["smollm2_135m_math"], old_yaml))  # the recipe as it was then
    assert run.hash() == "af0d3bc1e10f"
    before_eata_deyo = ["--methods", "noadapt,tent,come,sar,slot,eminf,zerosiam,zerosiam+sar,zerosiam+eata,tent+guard,"
                        "zerosiam+guard"]  # the recipe's methods as they were then
    run, _, _ = split(resolve(RECIPES["llama31_8b_math"], [*before_eata_deyo, "--lr", "3e-4", "--alpha", "0.5",
                                                           "--guard", "true"]))
    assert run.hash() == "aaec6255ca5c"
    cli = run_config(parse_options(["--model", "m", "--methods", "noadapt,tent", "--set", "lr=1e-3", "--set",
                                    "seed=3", "--seed", "2", "--datasets", "arith", "--limit", "5"]))[0]
    assert cli.hash() == "0a43938af65d"


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_a_recipe_yaml_is_a_cli_config_and_back(recipe, tmp_path, monkeypatch):
    """recipe YAML -> `python -m eval run --config` gives the recipe's RunConfig; that config
    written out as YAML -> the recipe's --config gives it back."""
    import eval.cli

    seen = []

    class FakeRunner:
        def __init__(self, cfg, out, progress=True, overwrite=False, report_to="none", draft_lookup=0):
            seen.append((cfg, str(out), overwrite))

        def run(self):
            return None

    monkeypatch.setattr(eval.cli, "Runner", FakeRunner)
    extra = ["--limit", "3", "--alpha", "0.25", "--set", "seed=5", "--overwrite"]
    from_recipe = split(resolve(RECIPES[recipe], extra))
    assert cli_main(["run", "--config", str(RECIPES[recipe]), *extra, "--no_report"]) == 0
    assert seen[-1] == from_recipe
    cfg, out, overwrite = from_recipe
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(dump_yaml(cfg))
    assert cli_main(["run", "--config", str(dumped), "--out", out, "--overwrite", "--no_report"]) == 0
    assert seen[-1] == from_recipe and seen[-1][0].hash() == cfg.hash()
    back = split(resolve(RECIPES[recipe], ["--config", str(dumped), "--overwrite"]))
    assert back == from_recipe


@pytest.mark.parametrize("methods", [["noadapt", "tent", "zerosiam:alpha=0"], ["tent+clip", "zerosiam+guard:lr=1e-2"],
                                     ["come:steps=2"]])
def test_each_method_spec_is_parsed_once_before_a_model_loads(methods, tiny_dir, tmp_path, monkeypatch):
    """cli -> options -> RunConfig (resolves each spec once) -> Runner -> run.json: no layer parses
    a spec again; the runner and run.json (which the report reads) hold the same resolved settings."""
    import json

    from eval.runner import Runner
    from zs_llm.config import AdaptConfig

    parsed = []
    original = AdaptConfig.from_spec.__func__

    def counting(cls, spec, base=None):
        parsed.append(spec)
        return original(cls, spec, base)

    monkeypatch.setattr(AdaptConfig, "from_spec", classmethod(counting))
    given = parse_options(["--model", str(tiny_dir), "--methods", ",".join(methods), "--lr", "1e-3", "--datasets",
                           "arith", "--limit", "2", "--out", str(tmp_path / "run")])
    cfg, launch = run_config(given)
    r = Runner(cfg, launch.out, progress=False)
    r.lock.acquire()
    try:
        r._write_run_json()  # what run() does before it loads the model
    finally:
        r.lock.release()
    assert sorted(parsed) == sorted(methods)
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["adapt_configs"]
    resolved = {m.label: m for m in cfg.resolved_methods()}
    assert recorded == {label: m.record() for label, m in resolved.items()}
    assert list(r.adapt_configs) == list(resolved) and all(r.adapt_configs[k] is m.config for k, m in resolved.items())
    for m in resolved.values():  # a spec's own lr wins over --lr; noadapt records its default
        own = dict(p.split("=") for p in m.spec.split(":")[1:])
        if m.config.method != "noadapt":
            assert m.settings["lr"] == float(own.get("lr", 1e-3))


def test_config_flags_error_is_one_line():
    with pytest.raises(ValueError, match=r"^--config needs a YAML file \(.*expected one argument\)$"):
        parse_options(["--config"])
