"""`AdaptConfig`: the settings every method shares, with help text and validation. Each method's
own settings live on its config dataclass beside its class (`zs_llm.METHODS[name].config_class`)
and travel in `AdaptConfig.method_args`.

    >>> cfg = AdaptConfig.from_spec("zerosiam+clip:alpha=0")
    >>> cfg.method, cfg.grad_clip, cfg.method_config.alpha, cfg.label()
    ('zerosiam', 1.0, 0.0, 'zerosiam+clip')
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .methods import METHODS
from .settings import (
    MAX_STEPS,
    MAX_TOKENS,
    SEED_MAX,
    check_field,
    check_fields,
    check_value,
    help_text,
    parse_text,
    parse_value,
    setting,
)

__all__ = ["ADDONS", "AdaptConfig", "all_settings", "check_field", "check_fields", "check_overrides", "check_value",
           "help_text", "parse_text", "parse_value", "setting"]


#: add-ons a method spec can carry (`tent+clip+guard`): outside every paper's code, so they show in
#: the method's label wherever results are printed
ADDONS: dict[str, dict[str, Any]] = {
    "clip": {"grad_clip": 1.0},
    "guard": {"guard": True},
}


@dataclass
class SharedSettings:
    """The settings every method shares, as dataclass fields; `AdaptConfig` is built on them and
    also takes each method's own settings by name."""

    # --- method
    method: str = setting("zerosiam", "Registered method name (zs_llm.METHODS), e.g. noadapt, tent, come, sar, "
                          "slot, eminf, zerosiam.")
    method_args: dict[str, Any] = setting({}, "The method's own settings (fields of METHODS[method].config_class; "
                                          "unset ones take their defaults).")
    # --- optimisation
    steps: int = setting(1, "Optimizer steps per problem.", min=1, max=MAX_STEPS)
    optimizer: str = setting("sgd", "sgd (momentum, as the baselines' official code) or adamw.",
                             choices=("sgd", "adamw"))
    lr: float | None = setting(None, "Learning rate of the LoRA adapters; None takes the method's default_lr "
                               "(the protocol's selection, docs/protocol.md).", min=0.0)
    momentum: float = setting(0.9, "SGD momentum.", min=0.0, lt=1.0)
    nesterov: bool | None = setting(None, "SGD with Nesterov momentum; None takes the method's own choice "
                                    "(Method.nesterov: Tent's official code uses it, SAR's and EATA's do not).")
    weight_decay: float = setting(0.0, "AdamW weight decay on LoRA only (decay would pull the predictor toward zero, "
                                  "not I).", min=0.0)
    grad_clip: float | None = setting(None, "Clip the global gradient norm of the updated parameters; None (the "
                                      "paper protocol) disables. The `+clip` add-on sets 1.0.", gt=0.0)
    # --- LoRA
    lora_r: int = setting(8, "LoRA rank.", min=1, max=65_536)  # wider than any model
    # at most 2**20: the scale multiplies every LoRA update, and no published LoRA scale is within orders of it
    lora_alpha: int = setting(16, "LoRA scaling numerator (scale = lora_alpha / lora_r).", min=1, max=2**20)
    lora_dropout: float = setting(0.0, "LoRA dropout (0 keeps the update deterministic).", min=0.0, lt=1.0)
    lora_target_modules: list[str] | None = setting(None, "Module names to adapt; None uses peft's per-architecture "
                                                    "default (q_proj/v_proj for Llama, c_attn for GPT-2, ...).")
    # --- protocol
    schedule: str = setting("online", "online: state carries over problems; episodic: reset before each problem.",
                            choices=("online", "episodic"))
    signal: str = setting("response", "response: loss on the draft's tokens; prompt: on the prompt's next-token "
                          "predictions (no draft needed).", choices=("response", "prompt"))
    answer: str = setting("draft", "draft: answer with the draft, then update (predict-then-update, one "
                          "generation); regenerate: generate again after the update.", choices=("regenerate", "draft"))
    # --- generation
    max_new_tokens: int = setting(512, "Maximum tokens generated for a draft or an answer.", min=1,
                             max=MAX_TOKENS)
    temperature: float = setting(0.0, "Sampling temperature; 0 is greedy.", min=0.0)
    top_p: float = setting(1.0, "Nucleus sampling mass (used when temperature > 0).", gt=0.0, max=1.0)
    seed: int = setting(0, "Seed for sampling, LoRA's initialisation and the fixed_random predictor.", min=0,
                   max=SEED_MAX)
    # --- memory
    chunk_size: int = setting(512, "Tokens per chunk of the loss; peak loss memory grows with chunk_size x "
                              "vocabulary.", min=1)
    gradient_checkpointing: bool = setting(False, "Recompute backbone activations in the backward pass (saves "
                                           "memory).")
    draft_logits_mib: float = setting(512.0, "Keep the draft's logits (fp32) as the target branch of the first step "
                                      "after it, which saves that step one head matmul, when max_new_tokens x "
                                      "vocabulary x 4 bytes fits in this many MiB; 0 always recomputes the target "
                                      "from the features. Drafts batched in a pool of streams never keep them (a "
                                      "row's logits round with the other rows' padding).", min=0.0)
    # --- collapse guard (an add-on: `+guard`)
    guard: bool = setting(False, "Watch the stream for collapse and roll back to the last healthy state (not in any "
                          "paper's code; the `+guard` add-on turns it on).")
    guard_every: int = setting(5, "Keep an in-memory checkpoint every this many healthy problems.", min=1)
    guard_window: int = setting(10, "Problems in the sliding window the guard judges.", min=1)
    guard_action: str = setting("rollback_lower_lr", "On a trigger: rollback, rollback_lower_lr (halve lrs) or "
                                "rollback_stop.", choices=("rollback", "rollback_lower_lr", "rollback_stop"))
    guard_max_answer_share: float = setting(0.6, "Trigger when one extracted answer fills more than this share of "
                                            "the window.", min=0.0, max=1.0)
    guard_max_degenerate: float = setting(0.5, "Trigger when more than this share of the window's responses loop.",
                                          min=0.0, max=1.0)
    guard_min_entropy_ratio: float = setting(0.1, "Trigger when mean entropy falls below this ratio of the first "
                                             "window's.", min=0.0)
    guard_max_entropy_ratio: float = setting(3.0, "Trigger when mean entropy rises above this ratio of the first "
                                             "window's.", gt=0.0)

    def __post_init__(self):
        check_fields(self)  # each field's type and range (zs_llm.settings.check_value)


