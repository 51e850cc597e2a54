"""The configuration design: shared AdaptConfig fields, method-owned settings, add-ons in labels,
the paper protocol's defaults, and a method added from one place (here, inside the test)."""

import dataclasses
import json

import pytest

from zs_llm import METHODS, AdaptConfig
from zs_llm.config import ADDONS, all_settings, check_overrides, parse_value, setting
from zs_llm.methods.base import Method, MethodConfig


def test_paper_protocol_defaults_have_no_guard_and_no_clipping():
    for name in METHODS:
        c = AdaptConfig(method=name)
        assert c.guard is False and c.grad_clip is None, name
        assert c.label() == name
        assert c.effective_lr == METHODS[name].default_lr
        assert c.to_dict()["lr"] == METHODS[name].default_lr  # records carry the resolved value
        assert c.to_dict()["nesterov"] is METHODS[name].nesterov


def test_tent_steps_with_nesterov_momentum_as_its_official_code(make_lm):
    assert make_lm(method="tent").optimizer.param_groups[0]["nesterov"] is True
    assert make_lm(method="tent", nesterov=False).optimizer.param_groups[0]["nesterov"] is False
    assert make_lm(method="zerosiam").optimizer.param_groups[0]["nesterov"] is False


@pytest.mark.parametrize("spec,method,label,changes", [
    ("tent", "tent", "tent", {}),
    ("tent+guard", "tent", "tent+guard", {"guard": True}),
    ("zerosiam+clip", "zerosiam", "zerosiam+clip", {"grad_clip": 1.0}),
    ("zerosiam+clip+guard:alpha=0", "zerosiam", "zerosiam+clip+guard", {"grad_clip": 1.0, "guard": True}),
    ("zerosiam+sar", "zerosiam+sar", "zerosiam+sar", {}),
    ("zerosiam+sar+guard:filter_margin=0.5", "zerosiam+sar", "zerosiam+sar+guard", {"guard": True}),
])
def test_specs_parse_addons_and_labels_show_them(spec, method, label, changes):
    c = AdaptConfig.from_spec(spec)
    assert (c.method, c.label()) == (method, label)
    plain = AdaptConfig(method=method)
    for k in ("guard", "grad_clip"):
        assert getattr(c, k) == changes.get(k, getattr(plain, k))
    if "alpha=0" in spec:
        assert c.method_config.alpha == 0.0
    if "filter_margin" in spec:
        assert c.method_config.filter_margin == 0.5


def test_addons_are_plain_field_overrides():
    for addon, fields in ADDONS.items():
        for k in fields:
            assert k in {f.name for f in dataclasses.fields(AdaptConfig)}, (addon, k)


def test_method_settings_live_on_the_method_and_reach_the_hash():
    a, b = AdaptConfig(), AdaptConfig().replace(alpha=0.5)
    assert a.method_config.alpha == 1.0 and b.method_config.alpha == 0.5
    assert a.hash() != b.hash()
    assert set(a.method_args) == {f.name for f in dataclasses.fields(METHODS["zerosiam"].config_class)}
    # a record round-trips to the same configuration
    again = AdaptConfig.from_dict(json.loads(json.dumps(b.to_dict())))
    assert again.hash() == b.hash() and again.method_config == b.method_config


def test_switching_method_keeps_only_settings_the_new_method_has():
    c = AdaptConfig().replace(alpha=0.3, lr=1e-3)
    s = c.replace(method="zerosiam+sar")
    assert s.method_config.alpha == 0.3 and s.lr == 1e-3
    t = c.replace(method="tent")
    assert t.method_args == {} and t.lr == 1e-3


def test_errors_name_the_setting_and_the_method():
    with pytest.raises(ValueError, match="tent has no setting 'alpha'"):
        AdaptConfig.from_spec("tent:alpha=0")
    with pytest.raises(ValueError, match=r"method spec 'zerosiam:lr=abc': lr expects float \| None, got 'abc'"):
        AdaptConfig.from_spec("zerosiam:lr=abc")
    with pytest.raises(ValueError, match="alpha=nan is not a finite number"):
        AdaptConfig.from_spec("zerosiam:alpha=nan")
    with pytest.raises(ValueError, match=r"^lr must be >= 0.0, got -1.0$"):
        AdaptConfig(lr=-1.0)
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['alpah'\]"):
        check_overrides({"alpah": 1}, ["tent", "zerosiam"])
    check_overrides({"alpha": 0.5, "lr": 1e-3}, ["tent", "come"])  # some method has alpha: not a typo


