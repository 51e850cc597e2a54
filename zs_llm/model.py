"""`ZeroSiamLM`: a Hugging Face causal LM with LoRA adapters, an identity predictor before its
output head, and an optimizer, composed around the model rather than subclassing it."""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import saving
from .config import AdaptConfig
from .generation import CHAT_ROLES, Generation, check_prompt, context_length, prompt_ids, render_prompt, sample_seed  # noqa: F401
from .guard import CollapseGuard
from .lora import inject_lora
from .methods import METHODS
from .predictor import build_predictor


def logit_postprocess(config) -> list[tuple[str, float]]:
    """What an architecture applies to its head's output before returning logits.

    Cohere multiplies by `logit_scale`, Granite divides by `logits_scaling`, Gemma-2/3 soft-cap
    with `final_logit_softcapping`. `ZeroSiamLM` checks on a real forward that the result
    reproduces the model's own logits, so an unknown step fails loudly instead of silently.
    """
    ops = []
    mt = getattr(config, "model_type", "")
    if mt.startswith("cohere") and getattr(config, "logit_scale", None) is not None:
        ops.append(("mul", float(config.logit_scale)))
    if mt.startswith("granite") and getattr(config, "logits_scaling", None) is not None:
        ops.append(("div", float(config.logits_scaling)))
    if getattr(config, "final_logit_softcapping", None) is not None:
        ops.append(("softcap", float(config.final_logit_softcapping)))
    return ops


def _apply_post(logits: torch.Tensor, ops) -> torch.Tensor:
    for op, v in ops:
        if op == "mul":
            logits = logits * v
        elif op == "div":
            logits = logits / v
        else:
            logits = torch.tanh(logits / v) * v
    return logits


@dataclass
class SharedModel:
    """What the wrappers of one model share (`ZeroSiamLM(model, ..., share=other)`): peft's model
    around it (None until a wrapper adds LoRA), the wrapper whose adapter runs now (its id), and how
    many adapters sharers added (their names are numbered)."""

    peft: Any = None
    active: int | None = None
    added: int = 0


#: what ZeroSiamLM once offered itself and where it is now (the loop and stream hosting sit above it)
MOVED = {
    "adapt_generate": "zs_llm.adapt_generate(lm, prompt, return_result=True)",
    "stream": "zs_llm.Streams(lm).stream(name, config)",
    "streams": "zs_llm.Streams(lm).streams",
    "remove_stream": "zs_llm.Streams(lm).remove(name)",
    "adapt_generate_pool": "zs_llm.Streams(lm).adapt_generate({name: prompt})",
}


