"""Golds that are not text or a number, and chat messages with unknown roles or the wrong shape,
are refused in one line that says where and what to fix (issue 23, item 6)."""

import json
import math
import random
import string
from pathlib import Path

import pytest

from eval.datasets import DATASETS, DatasetSpec, HubSource, Problem, check_gold, load_problems
from zs_llm import AdaptConfig, ZeroSiamLM, adapt_generate
from zs_llm.adapt import adapt_on_problem
from zs_llm.model import CHAT_ROLES, check_prompt
from zs_llm.testing import char_tokenizer, tiny_model

# JSON text of each kind of gold that is not text or a finite number (json.loads reads NaN / Infinity)
BAD_GOLDS = {"null": "null", "nan": "NaN", "inf": "Infinity", "-inf": "-Infinity", "true": "true",
             "false": "false", "list": "[1, 2]", "empty list": "[]", "object": '{"a": 1}', "empty object": "{}"}
LOCAL_SETS = ("math500", "aime24", "minerva_math", "college_math", "gsm8k", "amc23")


def _write_set(root: Path, name: str, answers_json: list[str]) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "test.jsonl"
    lines = [f'{{"problem": "What is {i} + 1?", "answer": {a}}}' for i, a in enumerate(answers_json)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("name", LOCAL_SETS)
@pytest.mark.parametrize("kind", sorted(BAD_GOLDS))
def test_a_bad_gold_in_a_local_file_names_the_file_and_line(name, kind, tmp_path):
    good = '"3 #### 3"' if name == "gsm8k" else "3"
    path = _write_set(tmp_path, name, [good, good, BAD_GOLDS[kind], good])
    with pytest.raises(ValueError) as e:
        load_problems(name, data_dir=tmp_path, source="local")
    msg = str(e.value)
    assert msg.startswith(f"{path} line 3: ") and "\n" not in msg and "fix or remove that line" in msg
    if kind == "null" and name in ("aime24", "minerva_math"):
        assert "has no" in msg  # these sets read a null answer as absent (then the solution's box, here none)
    else:
        assert "gold answer" in msg


@pytest.mark.parametrize("seed", range(4))
def test_finite_numbers_and_text_are_golds(seed, tmp_path):
    rng = random.Random(seed)
    values = [rng.randint(-10**6, 10**6), rng.uniform(-1e6, 1e6), rng.choice([0, 0.0, -0.0, 1e-300, 1e300]),
              "".join(rng.choices(string.ascii_letters + string.digits + "\\{}^", k=rng.randint(1, 12)))]
    _write_set(tmp_path, "math500", [json.dumps(v) for v in values])
    golds = [p.gold for p in load_problems("math500", data_dir=tmp_path, source="local")]
    assert golds == [str(v).strip() for v in values]
    for v in values:
        assert check_gold(v) is v


@pytest.mark.parametrize("value", [None, math.nan, math.inf, -math.inf, True, False, [1], (), {"a": 1}, {1, 2},
                                   b"3", object()],
                         ids=lambda v: "object()" if type(v) is object else repr(v))
def test_a_problem_built_in_memory_refuses_a_bad_gold(value):
    with pytest.raises(ValueError) as e:
        Problem("q7", "What is 1 + 1?", value)
    assert str(e.value).startswith("problem 'q7': the gold answer is ") and "\n" not in str(e.value)


@pytest.mark.parametrize("value", [2, -7, 2.5, 1e-9, 10**30])
def test_a_problem_built_in_memory_keeps_a_finite_number_as_text(value):
    assert Problem("q", "What?", value).gold == str(value)


def test_a_registered_set_with_a_bad_gold_is_refused_when_read():
    def generate(seed, data_dir=None):
        return [Problem(f"u{i}", f"What is {i}?", gold) for i, gold in enumerate(["1", 2, None])]

    DATASETS["user_set_bad_gold"] = DatasetSpec("user_set_bad_gold", None, (), None, None, generate=generate)
    try:
        with pytest.raises(ValueError, match=r"^problem 'u2': the gold answer is null"):
            load_problems("user_set_bad_gold")
    finally:
        del DATASETS["user_set_bad_gold"]


@pytest.mark.parametrize("kind", ["null", "nan", "object"])
def test_a_bad_gold_from_the_hub_names_the_copy_and_row(kind, monkeypatch):
    datasets = pytest.importorskip("datasets")
    rows = [{"problem": "What is 1 + 1?", "answer": "2"}, {"problem": "What?", "answer": json.loads(BAD_GOLDS[kind])}]
    monkeypatch.setattr(datasets, "load_dataset", lambda path, config, split: rows)
    monkeypatch.setattr("zs_llm.loading.hub_offline_reason", lambda: None)  # as if online: the fake answers
    spec = DATASETS["math500"]
    with pytest.raises(ValueError) as e:
        load_problems("math500", source="hub")
    hub: HubSource = spec.hub[0]
    msg = str(e.value)
    assert msg.startswith(f"math500 from the hub ({hub.path}, split {hub.split}) row 1: the gold answer is")
    assert "\n" not in msg


# --- chat roles and message shapes --------------------------------------------------------------
def _random_roles(seed: int, k: int = 12) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + " _-\n\té"
    roles = {"".join(rng.choices(alphabet, k=rng.randint(0, 10))) for _ in range(k)}
    roles |= {"hacker", "tool", "function", "ipython", "developer", "User", " user", "assistant ", "SYSTEM", ""}
    return sorted(roles - set(CHAT_ROLES))


@pytest.mark.parametrize("role", _random_roles(0) + _random_roles(1))
def test_an_unknown_role_is_refused_naming_it_and_the_allowed_ones(role):
    for messages in ([{"role": role, "content": "2+2?"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                      {"role": role, "content": "x"}]):
        with pytest.raises(ValueError) as e:
            check_prompt(messages)
        msg = str(e.value)
        assert f"role {role!r}" in msg and "system, user, assistant" in msg and "\n" not in msg
        assert f"chat message {len(messages) - 1} " in msg


@pytest.mark.parametrize("role", ["hacker", "tool", "User"])
def test_adapt_generate_refuses_an_unknown_role_before_touching_the_model(role):
    model, tok = tiny_model("llama"), char_tokenizer()
    names = {n for n, _ in model.named_modules()}
    with pytest.raises(ValueError, match=f"role '{role}'"):
        adapt_generate(model, [{"role": role, "content": "2+2?"}], tokenizer=tok, max_new_tokens=4)
    assert {n for n, _ in model.named_modules()} == names  # not wrapped: no LoRA layers added
    lm = ZeroSiamLM(model, tok, AdaptConfig(method="tent", max_new_tokens=4, schedule="episodic",
                                                answer="regenerate"))
    before = lm.snapshot()["tensors"]
    for call in (lambda m: adapt_on_problem(lm, m), lambda m: lm.generate_texts([m]), lambda m: lm.encode(m)):
        with pytest.raises(ValueError, match="the roles are system, user, assistant"):
            call([{"role": "user", "content": "hi"}, {"role": role, "content": "2+2?"}])
    assert lm.problems_seen == 0
    assert all((before[k] == v).all() for k, v in lm.snapshot()["tensors"].items())


MALFORMED = [
    ({"role": "user", "content": "2+2?"}, "the prompt is dict"),  # one message, not a list of them
    (42, "the prompt is int"),
    (b"2+2?", "the prompt is bytes"),
    ([], "empty chat"),
    (["2+2?"], "chat message 0 is a str"),
    ([[("role", "user")]], "chat message 0 is a list"),
    ([{"content": "2+2?"}], "chat message 0 has no 'role'"),
    ([{"role": 1, "content": "2+2?"}], "chat message 0 has a int as its 'role'"),
    ([{"role": "user", "content": "a"}, {"role": "user"}], "chat message 1 has no 'content'"),
    ([{"role": "user", "content": 4}], "chat message 0 has a int as its 'content'"),
    ([{"role": "user", "content": ["2", "+2?"]}], "chat message 0 has a list as its 'content'"),
    ([{"role": "user", "content": {"text": "2+2?"}}], "chat message 0 has a dict as its 'content'"),
    ([{"role": "user", "content": None}], "chat message 0 has a NoneType as its 'content'"),
]


@pytest.mark.parametrize("prompt,words", MALFORMED, ids=[w for _, w in MALFORMED])
def test_malformed_messages_are_one_line_errors(prompt, words):
    with pytest.raises(ValueError) as e:
        check_prompt(prompt)
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "2+2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
    [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+2?"}],
])
def test_the_known_roles_are_accepted(messages):
    check_prompt(messages)


@pytest.mark.parametrize("seed", range(6))
def test_a_chat_without_a_user_question_is_refused(seed):
    """Blank user messages, or none at all, are an empty prompt, as an empty string is."""
    rng = random.Random(seed)
    blank = "".join(rng.choice(" \n\t\r") for _ in range(rng.randint(0, 4)))
    others = [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Sure."}]
    chat = [{"role": "user", "content": blank}] * rng.randint(0, 2) + rng.sample(others, rng.randint(0, 2))
    rng.shuffle(chat)
    if not chat:
        chat = [{"role": "user", "content": blank}]
    with pytest.raises(ValueError, match="no user message with text"):
        check_prompt(chat)
    check_prompt(chat + [{"role": "user", "content": "What is 2 + 2?"}])  # one question is enough
