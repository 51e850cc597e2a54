"""Prompt styles: templates made here (never a source's real text), their hashes in run.json,
the published readers on injected sources, and errors that name the fix when a source is missing."""

import hashlib
import json
import sys
import types

import pytest

from eval import prompting
from eval.prompting import PROMPT_STYLES, PUBLISHED, TemplateUnavailable, build_messages, load_template, prompt_info
from eval.runner import RunConfig, Runner

Q = "What is $\\frac{1}{2} + 1$?"  # braces in the question must pass through untouched


@pytest.fixture(autouse=True)
def fresh_sources():
    prompting._from_source.cache_clear()
    yield
    prompting._from_source.cache_clear()


def write(tmp_path, text, name="t.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- file templates ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("Think.\n\n{question}\n", [("user", f"Think.\n\n{Q}")]),  # the final newline is not part of it
    ("Q: {prompt}\nEnd with \\boxed{{}}.", [("user", f"Q: {Q}\nEnd with \\boxed{{}}.")]),  # the source's placeholder
    ("<|start_header_id|>user<|end_header_id|>\n\nSay {{it}}: {question}<|eot_id|>"
     "<|start_header_id|>assistant<|end_header_id|>\n\n", [("user", f"Say {{it}}: {Q}")]),  # Llama 3 framing
    ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
     "<|start_header_id|>user<|end_header_id|>\n\n{question}<|eot_id|>", [("system", "Be brief."), ("user", Q)]),
    ("<|im_start|>system\nStep by step.<|im_end|>\n<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n",
     [("system", "Step by step."), ("user", Q)]),  # ChatML, Qwen's eval-code form
])
def test_file_template_renders_the_question(tmp_path, text, expected):
    path = write(tmp_path, text)
    for style in sorted(PUBLISHED):  # any published style reads a file the same way
        messages = build_messages(Q, style, template=path)
        assert [(m["role"], m["content"]) for m in messages] == [(r, c) for r, c in expected]


@pytest.mark.parametrize("text, match", [
    ("End with \\boxed{}: {question}", r"placeholders \['', 'question'\].*doubled"),
    ("no placeholder at all", r"placeholders \[\].*one placeholder"),
    ("{question} and {answer}", r"placeholders \['answer', 'question'\]"),
    ("a lone } brace {question}", "Single '}'.*doubled"),
    ("<|im_start|>user\n{question}<|im_end|>\nstray text", "text after the last chat turn"),
])
def test_bad_templates_say_how_to_write_one(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        load_template("lighteval_math500", write(tmp_path, text))


def test_hash_is_the_sha256_of_the_template_and_stable(tmp_path):
    text = "Solve it: {question}"
    a = load_template("meta_llama31_math", write(tmp_path, text + "\n", "a.txt"))
    b = load_template("qwen25_math_cot", write(tmp_path, text, "b.txt"))
    assert a.sha256 == b.sha256 == hashlib.sha256(text.encode()).hexdigest()
    c = load_template("meta_llama31_math", write(tmp_path, text + " ", "c.txt"))
    assert c.sha256 != a.sha256
    path = tmp_path / "a.txt"
    path.write_text("Changed: {question}\n")  # an edited file is read again
    assert load_template("meta_llama31_math", str(path)).text == "Changed: {question}"


def test_run_json_records_the_prompt_and_refuses_another_template(tiny_dir, tmp_path):
    path = write(tmp_path, "Work it out: {question}\n")
    cfg = RunConfig(model=str(tiny_dir), methods=["noadapt"], datasets=["arith"], limit=2,
                    prompt_style="meta_llama31_math", prompt_template=path)
    out = tmp_path / "run"
    Runner(cfg, out, progress=False)._write_run_json()
    info = json.loads((out / "run.json").read_text())
    assert info["prompt"] == {"style": "meta_llama31_math", "origin": f"file {tmp_path.resolve() / 't.txt'}",
                              "sha256": hashlib.sha256(b"Work it out: {question}").hexdigest(),
                              "placeholder": "question"}
    assert info["config"]["prompt_template"] == path
    (tmp_path / "t.txt").write_text("Another one, longer: {question}\n")
    with pytest.raises(FileExistsError, match="another meta_llama31_math template"):
        Runner(cfg, out, progress=False)._write_run_json()


def test_own_styles_need_no_source_and_take_no_file(tmp_path):
    assert build_messages("2+3?", "plain") == [{"role": "user", "content": "2+3?"}]
    assert build_messages("2+3?", "boxed")[0]["content"].endswith("within \\boxed{}.")
    assert "Problem: 2+3?" in build_messages("2+3?", "llama31_paraphrase")[0]["content"]
    assert prompt_info("boxed")["origin"] == "eval.prompting.BOXED (our own)"
    with pytest.raises(ValueError, match="our own and takes no --prompt-template"):
        load_template("boxed", write(tmp_path, "{question}"))
    with pytest.raises(ValueError, match="unknown prompt style 'llama31'.*llama31_paraphrase"):
        load_template("llama31")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_template("lighteval_math500", str(tmp_path / "missing.txt"))


def test_system_message_cannot_double_a_template_system_turn(tmp_path):
    path = write(tmp_path, "<|im_start|>system\nS.<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n")
    assert build_messages("q", "plain", system="Sys.")[0] == {"role": "system", "content": "Sys."}
    with pytest.raises(ValueError, match="has its own system turn"):
        build_messages("q", "qwen25_math_cot", system="Sys.", template=path)


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        prompting.register("boxed")(lambda: None)
    assert PUBLISHED < set(PROMPT_STYLES)


# --- published sources, injected -----------------------------------------------------------------
def fake_lighteval_task(query_format):
    """A stand-in for a lighteval module holding the math_500 task config."""
    task = types.SimpleNamespace(prompt_function=lambda line, task_name=None: types.SimpleNamespace(
        query=query_format.format(problem=line["problem"])))
    return types.SimpleNamespace(math_500=task)


def test_lighteval_template_is_read_from_the_installed_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "lighteval.tasks.tasks.math_500",
                        fake_lighteval_task("Made-up instruction, \\boxed{{X}}.\n\n{problem}"))
    t = load_template("lighteval_math500")
    assert t.text == "Made-up instruction, \\boxed{{X}}.\n\n{question}"
    assert t.origin.startswith("lighteval ") and t.origin.endswith("lighteval.tasks.tasks.math_500.math_500"
                                                                    ".prompt_function")
    assert build_messages(Q, "lighteval_math500") == [
        {"role": "user", "content": f"Made-up instruction, \\boxed{{X}}.\n\n{Q}"}]


