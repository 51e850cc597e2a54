"""Model and prompt control of `python -m eval run` (issue 25 item 6): --chat_template auto|none|FILE,
--system_prompt, --revision, --trust_remote_code and --seed, each recorded in run.json, the ones
that change results part of the run's identity (a resume with another is refused), and a model
without a chat template named in the report."""

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.cli import main as cli_main
from eval.identity import RunChanged
from eval.options import parse_options, run_config
from eval.report import write_report
from eval.rows import read_rows, stream_path
from eval.runner import RunConfig, Runner
from eval.streaming import seed_everything
from zs_llm.testing import char_tokenizer, tiny_model

#: a chat template of our own: a prompt rendered through it starts with "[Q]"
TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'system' %}[S]{{ m['content'] }}{% else %}[Q]{{ m['content'] }}"
            "{% endif %}{% endfor %}{% if add_generation_prompt %}[A]{% endif %}")


@pytest.fixture(autouse=True)
def own_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZS_LLM_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny model folders: an instruct-like one (its tokenizer has a chat template) and a base
    one (none)."""
    out = {}
    for name, has_template in (("chat", True), ("base", False)):
        d = tmp_path_factory.mktemp(name)
        tiny_model("llama").save_pretrained(d)
        char_tokenizer(chat_template=has_template).save_pretrained(d)
        out[name] = d
    return out


def cfg(model, **kw):
    base = dict(model=str(model), methods=["noadapt"], datasets=["arith"], limit=2, batch_size=2,
                adapt={"max_new_tokens": 2})
    return RunConfig(**{**base, **kw})


def prompts(out: Path) -> list[str]:
    return [r["prompt"] for r in read_rows(stream_path(out, "noadapt", "arith"))]


# --- --chat_template ----------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["chat", "base"])
@pytest.mark.parametrize("choice", ["auto", "none", "file"])
def test_chat_template_choice_decides_the_prompt_text(model, choice, models, tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text(TEMPLATE)
    given = str(template) if choice == "file" else choice
    out = Runner(cfg(models[model], chat_template=given), tmp_path / "run", progress=False).run()
    texts = prompts(out)
    info = json.loads((out / "run.json").read_text())
    plain = choice == "none" or (choice == "auto" and model == "base")
    assert len(texts) == 2
    if plain:
        assert all(t.startswith("user: ") and t.endswith("\nassistant:") for t in texts), texts
    elif choice == "file":
        assert all(t.startswith("[Q]") and t.endswith("[A]") for t in texts), texts
        assert info["chat_template"]["sha256"] == hashlib.sha256(TEMPLATE.encode()).hexdigest()
    else:
        assert all(t.startswith("<|user|>") for t in texts), texts
    assert info["prompt_format"]["plain"] is plain
    assert info["config"]["chat_template"] == given
    report = write_report(out).read_text()
    assert ("**Prompt format:**" in report) is (plain or choice == "file")
    if plain and choice == "auto":
        assert "has no chat template" in report


def test_an_edited_chat_template_file_is_refused_on_resume(models, tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text(TEMPLATE)
    c = cfg(models["chat"], chat_template=str(template))
    Runner(c, tmp_path / "run", progress=False).run()
    before = (tmp_path / "run" / "rows" / "noadapt__arith.jsonl").read_bytes()
    template.write_text(TEMPLATE.replace("[Q]", "[Question]"))
    with pytest.raises(RunChanged, match="chat template file changed"):
        Runner(c, tmp_path / "run", progress=False).run()
    assert (tmp_path / "run" / "rows" / "noadapt__arith.jsonl").read_bytes() == before


@pytest.mark.parametrize("bad,error", [("missing", "no such file"), ("broken", "does not render a user message")])
def test_a_bad_chat_template_file_is_one_line(bad, error, models, tmp_path, capsys):
    template = tmp_path / "t.jinja"
    if bad == "broken":
        template.write_text("{% for m in messages %}{{ m['content'] }")  # unclosed tag
    code = cli_main(["run", "--model", str(models["chat"]), "--methods", "noadapt", "--datasets", "arith",
                     "--limit", "1", "--max_new_tokens", "2", "--chat_template", str(template), "--out",
                     str(tmp_path / "run"), "--no_progress", "--no_report"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and error in err[-1], err


# --- --system_prompt ----------------------------------------------------------------------------
@pytest.mark.parametrize("system", ["Answer tersely.", "Think step by step; box the result."])
def test_a_system_prompt_reaches_every_prompt_and_a_change_is_refused(system, models, tmp_path):
    out = Runner(cfg(models["chat"], system_prompt=system), tmp_path / "run", progress=False).run()
    texts = prompts(out)
    assert all(t.startswith(system) and "<|user|>" in t for t in texts), texts  # CHAT_TEMPLATE writes it bare
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["system_prompt"] == system
    assert f"**System prompt:** {system!r}" in write_report(out).read_text()
    with pytest.raises(FileExistsError, match="system_prompt"):
        Runner(cfg(models["chat"], system_prompt=system + " Really."), out, progress=False)
    with pytest.raises(FileExistsError, match="system_prompt"):
        Runner(cfg(models["chat"]), out, progress=False)  # dropping it changes results too


def test_new_settings_at_their_defaults_keep_old_hashes(models):
    """Folders from before these flags resume: at their defaults they are not in the hash."""
    c = cfg(models["chat"])
    for field, value in (("chat_template", "none"), ("system_prompt", "Hi."), ("revision", "v2"), ("seed", 3)):
        assert cfg(models["chat"], **{field: value}).hash() != c.hash(), field
    assert cfg(models["chat"], trust_remote_code=True).hash() == c.hash()  # a permission, not a result


# --- --revision, --trust_remote_code --------------------------------------------------------------
@pytest.mark.parametrize("revision,trust", [("v2", True), (None, True), ("0123abc", False), (None, False)])
def test_revision_and_trust_remote_code_reach_every_from_pretrained(revision, trust, models, tmp_path, monkeypatch):
    import transformers

    seen = []
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        real = cls.from_pretrained.__func__

        def spy(klass, *a, _real=real, _name=cls.__name__, **kw):
            seen.append((_name, kw.get("revision"), kw.get("trust_remote_code", False)))
            kw.pop("revision", None)  # a local folder has no revisions; the call is what is checked
            return _real(klass, *a, **kw)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    argv = ["--model", str(models["chat"]), "--methods", "noadapt", "--datasets", "arith", "--limit", "1",
            "--max_new_tokens", "2", "--out", str(tmp_path / "run")]
    argv += ["--revision", revision] if revision else []
    argv += ["--trust_remote_code"] if trust else []
    c, launch = run_config(parse_options(argv))
    out = Runner(c, launch.out, progress=False).run()
    assert sorted(seen) == [("AutoModelForCausalLM", revision, trust), ("AutoTokenizer", revision, trust)]
    config = json.loads((out / "run.json").read_text())["config"]
    assert (config["revision"], config["trust_remote_code"]) == (revision, trust)


# --- --seed -------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 5, 2**40 + 3])
def test_seed_seeds_the_methods_unless_set_seed_overrides(seed, models):
    c = run_config(parse_options(["--model", str(models["chat"]), "--methods", "noadapt,tent,zerosiam:seed=9",
                                  "--seed", str(seed)]))[0]
    assert [m.settings["seed"] for m in c.resolved_methods()] == [seed, seed, 9]
    c = run_config(parse_options(["--model", str(models["chat"]), "--methods", "tent", "--seed", str(seed),
                                  "--set", "seed=7"]))[0]
    assert [m.settings["seed"] for m in c.resolved_methods()] == [7]


@pytest.mark.parametrize("seed", [1, 12345, 2**63 - 1])
def test_seed_everything_makes_the_global_generators_repeat(seed):
    draws = []
    for _ in range(2):
        seed_everything(seed)
        draws.append((random.random(), float(np.random.rand()), float(torch.rand(1))))
    assert draws[0] == draws[1]
    seed_everything(seed + 1 if seed < 2**63 - 1 else 0)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) != draws[0]


@pytest.mark.parametrize("seed", [3, 11])
def test_a_run_seeds_everything_from_its_seed(seed, models, tmp_path):
    out = Runner(cfg(models["chat"], seed=seed, limit=3), tmp_path / "run", progress=False).run()
    assert torch.initial_seed() == seed
    rows = read_rows(stream_path(out, "noadapt", "arith"))
    other = Runner(cfg(models["chat"], seed=seed + 1, limit=3), tmp_path / "other", progress=False).run()
    assert [r["id"] for r in rows] != [r["id"] for r in read_rows(stream_path(other, "noadapt", "arith"))]
    info = json.loads((out / "run.json").read_text())
    assert info["adapt_configs"]["noadapt"]["seed"] == seed and rows[0]["config"]["seed"] == seed


@pytest.mark.parametrize("seed", [2, 9])
def test_a_folder_from_before_seed_seeded_the_methods_resumes_only_with_their_old_seed(seed, models, tmp_path):
    """A run.json written when --seed left the methods at seed 0 (same config, same hash then):
    the same command now means seeded methods, so it is refused; `--set seed=0` resumes it."""
    from eval.run_folder import RESULT_FREE_FIELDS, without_later_defaults

    out = tmp_path / "run"
    pinned = cfg(models["chat"], seed=seed, adapt={"max_new_tokens": 2, "seed": 0})
    r = Runner(pinned, out, progress=False)
    r.problems = lambda d: Runner.problems(r, d)[:1]  # stopped after one problem
    r.run()
    old = cfg(models["chat"], seed=seed)
    info = json.loads((out / "run.json").read_text())
    before = without_later_defaults({k: v for k, v in old.to_dict().items() if k not in RESULT_FREE_FIELDS})
    info["config"], info["config_hash"] = old.to_dict(), hashlib.sha256(
        json.dumps(before, sort_keys=True).encode()).hexdigest()[:12]
    (out / "run.json").write_text(json.dumps(info))  # as the older harness wrote it
    rows = (out / "rows" / "noadapt__arith.jsonl").read_bytes()
    assert old.hash() != info["config_hash"]
    with pytest.raises(FileExistsError, match="another configuration"):
        Runner(old, out, progress=False)
    Runner(pinned, out, progress=False).run()
    assert (out / "rows" / "noadapt__arith.jsonl").read_bytes().startswith(rows)
    assert len(read_rows(stream_path(out, "noadapt", "arith"))) == 2