class ZeroSiamLM(Generation):
    """Wrap `model` (any `AutoModelForCausalLM`) for test-time adaptation.

    The method named in `config.method` decides what is trained: LoRA adapters (peft) on the
    backbone, the predictor `h` between the final hidden state and the head, both, or none.
    Generation always uses the target branch (LoRA active, no predictor). Base weights,
    including tied embeddings and the head, stay frozen. Unknown attributes pass through
    to the wrapped model, so `lm.generate(...)`, `lm.config` etc. keep working.

    `model` must be a plain model: one that already carries peft adapters (a `PeftModel`, or
    adapters loaded into it) is refused with ValueError rather than unwrapped, since whether
    those adapters should stay in the answers is the caller's call: `merge_and_unload()` folds
    them into the weights, `unload()` drops them. A model another `ZeroSiamLM` wraps is refused
    too: host another method on it with `zs_llm.Streams(lm)` (or `share=lm`), or `unwrap()` it first.

    `share`: another wrapper of the same `model`; this one then adds its own adapter (and keeps
    its own predictor, optimizer and method state) beside that wrapper's, and runs it when it
    generates or steps (`activate`). The adaptation loop is `zs_llm.adapt`; the library call
    `zs_llm.adapt_generate`.
    """

    def __init__(self, model: nn.Module, tokenizer, config: AdaptConfig | None = None, check: bool = True,
                 *, share: ZeroSiamLM | None = None):
        if isinstance(config, dict):
            config = AdaptConfig.from_dict(config)
        self.zs_config = config = config or AdaptConfig()
        self.tokenizer = tokenizer
        self.method = METHODS[config.method](config)
        head, backbone = checked_parts(model, share, check)
        self.hf = model
        self.head = head
        self.backbone = backbone
        self._post = logit_postprocess(model.config)
        #: what this wrapper shares with the other wrappers of `model`
        self.shared = share.shared if share is not None else SharedModel()
        #: this wrapper wrapped `model` (the others share it)
        self.owns_model = share is None
        #: this stream's peft adapter (None: generation runs through no LoRA)
        self.adapter_name = None
        if share is None:
            for p in model.parameters():
                p.requires_grad_(False)
            model.eval()
        self.peft = None
        if "lora" in self.method.trains:
            if share is None:
                self.adapter_name = "default"
            else:
                self.adapter_name, self.shared.added = f"stream{self.shared.added}", self.shared.added + 1
            self.peft, self.lora_targets, self.lora_targets_source = inject_lora(
                model, config, self.shared, self.adapter_name, head.weight.device)
        try:
            self.activate()
            self.hidden_size = head.weight.shape[1]
            kind = self.predictor_kind
            self.predictor = build_predictor(
                kind, self.hidden_size, **({"seed": config.seed} if kind == "fixed_random" else {})
            ).to(self.device)
            self.predictor.requires_grad_("predictor" in self.method.trains)
            if config.gradient_checkpointing:
                self.set_gradient_checkpointing(True)
            self.optimizer = self._build_optimizer()
            self._initial_lrs = [g["lr"] for g in self.optimizer.param_groups] if self.optimizer else []
            if check and share is None and not self.method.batchable:  # generation-only methods never use head_logits
                self.check_identity()
            self.method.attach(self)  # state sized by the model, before the first snapshot
            self._initial = self.snapshot()
            self.problems_seen = 0
            self.adapt_enabled = True
            self.merge_lora_for_generation = True
            self.guard = None
            if config.guard and config.schedule == "online" and self.method.adapts and self.method.loop_update:
                self.guard = CollapseGuard(self)
        except BaseException:  # the caller's model must come back as it was given (no stray LoRA layers)
            self.drop_adapter()
            raise

    # --- construction -------------------------------------------------------------------
    @property
    def predictor_kind(self) -> str:
        """The method's predictor setting; an identity linear one (frozen) for methods without it."""
        return getattr(self.method.cfg, "predictor", "linear")

    def set_gradient_checkpointing(self, on: bool) -> None:
        """Recompute backbone activations in the backward pass (on) or keep them (off)."""
        # transformers 5.x names it activation checkpointing (the gradient_ names warn, and go in v6)
        if on:
            enable = getattr(self.hf, "activation_checkpointing_enable", None)
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.hf.train()  # HF checkpoints only in train mode; keep dropout off
            for m in self.hf.modules():
                if isinstance(m, nn.Dropout):
                    m.eval()
        else:
            disable = getattr(self.hf, "activation_checkpointing_disable", None) or self.hf.gradient_checkpointing_disable
            disable()
            self.hf.eval()

    def _build_optimizer(self):
        c = self.zs_config
        groups = []
        lora = [p for n, p in self.named_trainable() if "lora_" in n]
        if lora:
            groups.append({"params": lora, "lr": c.effective_lr, "weight_decay": c.weight_decay, "name": "lora"})
        pred = [p for p in self.predictor.parameters() if p.requires_grad]
        if pred:
            pred_lr = self.method.cfg.effective_predictor_lr(c.effective_lr)
            groups.append({"params": pred, "lr": pred_lr, "weight_decay": 0.0, "name": "predictor"})
        if not groups:
            return None
        if c.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=c.effective_lr, momentum=c.momentum,
                                   nesterov=c.effective_nesterov and c.momentum > 0)
        return torch.optim.AdamW(groups, lr=c.effective_lr)

    def named_trainable(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of everything the method updates through the optimizer (this
        stream's own adapter only, when several streams share the model)."""
        own = self.adapter_name
        out = [(n, p) for n, p in self.hf.named_parameters()
               if p.requires_grad and own is not None and ("lora_" not in n or n.split(".")[-2] == own)]
        out += [(f"predictor.{n}", p) for n, p in self.predictor.named_parameters() if p.requires_grad]
        return out

    # --- several wrappers on one model -------------------------------------------------
    def drop_adapter(self) -> None:
        """Remove this wrapper's own LoRA adapter from the shared model (all of peft's layers when
        this wrapper wrapped the model and its adapter is the only one)."""
        peft = self.shared.peft
        if self.adapter_name is None or peft is None:
            return
        if self.owns_model and set(peft.peft_config) <= {self.adapter_name}:
            self.unwrap()
            return
        with warnings.catch_warnings():  # peft names a new active adapter; `activate` decides which runs
            warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
            peft.delete_adapter(self.adapter_name)
        for n, p in self.hf.named_parameters():  # peft re-freezes the adapters it did not make active
            if "lora_" in n:
                p.requires_grad_(True)
        self.shared.active = None

    def activate(self) -> None:
        """Make this wrapper's adapter the one the shared model runs (none for one without LoRA)."""
        shared = self.shared
        if shared.active == id(self) or shared.peft is None:
            return
        from peft.tuners.tuners_utils import BaseTunerLayer

        names = [self.adapter_name] if self.adapter_name is not None else []
        for m in self.hf.modules():
            if isinstance(m, BaseTunerLayer):
                m._active_adapter = names
        shared.active = id(self)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_trainable()]

    # --- the two branches ---------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def features(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden state (after the final norm) of a (1, T) sequence at `positions`: (N, H)."""
        self.activate()
        out = self.backbone(input_ids=input_ids.to(self.device), use_cache=False)
        h = out.last_hidden_state[0]  # (T, H)
        return h if positions is None else h[positions.to(self.device)]

    def head_logits(self, z: torch.Tensor) -> torch.Tensor:
        """The model's own head plus whatever it applies after it (soft-capping, scaling)."""
        return _apply_post(self.head(z.to(self.head.weight.dtype)), self._post)

    @torch.no_grad()
    def check_identity(self, atol: float = 1e-4) -> None:
        """Fail early when head(predictor(features)) does not reproduce the model's logits."""
        if self.predictor_kind == "fixed_random":
            return
        self.activate()
        n = min(8, getattr(self.hf.config, "vocab_size", 8))
        ids = torch.arange(1, n + 1, device=self.device).unsqueeze(0) % max(1, self.head.weight.shape[0])
        ref = self.hf(input_ids=ids, use_cache=False).logits[0].float()
        if not torch.isfinite(ref).all():  # its weights are finite (checked first): this dtype overflows
            raise ValueError(f"{type(self.hf).__name__} gives non-finite logits before any adaptation though its "
                             f"weights are finite ({self.head.weight.dtype} overflows?); load it in float32 or "
                             "bfloat16, or re-save or re-download the model")
        mine = self.head_logits(self.predictor(self.features(ids))).float()
        tol = atol * max(1.0, float(ref.abs().max()))
        if ref.shape != mine.shape or not torch.allclose(ref, mine, atol=tol, rtol=1e-3):
            diff = (ref - mine).abs().max() if ref.shape == mine.shape else "shape"
            raise ValueError(
                f"{type(self.hf).__name__}: the head applied to the backbone's last hidden state does not reproduce "
                f"the model's logits (max difference {diff}). This architecture does something after its head that "
                "zs_llm does not know; add it to zs_llm.model.logit_postprocess"
            )

    # --- state --------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor adaptation changes, by name (live, not copies): this wrapper's trained
        parameters, the predictor's buffers and the method's state."""
        # adapter names written as peft's "default": a stream's checkpoint loads into any stream
        # of the same config, pooled or alone
        d = {_canonical(n, self.adapter_name): p for n, p in self.named_trainable()}
        d.update({f"predictor.{n}": b for n, b in self.predictor.named_buffers()})
        d.update({f"method.{k}": v for k, v in self.method.extra_state().items()})
        return d

    def snapshot(self) -> dict[str, Any]:
        """A copy of everything adaptation changes: trained tensors and optimizer state."""
        return {
            "tensors": {k: v.detach().clone() for k, v in self.state_tensors().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()) if self.optimizer else None,
        }

    @torch.no_grad()
    def restore(self, snap: dict[str, Any]) -> None:
        """Put back a `snapshot()` exactly (bitwise)."""
        live = self.state_tensors()
        for k, v in snap["tensors"].items():
            live[k].copy_(v)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))

    def reset(self) -> None:
        """Restore LoRA, predictor, method state and optimizer state to their initial values."""
        self.restore(self._initial)
        if self.optimizer is not None:
            self.optimizer.state.clear()
            for g, lr in zip(self.optimizer.param_groups, self._initial_lrs):
                g["lr"] = lr
        self.problems_seen = 0
        self.adapt_enabled = True
        if self.guard is not None:
            self.guard = CollapseGuard(self)
        self.clear_draft_history()

    def set_lr_scale(self, scale: float) -> None:
        """Multiply every optimizer group's learning rate (the collapse guard lowers it)."""
        if self.optimizer is not None:
            for g in self.optimizer.param_groups:
                g["lr"] *= scale

    # --- persistence --------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, push_to_hub: bool = False, repo_id: str | None = None,
                        card: dict | None = None, **hub_kwargs) -> None:
        """Save the adapted state: LoRA adapter (peft's own files), predictor, method state
        (safetensors), the config and a model card (README.md; `card` adds the stream, accuracy and
        verdict); `push_to_hub` then uploads the folder to `repo_id`. See `zs_llm.saving.save_pretrained`."""
        saving.save_pretrained(self, directory, push_to_hub, repo_id, card=card, **hub_kwargs)

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload ZeroSiamLM adapter and predictor", revision: str | None = None):
        """Upload the adapted state to the Hub model repository `repo_id`. See `zs_llm.saving.push_to_hub`."""
        return saving.push_to_hub(self, repo_id, private=private, token=token, commit_message=commit_message,
                                  revision=revision)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, model: nn.Module | None = None, tokenizer=None,
                        revision: str | None = None, check_base: bool = True, **load_kwargs) -> ZeroSiamLM:
        """Rebuild a wrapper from `save_pretrained` output (a folder or a Hub repository id), on
        `model` or on the base model the folder records. See `zs_llm.saving.from_pretrained`."""
        return saving.from_pretrained(cls, directory, model, tokenizer, revision=revision, check_base=check_base,
                                      **load_kwargs)

    def unwrap(self) -> nn.Module:
        """Remove the LoRA layers (every sharing wrapper's) and return the plain base model (to wrap it again)."""
        peft = self.shared.peft
        if peft is not None:
            model = peft.unload()
            model.__dict__.pop("_zs_llm_wrapped", None)
            self.peft = self.shared.peft = None
            return model
        return self.hf

    def __getattr__(self, name):
        # only reached for attributes the wrapper does not have: pass through to the model
        if name.startswith("__") or name in ("hf",):
            raise AttributeError(name)
        if name in MOVED:
            raise AttributeError(f"ZeroSiamLM.{name} is gone: use {MOVED[name]}")
        return getattr(self.__dict__["hf"], name)

    def __repr__(self):
        return (f"ZeroSiamLM({type(self.hf).__name__}, method={self.zs_config.method!r}, "
                f"trainable={sum(p.numel() for p in self.trainable_parameters())})")