class AdaptConfig(SharedSettings):
    """How a `ZeroSiamLM` adapts at test time. Field help: `print(AdaptConfig.help())`.

    The defaults are the `paper` protocol: each method as its authors' code runs it, except the
    deviations docs/protocol.md lists (no collapse guard, no gradient clipping), with the learning
    rate the method declares (`Method.default_lr`, chosen for every LoRA method by the same
    selection on the same development stream: docs/protocol.md). The guard and clipping are
    add-ons (`zerosiam+clip+guard`).

    `AdaptConfig(method="zerosiam", alpha=0)`: a keyword that is not a shared field is one of the
    method's own settings, the same as `method_args={"alpha": 0}` (checked against the method's
    config dataclass). This is why the class has its own `__init__` over the dataclass's.
    """

    def __init__(self, *args, method_args: dict[str, Any] | None = None, **kw):
        shared = {f.name for f in dataclasses.fields(SharedSettings)}
        own = {k: kw.pop(k) for k in list(kw) if k not in shared}
        if method_args is not None and not isinstance(method_args, dict):
            raise ValueError(f"method_args expects a mapping of setting: value, got {method_args!r}")
        both = sorted(k for k in own if k in (method_args or {}) and method_args[k] != own[k])
        if both:
            k = both[0]
            raise ValueError(f"{k} is given twice with different values ({method_args[k]!r} in method_args, "
                             f"{own[k]!r} by name); give it once")
        super().__init__(*args, method_args={**(method_args or {}), **own}, **kw)

    def __post_init__(self):
        super().__post_init__()
        cls = METHODS[self.method]  # raises with the known names
        if self.guard_min_entropy_ratio >= self.guard_max_entropy_ratio:
            raise ValueError(f"guard_min_entropy_ratio ({self.guard_min_entropy_ratio}) must be below "
                             f"guard_max_entropy_ratio ({self.guard_max_entropy_ratio}); lower it or raise the other")
        if self.schedule == "episodic" and self.answer == "draft" and self.signal == "response":
            raise ValueError(
                "schedule='episodic' with answer='draft' resets the model before every problem and answers before "
                "adapting, so adaptation could never change an answer; use answer='regenerate' or schedule='online'"
            )
        args = dict(self.method_args or {})
        valid = [f.name for f in dataclasses.fields(cls.config_class)]
        unknown = sorted(set(args) - set(valid))
        if unknown:
            shared = sorted(f.name for f in dataclasses.fields(self) if f.name != "method_args")
            raise TypeError(f"unknown setting(s) {unknown} for method {self.method!r}; shared AdaptConfig fields: "
                            f"{shared}; {self.method}'s own: {valid or 'none'}")
        self._method_config = cls.config_class(**args)
        check_fields(self._method_config)  # a config_class that is not a MethodConfig is checked too
        self.method_args = dataclasses.asdict(self._method_config)  # every setting, defaults included

    # --- the method's own settings and resolved values ------------------------------------------
    @property
    def method_config(self):
        """The method's config dataclass instance (`METHODS[method].config_class`)."""
        return self._method_config

    @property
    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else METHODS[self.method].default_lr

    @property
    def effective_nesterov(self) -> bool:
        return self.nesterov if self.nesterov is not None else METHODS[self.method].nesterov

    def label(self) -> str:
        """The method's name with the add-ons this config turns on (`zerosiam+clip+guard`)."""
        cls = METHODS[self.method]
        if not (cls.trains and cls.loop_update):  # neither add-on acts on a method without loop updates
            return self.method
        return self.method + ("+clip" if self.grad_clip is not None else "") + ("+guard" if self.guard else "")

    # --- building ---------------------------------------------------------------------------
    def replace(self, **overrides) -> AdaptConfig:
        """A copy with fields overridden. A method's own settings can be given by name
        (`replace(alpha=0)`); changing `method` keeps the settings the new method also has.
        Unknown names are an error listing the valid ones."""
        # keywords that are not shared fields go to the method's settings in the constructor, which
        # also names the valid ones for an unknown keyword
        own = {f.name for f in dataclasses.fields(METHODS[overrides.get("method", self.method)].config_class)}
        args = {**{k: v for k, v in self.method_args.items() if k in own and k not in overrides},
                **overrides.pop("method_args", {})}
        return dataclasses.replace(self, **overrides, method_args=args)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AdaptConfig:
        """From `to_dict()` output or any flat mapping of shared and method fields."""
        return cls().replace(**d)

    @classmethod
    def from_spec(cls, spec: str, base: dict[str, Any] | None = None) -> AdaptConfig:
        """`zerosiam+clip:alpha=0:lr=1e-3` -> the method, its add-ons, then `key=value` overrides of
        shared or method fields. `base` holds overrides applied before the spec's own (keys that
        this method does not have are skipped)."""
        head, *pairs = spec.split(":")
        name, addons = head, []
        while name not in METHODS and "+" in name and name.rsplit("+", 1)[1] in ADDONS:
            name, addon = name.rsplit("+", 1)
            if addon in addons:
                raise ValueError(f"method spec {spec!r}: the add-on +{addon} is given twice; give it once")
            addons.insert(0, addon)
        if name not in METHODS:
            METHODS[name]  # KeyError naming the known methods
        over: dict[str, Any] = {}
        own = {f.name: f for f in dataclasses.fields(METHODS[name].config_class)}
        shared = {f.name: f for f in dataclasses.fields(cls)}
        for k, v in (base or {}).items():
            if k in shared or k in own:
                over[k] = v
        for addon in addons:
            over.update(ADDONS[addon])
        given: set[str] = set()
        for pair in pairs:
            if "=" not in pair:
                raise ValueError(f"method spec {spec!r}: expected key=value after ':', got {pair!r}")
            k, v = pair.split("=", 1)
            f = shared.get(k) or own.get(k)
            if f is None:
                raise ValueError(f"method spec {spec!r}: {name} has no setting {k!r}; shared: "
                                 f"{sorted(set(shared) - {'method_args'})}; {name}'s own: {sorted(own) or 'none'}")
            if k in given:
                raise ValueError(f"method spec {spec!r}: {k} is given twice; give it once")
            given.add(k)
            try:
                over[k] = check_field(f, parse_text(v, f.type))
            except ValueError as e:
                raise ValueError(f"method spec {spec!r}: {e}") from None
        over["method"] = name
        return cls().replace(**over)

    # --- records ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field with resolved values (lr included), for run records and hashes."""
        d = dataclasses.asdict(self)
        d["lr"] = self.effective_lr
        d["nesterov"] = self.effective_nesterov
        return d

    def hash(self) -> str:
        """Short, stable hash of every resolved field (for naming runs and checking resumes)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def help(cls) -> str:
        """The help text of every shared field, one per line (a string: print it)."""
        return help_text(cls)


def all_settings() -> dict[str, dataclasses.Field]:
    """Every setting a flat config may name: the shared `AdaptConfig` fields, then each registered
    method's own (a name several methods share appears once)."""
    out = {f.name: f for f in dataclasses.fields(AdaptConfig) if f.name != "method_args"}
    for cls in METHODS.values():
        for f in dataclasses.fields(cls.config_class):
            out.setdefault(f.name, f)
    return out


def check_overrides(overrides: dict[str, Any], methods: list[str] = ()) -> None:
    """Overrides applied to every method of a run (each takes the ones it has) must each be a
    setting of some method; otherwise a misspelt name would be dropped silently. `methods`
    (specs) are checked to parse. Each value is replaced in `overrides` by the value as its field
    holds it (`check_value`)."""
    for spec in methods:
        AdaptConfig.from_spec(spec)
    settings = all_settings()
    bad = sorted(map(str, set(overrides) - set(settings)))
    if bad:
        raise ValueError(f"unknown setting(s) {bad}; valid: {sorted(settings)}")
    for k, v in overrides.items():  # also those no listed method has: a bad value is never skipped silently
        overrides[k] = check_field(settings[k], v)  # as the field holds it (a numpy scalar as a Python number)


METHODS.reserve(f.name for f in dataclasses.fields(AdaptConfig))  # a method's own setting named like a shared
# field is refused at registration (zs_llm.methods.MethodRegistry)