def test_run_wide_overrides_skip_methods_without_the_setting():
    t = AdaptConfig.from_spec("tent", {"alpha": 0.5, "lr": 1e-3})
    z = AdaptConfig.from_spec("zerosiam", {"alpha": 0.5, "lr": 1e-3})
    assert t.lr == z.lr == 1e-3 and z.method_config.alpha == 0.5 and t.method_args == {}


@pytest.mark.parametrize("text,annotation,want", [
    ("1e-4", "float | None", 1e-4), ("none", "float | None", None), ("3", "int", 3), ("true", "bool", True),
    ("q_proj,v_proj", "list[str] | None", ["q_proj", "v_proj"]), ("sgd", "str", "sgd"),
])
def test_parse_value(text, annotation, want):
    assert parse_value(text, annotation) == want


def test_parse_value_refuses_none_for_a_required_number():
    with pytest.raises(ValueError, match="value expects int, got None"):
        parse_value("none", "int")


def test_all_settings_cover_shared_and_every_method():
    names = all_settings()
    assert {"lr", "guard", "alpha", "filter_margin", "tau", "rho"} <= set(names)
    assert "method_args" not in names


# --- a new method is one file: here, one class in the test -------------------------------------
@dataclasses.dataclass
class _HalfEntropyConfig(MethodConfig):
    weight: float = setting(0.5, "Multiplier of the entropy.", min=0.0)


class _HalfEntropy(Method):
    """A throwaway method: weight x the entropy of the response tokens, on LoRA."""

    name = "half_entropy"
    trains = ("lora",)
    config_class = _HalfEntropyConfig
    default_lr = 5e-2

    def token_loss(self, online_logits, target_logp, labels, target_p=None):
        from zs_llm.objective import entropy

        return self.cfg.weight * entropy(online_logits), None, {}


@pytest.fixture
def throwaway_method():
    METHODS["half_entropy"] = _HalfEntropy
    try:
        yield "half_entropy"
    finally:
        del METHODS["half_entropy"]


def test_a_method_registered_in_one_place_runs_through_the_harness(throwaway_method, tiny_dir, tmp_path):
    from eval.report import load_run
    from eval.runner import RunConfig, Runner

    cfg = RunConfig(model=str(tiny_dir), methods=["noadapt", "half_entropy:weight=2"], datasets=["arith"], limit=3,
                    adapt={"max_new_tokens": 5})
    out = Runner(cfg, tmp_path / "run", progress=False).run()
    streams = load_run(out)
    rows = streams[("half_entropy:weight=2", "arith")]
    assert len(rows) == 3
    assert rows[0]["config"]["method_args"] == {"weight": 2.0} and rows[0]["config"]["lr"] == 5e-2
    assert all(r["steps"] and r["steps"][0]["grad_norm"] > 0 for r in rows)  # it really adapted
    info = json.loads((out / "run.json").read_text())
    assert info["adapt_configs"]["half_entropy:weight=2"]["method"] == "half_entropy"
    assert info["config"]["protocol"] == "paper"
    from eval.report import write_report

    md = write_report(out).read_text()
    settings = md.split("## Settings", 1)[1].split("##", 1)[0]
    assert "Protocol `paper`" in settings
    assert "| half_entropy:weight=2 | sgd | 0.05 | 0.9 | 1 | - | False |" in settings and "weight=2" in settings


def test_harness_labels_carry_addons_set_run_wide(tiny_dir, tmp_path):
    from eval.runner import RunConfig, Runner

    cfg = RunConfig(model=str(tiny_dir), methods=["noadapt", "tent", "zerosiam+clip:alpha=0"], datasets=["arith"],
                    limit=2, adapt={"guard": True})
    r = Runner(cfg, tmp_path / "run", progress=False)
    assert list(r.adapt_configs) == ["noadapt", "tent+guard", "zerosiam+clip+guard:alpha=0"]  # noadapt: nothing to guard