def test_lighteval_before_0_12_is_read_from_default_tasks(monkeypatch):
    monkeypatch.setitem(sys.modules, "lighteval.tasks.tasks.math_500", None)  # that module is absent
    monkeypatch.setitem(sys.modules, "lighteval.tasks.default_tasks", fake_lighteval_task("Older: {problem} \\boxed"))
    assert load_template("lighteval_math500").text == "Older: {question} \\boxed"


def test_lighteval_without_boxed_warns(monkeypatch):
    monkeypatch.setitem(sys.modules, "lighteval.tasks.tasks.math_500", fake_lighteval_task("{problem}\nANSWER: $X"))
    with pytest.warns(UserWarning, match="does not ask for"):
        load_template("lighteval_math500")


def test_meta_template_is_derived_from_the_evals_row(monkeypatch):
    import datasets

    question = "Made-up problem {x}?"
    row = {"input_question": question, "input_final_prompts": [
        "<|start_header_id|>user<|end_header_id|>\n\nMade-up rules {a}.\n\nProblem: " + question
        + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"]}
    seen = {}

    def load_dataset(*args, **kw):
        seen.update(args=args, kw=kw)
        return iter([row])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    t = load_template("meta_llama31_math")
    assert seen["args"] == ("meta-llama/Llama-3.1-8B-Instruct-evals", "Llama-3.1-8B-Instruct-evals__math__details")
    assert seen["kw"]["split"] == "latest"
    assert t.turns == [("user", "Made-up rules {{a}}.\n\nProblem: {question}")]
    assert build_messages("2+2?", "meta_llama31_math") == [
        {"role": "user", "content": "Made-up rules {a}.\n\nProblem: 2+2?"}]


def test_qwen_template_is_read_from_the_chat_template(monkeypatch):
    import transformers

    class Tok:
        def apply_chat_template(self, messages, **kw):
            return f"<|im_start|>system\nMade-up system.<|im_end|>\n<|im_start|>user\n{messages[0]['content']}" \
                   "<|im_end|>\n<|im_start|>assistant\n"

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda name: Tok())
    assert build_messages("q?", "qwen25_math_cot") == [{"role": "system", "content": "Made-up system."},
                                                        {"role": "user", "content": "q?"}]
    assert load_template("qwen25_math_cot").origin.startswith("hub model Qwen/Qwen2.5-Math-7B-Instruct")


def test_save_then_read_gives_the_same_hash(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "lighteval.tasks.tasks.math_500", fake_lighteval_task("A {{b}} \\boxed\n{problem}\n"))
    path = tmp_path / "saved.txt"
    assert prompting.main(["lighteval_math500", str(path)]) == 0
    source = load_template("lighteval_math500")
    assert source.sha256 in capsys.readouterr().out
    assert load_template("lighteval_math500", str(path)).sha256 == source.sha256


# --- missing sources -----------------------------------------------------------------------------
def test_missing_sources_name_the_fix(monkeypatch):
    import datasets
    import transformers

    monkeypatch.setitem(sys.modules, "lighteval", None)  # not installed

    def offline(*args, **kw):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    fixes = {
        "lighteval_math500": ["pip install lighteval", "--prompt-template FILE"],
        "meta_llama31_math": ["meta-llama/Llama-3.1-8B-Instruct-evals", "Llama-3.1-8B-Instruct-evals__math__details",
                              "input_final_prompts", "hf auth login",
                              "python -m eval.prompting meta_llama31_math FILE", "--prompt-template FILE"],
        "qwen25_math_cot": ["Qwen/Qwen2.5-Math-7B-Instruct", "evaluation/utils.py", "--prompt-template FILE"],
        "openr1_boxed": ["huggingface/open-r1", "scripts/generate_reasoning.py", "--prompt-template FILE"],
    }
    assert set(fixes) == PUBLISHED
    for style, words in fixes.items():
        with pytest.raises(TemplateUnavailable) as e:
            load_template(style)
        for word in words:
            assert word in str(e.value), (style, word)
    assert prompting.main(["openr1_boxed", "unused.txt"]) == 2


def test_a_missing_source_stops_the_run_before_the_model_loads(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lighteval", None)
    cfg = RunConfig(model=str(tiny_dir), methods=["noadapt"], datasets=["arith"], limit=1,
                    prompt_style="lighteval_math500")
    runner = Runner(cfg, tmp_path / "run", progress=False)
    runner.load_model = lambda: pytest.fail("the model loaded before the prompt was read")
    with pytest.raises(TemplateUnavailable, match="pip install lighteval"):
        runner.run()
    assert not (tmp_path / "run").exists()
