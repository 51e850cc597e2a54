import torch

from zs_llm.adapt import adapt_on_problem, adapt_step, make_batch
from zs_llm.diagnostics import collapse_measures


def step(lm):
    ids = lm.encode("drive me")
    return [adapt_step(lm, make_batch(ids, lm.generate_ids(ids)[0], "response"))]


def test_guard_rolls_back_to_the_checkpoint_bitwise(make_lm):
    lm = make_lm(lr=0.5, predictor_lr=0.5, guard_window=4, guard_every=2, guard_action="rollback_lower_lr", guard=True)
    g = lm.guard
    lrs = [x["lr"] for x in lm.optimizer.param_groups]
    for i in range(4):  # a full window of healthy problems with distinct answers: a checkpoint is kept
        assert g.observe(f"so \\boxed{{{i}}}", step(lm)) is None
    assert g.healthy_at == 4
    lm.zs_config.guard_every = 100  # no further checkpoint before the trigger
    kept = {k: v.clone() for k, v in g.healthy["tensors"].items()}
    event = None
    for _ in range(4):  # a large learning rate and one answer for everything
        event = event or g.observe("23 - 13 = \\boxed{6}", step(lm))
    assert event and "one answer" in event and "halved" in event
    for k, v in lm.state_tensors().items():
        assert torch.equal(v, kept[k]), k
    assert [x["lr"] for x in lm.optimizer.param_groups] == [lr / 2 for lr in lrs]
    assert lm.guard.events[0]["restored_to"] == 4


def test_guard_stop_action_and_stream_finishes(make_lm):
    lm = make_lm(lr=0.5, predictor_lr=0.5, guard_window=3, guard_action="rollback_stop", guard=True)
    for _ in range(3):
        lm.guard.observe("\\boxed{6}", step(lm))
    assert lm.adapt_enabled is False
    res = adapt_on_problem(lm, "after the stop")  # the stream goes on, without adapting
    assert res.steps == [] and isinstance(res.answer, str)


def test_guard_changes_nothing_on_a_healthy_stream(make_lm):
    prompts = [f"What is {i} + {i + 1}?" for i in range(6)]
    runs = []
    for guard in (True, False):
        lm = make_lm(lr=1e-3, guard=guard, guard_window=3, guard_every=1)
        rows = [adapt_on_problem(lm, p, problem_id=str(i)) for i, p in enumerate(prompts)]
        runs.append([(r.answer, r.events, [s["loss"] for s in r.steps]) for r in rows])
        if guard:
            assert lm.guard.events == []
    assert runs[0] == runs[1]


def row(ans, resp=None, ent=1.0):
    return {"extracted": ans, "response": resp or f"The answer is \\boxed{{{ans}}}.", "correct": False,
            "steps": [{"entropy": ent}]}


def test_verdicts_on_hand_made_streams():
    healthy = [row(str(i)) for i in range(40)]
    assert collapse_measures(healthy)["verdict"] == "stable"
    format_lost = [row(str(i)) for i in range(30)] + [row(None, resp=f"words drifting {i}") for i in range(10)]
    m = collapse_measures(format_lost)
    assert m["answered_first"] == 1.0 and m["answered_last"] == 0.0 and m["verdict"] == "degenerate"
    too_few = [row(str(i)) if i < 4 else row(None, resp=f"w {i}") for i in range(40)]
    assert collapse_measures(too_few)["verdict"] == "stable"  # 4 answers in the first window: not judged
    constant = [row(str(i)) for i in range(20)] + [row("6") for _ in range(20)]
    assert collapse_measures(constant)["verdict"] == "collapsed-constant"
    loop = [row(str(i)) for i in range(20)] + [row(None, "the the the the the the the the") for _ in range(20)]
    assert collapse_measures(loop)["verdict"] == "degenerate"
    sharpening = [row(str(i), ent=1.0 / (1 + i)) for i in range(40)]
    assert collapse_measures(sharpening)["verdict"] == "sharpening"
    drifting = [row(str(i), ent=1.0 + i / 10) for i in range(40)]
    assert collapse_measures(drifting)["verdict"] == "degenerate"
    few = [row(None, "no answer here") for _ in range(36)] + [row("6") for _ in range(4)]
    assert collapse_measures(few)["verdict"] != "collapsed-constant"  # 4 answers are too few to call


def test_guard_catches_responses_that_stop_answering(make_lm):
    """Incoherent text that neither loops nor repeats one answer: the answered share falls."""
    from zs_llm.guard import FORMAT_WINDOWS

    lm = make_lm(guard_window=3, guard_every=1, guard_action="rollback", guard=True)
    g = lm.guard
    span = FORMAT_WINDOWS * 3
    for i in range(span):  # the first span: every response answers
        assert g.observe(f"so \\boxed{{{i}}}", []) is None
    assert g.reference_answered == 1.0 and g.healthy_at == span
    words = ["two units in opposite directions", "the entire thing is four years left", "end result back in memory"]
    event = None
    for i in range(span):
        event = event or g.observe(f"{words[i % 3]} {i}", [])
    assert event and "answers in" in event
    assert g.events[0]["restored_to"] >= span
    # after the rollback no snapshot is taken until the checks can judge again
    restored_at = g.healthy_at
    for i in range(3):
        g.observe(f"\\boxed{{{100 + i}}}", [])
    assert g.healthy_at == restored_at


def test_guard_answered_check_off_when_the_model_rarely_answers(make_lm):
    from zs_llm.guard import FORMAT_MIN_ANSWERS, FORMAT_WINDOWS

    lm = make_lm(guard_window=3, guard=True)
    g = lm.guard
    span = FORMAT_WINDOWS * 3
    for i in range(span):
        g.observe(f"\\boxed{{{i}}}" if i < FORMAT_MIN_ANSWERS - 1 else f"text {i}", [])
    assert g.reference_answered == 0.0
    assert all(g.observe(f"more text {i}", []) is None for i in range(2 * span))


def test_guard_reads_answers_the_way_the_harness_extracts_them(make_lm):
    from eval.grading import extract_answer

    g = make_lm(guard_window=3, guard=True).guard
    for text in ("So, the answer is 8.", "\\boxed{}", "Final answer: 12", "no answer here"):
        g.observe(text, [])
        assert g.window[-1]["answer"] == (extract_answer(text) or None)
    assert list(g.answered) == [True, False, True, False]
