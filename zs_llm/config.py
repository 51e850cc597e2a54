"""`AdaptConfig`: every knob of test-time adaptation, with help text and validation."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


CHOICES = {
    "divergence": ("sym_kl", "kl", "rkl", "js", "mse"),
    "objective": ("entropy", "slr", "ce_argmax", "neg_p2"),
    "predictor": ("linear", "fixed_random", "mlp"),
    "optimizer": ("sgd", "adamw"),
    "schedule": ("online", "episodic"),
    "signal": ("response", "prompt"),
    "answer": ("regenerate", "draft"),
    "guard_action": ("rollback", "rollback_lower_lr", "rollback_stop"),
}


@dataclass
class AdaptConfig:
    """How a `ZeroSiamLM` adapts at test time. Field help: `AdaptConfig.help()`."""

    # --- method and objective
    method: str = _f("zerosiam", "Registered method name (zs_llm.METHODS): noadapt, tent, come, sar, slot, eminf, "
                     "zerosiam, zerosiam+sar, zerosiam+eata.")
    alpha: float = _f(1.0, "Weight of the alignment term D(p_o || sg[p_r]); 0 leaves pure entropy through the predictor.")
    divergence: str = _f("sym_kl", "Alignment divergence: sym_kl (KL both ways, summed), kl, rkl, js, mse.")
    objective: str = _f("entropy", "Confidence term: entropy, slr (soft likelihood ratio), ce_argmax, neg_p2 (-sum p^2).")
    predictor: str = _f("linear", "Predictor before the head: linear (identity init), fixed_random (frozen), mlp.")
    # --- optimisation
    steps: int = _f(1, "Optimizer steps per problem.")
    optimizer: str = _f("sgd", "sgd (momentum, as the paper's vision code; the default, see docs/stability.md) or adamw.")
    lr: float = _f(3e-3, "Learning rate of the LoRA adapters (and of SLOT's vector when method=slot uses lr).")
    predictor_lr: float | None = _f(None, "Learning rate of the predictor; None uses lr * predictor_lr_scale.")
    predictor_lr_scale: float = _f(1.0, "Predictor learning rate as a multiple of lr, used when predictor_lr is None.")
    momentum: float = _f(0.9, "SGD momentum.")
    weight_decay: float = _f(0.0, "AdamW weight decay on LoRA only (decay would pull the predictor toward zero, not I).")
    grad_clip: float | None = _f(1.0, "Clip the global gradient norm of the updated parameters; None disables.")
    # --- LoRA
    lora_r: int = _f(8, "LoRA rank.")
    lora_alpha: int = _f(16, "LoRA scaling numerator (scale = lora_alpha / lora_r).")
    lora_dropout: float = _f(0.0, "LoRA dropout (0 keeps the update deterministic).")
    lora_target_modules: list[str] | None = _f(None, "Module names to adapt; None uses peft's per-architecture "
                                               "default (q_proj/v_proj for Llama, c_attn for GPT-2, ...).")
    # --- protocol
    schedule: str = _f("online", "online: state carries over problems; episodic: reset before each problem.")
    signal: str = _f("response", "response: loss on the draft's tokens; prompt: on the prompt's next-token "
                     "predictions (no draft needed).")
    answer: str = _f("draft", "draft: answer with the draft, then update (predict-then-update, one generation); "
                     "regenerate: generate again after the update.")
    # --- generation
    max_new_tokens: int = _f(512, "Maximum tokens generated for a draft or an answer.")
    temperature: float = _f(0.0, "Sampling temperature; 0 is greedy.")
    top_p: float = _f(1.0, "Nucleus sampling mass (used when temperature > 0).")
    seed: int = _f(0, "Seed for sampling and for the fixed_random predictor.")
    # --- memory
    chunk_size: int = _f(512, "Tokens per chunk of the loss; peak loss memory grows with chunk_size x vocabulary.")
    gradient_checkpointing: bool = _f(False, "Recompute backbone activations in the backward pass (saves memory).")
    draft_logits_mib: float = _f(512.0, "Keep the draft's logits (fp32) as the target branch of the first step after "
                                 "it, which saves that step one head matmul, when max_new_tokens x vocabulary x 4 "
                                 "bytes fits in this many MiB; 0 always recomputes the target from the features.")
    # --- method-specific
    filter_margin: float = _f(0.4, "SAR / EATA filters: keep tokens with entropy < filter_margin * ln(vocab).")
    sar_rho: float = _f(0.05, "SAR: radius of the sharpness-aware perturbation.")
    come_tau: float = _f(1.0, "COME: scale of the norm-detached logits before the evidence exp().")
    slot_steps: int = _f(5, "SLOT: optimisation steps of the per-prompt vector.")
    slot_lr: float = _f(0.1, "SLOT: AdamW learning rate of the per-prompt vector.")
    eminf_steps: int = _f(3, "EM-INF: optimisation steps on the logits at each decoding step.")
    eminf_lr: float = _f(0.1, "EM-INF: learning rate of the logit optimisation.")
    eminf_threshold: float = _f(0.3, "EM-INF: only optimise the logits when their entropy exceeds this (nats).")
    eminf_temperature: float = _f(0.1, "EM-INF: temperature of the softmax inside the entropy being minimised.")
    # --- collapse guard
    guard: bool = _f(True, "Watch the stream for collapse and roll back to the last healthy state.")
    guard_every: int = _f(5, "Keep an in-memory checkpoint every this many healthy problems.")
    guard_window: int = _f(10, "Problems in the sliding window the guard judges.")
    guard_action: str = _f("rollback_lower_lr", "On a trigger: rollback, rollback_lower_lr (halve lrs) or rollback_stop.")
    guard_max_answer_share: float = _f(0.6, "Trigger when one extracted answer fills more than this share of the window.")
    guard_max_degenerate: float = _f(0.5, "Trigger when more than this share of the window's responses loop.")
    guard_min_entropy_ratio: float = _f(0.1, "Trigger when mean entropy falls below this ratio of the first window's.")
    guard_max_entropy_ratio: float = _f(3.0, "Trigger when mean entropy rises above this ratio of the first window's.")

    def __post_init__(self):
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"AdaptConfig.{name}={getattr(self, name)!r} is not valid; choose one of {choices}")
        for name in ("steps", "max_new_tokens", "chunk_size", "lora_r", "guard_every", "guard_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"AdaptConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "alpha", "predictor_lr_scale", "weight_decay", "temperature", "slot_lr", "eminf_lr",
                     "draft_logits_mib"):
            if getattr(self, name) < 0:
                raise ValueError(f"AdaptConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.predictor_lr is not None and self.predictor_lr < 0:
            raise ValueError(f"AdaptConfig.predictor_lr must be >= 0 or None, got {self.predictor_lr}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"AdaptConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.schedule == "episodic" and self.answer == "draft" and self.signal == "response":
            raise ValueError(
                "schedule='episodic' with answer='draft' resets the model before every problem and answers before "
                "adapting, so adaptation could never change an answer; use answer='regenerate' or schedule='online'"
            )
        from .methods import METHODS  # late import: methods import this module

        METHODS[self.method]  # raises with the known names

    @property
    def effective_predictor_lr(self) -> float:
        return self.predictor_lr if self.predictor_lr is not None else self.lr * self.predictor_lr_scale

    def replace(self, **overrides) -> AdaptConfig:
        """A copy with fields overridden; unknown names are an error listing the valid ones."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown AdaptConfig field(s) {unknown}; valid: {self.field_names()}")
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AdaptConfig:
        return cls().replace(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Short, stable hash of every field (for naming runs and checking resumes)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def help(cls) -> str:
        return "\n".join(f"{f.name} (default {f.default if f.default is not dataclasses.MISSING else f.default_factory()!r}): "
                         f"{f.metadata['help']}" for f in dataclasses.fields(cls))