def checked_parts(model: nn.Module, share: ZeroSiamLM | None, check: bool) -> tuple[nn.Module, nn.Module]:
    """The head and backbone of a model `ZeroSiamLM` may wrap (with `share`: the model that
    wrapper wraps), or ValueError naming what to do: no stacked wrappers or peft adapters, real
    and (`check`) finite weights, a *ForCausalLM with an output head."""
    if share is not None and model is not share.hf:
        raise ValueError("share= must be a wrapper of this same model (its .hf); wrap another model on its own")
    if share is None:
        refuse_wrapped(model)
        meta = next((n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta), None)
        if meta is not None:
            raise ValueError(f"{type(model).__name__} is on the meta device (no weights, e.g. {meta}); load "
                             "real weights first (from_pretrained, or load_state_dict(..., assign=True))")
        if check:
            refuse_nonfinite_weights(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise ValueError(
            f"{type(model).__name__} has no output head (get_output_embeddings() is None); load the model "
            "with AutoModelForCausalLM (not AutoModel) so zs_llm can put its predictor before the head"
        )
    backbone = getattr(model, "base_model", None)
    if backbone is None or backbone is model:
        raise ValueError(f"{type(model).__name__} exposes no backbone (base_model); zs_llm needs a *ForCausalLM model")
    return head, backbone


def refuse_nonfinite_weights(model: nn.Module) -> None:
    """Name the first parameter holding NaN or inf: a damaged checkpoint, not an architecture zs_llm
    lacks. One pass over the weights, checked whole, since a NaN in some tensors never reaches
    the few logits `check_identity` compares."""
    for name, p in model.named_parameters():
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise ValueError(f"{type(model).__name__}: its weights are not finite (first: {name} holds NaN or inf); "
                             "load intact weights (re-save or re-download the model)")


def refuse_wrapped(model: nn.Module) -> None:
    """Refuse a model that already carries peft adapters: zs_llm places its own LoRA and trains
    only those, so adapters beneath them would silently stay in every answer (or be stacked on).
    The fix is the caller's choice, named in the error: fold them in or drop them first."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if getattr(model, "_zs_llm_wrapped", False):
        raise ValueError(f"this {type(model).__name__} is already wrapped by a ZeroSiamLM (its LoRA layers are in "
                         "place): reuse that wrapper (zs_llm.Streams(lm).stream(name, config) adds another method), "
                         "or call lm.unwrap() first to get the plain model back")
    names = sorted({a for m in model.modules() if isinstance(m, BaseTunerLayer) for a in m.active_adapters})
    if names or getattr(model, "peft_config", None):
        held = f" {names}" if names else ""
        raise ValueError(f"this {type(model).__name__} already holds peft adapters{held}; zs_llm adds "
                         "and trains its own LoRA, so pass the plain base model: on the PeftModel, "
                         "merge_and_unload() folds the adapters into its weights, unload() drops them")


def _canonical(name: str, adapter: str | None) -> str:
    parts = name.split(".")
    if "lora_" in name and len(parts) > 1 and parts[-2] == adapter:
        parts[-2] = "default"
    return ".".join(parts)
