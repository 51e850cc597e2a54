"""`ZeroSiamLM`: a Hugging Face causal LM with LoRA adapters, an identity predictor before its
output head, and an optimizer, composed around the model rather than subclassing it."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import saving
from .config import AdaptConfig
from .decode import greedy_decode, unsupported
from .guard import CollapseGuard
from .methods import METHODS
from .predictor import build_predictor

logger = logging.getLogger("zs_llm")
#: the chat roles a prompt may use (every chat template we render knows these three)
CHAT_ROLES = ("system", "user", "assistant")


def prompt_ids(tokenizer, prompt: str | list[dict]) -> torch.Tensor:
    """Token ids (1, T) of a prompt rendered by `render_prompt`, on the CPU."""
    text = render_prompt(tokenizer, prompt)
    return tokenizer(text, add_special_tokens=not getattr(tokenizer, "chat_template", None),
                     return_tensors="pt").input_ids


def context_length(config) -> int | None:
    """The longest sequence a model's config allows, or None where it names none."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    return None


def sample_seed(seed: int, problem: int, sample: int = 0) -> int:
    """The sampling seed of sample `sample` of the `problem`-th problem (`problems_seen`) under
    `AdaptConfig.seed` `seed`. Sample 0 (the draft, and an answer regenerated after the update)
    keeps `seed + problem`, as it always had; each further sample takes 63 bits of a sha256 of
    all three, so no two samples of a stream share a generator state."""
    if sample == 0:
        return seed + problem
    digest = hashlib.sha256(f"{seed}:{problem}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


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


class ZeroSiamLM:
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
            self.peft = self._inject_lora(model)
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

    def _inject_lora(self, model):
        from peft import LoraConfig, get_peft_model

        from .lora_targets import linear_layer_names, lora_target_modules

        c = self.zs_config
        try:
            target, source = lora_target_modules(model, c.lora_target_modules)
        except ValueError as e:
            raise ValueError(
                f"could not place LoRA adapters on {type(model).__name__}: {e}. Set lora_target_modules to some "
                f"of this model's linear layers: {linear_layer_names(model)}"
            ) from e
        #: the module names LoRA was placed on, and where the choice came from
        self.lora_targets, self.lora_targets_source = target, source
        if source == "found":
            logger.info("LoRA on %s of %s (no peft default for this architecture; set lora_target_modules to "
                        "choose others)", target, type(model).__name__)
        check_lora_memory(model, target, c, self.head.weight.device)
        try:
            lcfg = LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                              target_modules=target, bias="none", task_type="CAUSAL_LM")
            # lora_A's random init draws from the global RNG: seed it so runs are reproducible
            with torch.random.fork_rng(), warnings.catch_warnings():
                torch.manual_seed(c.seed)
                # peft reads transformers' deprecated `is_gradient_checkpointing`: a warning the user cannot act on
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                peft = self.shared.peft
                if peft is None:
                    peft = self.shared.peft = get_peft_model(model, lcfg, adapter_name=self.adapter_name)
                else:  # another stream's adapter beside the ones already there, initialised as a fresh one would be
                    peft.add_adapter(self.adapter_name, lcfg)
            # peft trains only its active adapter: every stream's adapter stays trainable here (each
            # stream's optimizer holds its own), and which one runs is set by `activate`
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.requires_grad_(True)
            self.shared.active = None
            model._zs_llm_wrapped = True  # for `refuse_wrapped`: a second wrapper must not stack on these layers
            return peft
        except ValueError as e:
            names = linear_layer_names(model)
            raise ValueError(
                f"could not place LoRA adapters on {type(model).__name__}: {e}. Set lora_target_modules to some "
                f"of this model's linear layers: {names}"
            ) from e

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

    def set_lr_scale(self, scale: float) -> None:
        """Multiply every optimizer group's learning rate (the collapse guard lowers it)."""
        if self.optimizer is not None:
            for g in self.optimizer.param_groups:
                g["lr"] *= scale

    # --- text ---------------------------------------------------------------------------
    def encode(self, prompt: str | list[dict]) -> torch.Tensor:
        """Token ids (1, T) of a prompt rendered by `render_prompt`."""
        ids = prompt_ids(self.tokenizer, prompt)
        limit = self.context_length
        if limit is not None and ids.shape[1] >= limit:
            raise ValueError(f"prompt is {ids.shape[1]} tokens, the model's context is {limit}: shorten the prompt")
        return ids.to(self.device)

    @property
    def context_length(self) -> int | None:
        return context_length(self.hf.config)

    @torch.no_grad()
    def generate_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     max_new_tokens: int | None = None, return_logits: bool = False, seed: int | None = None,
                     streamer=None):
        """Generate from the target branch (LoRA active, no predictor) with the method's hooks.
        Returns only the new tokens, (B, n); with `return_logits`, also the model's raw logits
        (before any logits processor or sampling warper) that produced them, (B, n, V) fp32.
        Sampling (temperature > 0) seeds torch with `seed`, by default this problem's
        `sample_seed(config.seed, problems_seen)`: the same seed and state give the same text.
        `streamer`: a `transformers` streamer that gets the tokens as they are generated."""
        c = self.zs_config
        self.activate()
        max_new = max_new_tokens or c.max_new_tokens
        if self.context_length is not None:
            max_new = max(1, min(max_new, self.context_length - input_ids.shape[1]))
        tok = self.tokenizer
        kw: dict[str, Any] = {"max_new_tokens": max_new, "do_sample": c.temperature > 0}
        if c.temperature > 0:
            kw.update(temperature=c.temperature, top_p=c.top_p)
        else:
            kw.update(temperature=None, top_p=None, top_k=None)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        procs = self.method.logits_processors(self)
        if procs:
            from transformers import LogitsProcessorList

            kw["logits_processor"] = LogitsProcessorList(procs)
        if streamer is not None:
            kw["streamer"] = streamer
        pre = self.method.head_pre_hook(self)
        handle = self.head.register_forward_pre_hook(lambda m, args: (pre(args[0]),)) if pre else None
        was_training = self.hf.training
        self.hf.eval()
        try:
            if c.temperature > 0:
                torch.manual_seed(sample_seed(c.seed, self.problems_seen) if seed is None else seed)
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            ids, mask = input_ids.to(self.device), attention_mask.to(self.device)
            with self.lora_merged():
                if self.fast_greedy(ids.shape[1] + max_new, procs):
                    out = greedy_decode(self.hf, ids, mask, max_new, pad, return_logits, streamer)
                    return (out[0][:, ids.shape[1]:], out[1]) if return_logits else out[:, ids.shape[1]:]
                out = self.hf.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad,
                                       output_logits=return_logits, return_dict_in_generate=return_logits, **kw)
        finally:
            if handle is not None:
                handle.remove()
            if was_training:
                self.hf.train()
        if not return_logits:
            return out[:, input_ids.shape[1]:]
        return out.sequences[:, input_ids.shape[1]:], torch.stack(out.logits, 1)

    #: greedy drafts through `zs_llm.decode.greedy_decode` (generate's tokens and logits, bit for bit
    #: on the tested kernels, with less per-token overhead) where it covers the model; False: `generate`
    fast_greedy_drafts = True

    def fast_greedy(self, total_length: int, processors=()) -> bool:
        """Whether a greedy generation of `total_length` tokens (prompt + new) takes the fast loop:
        `fast_greedy_drafts` on, greedy decoding, no logits processors, a model it covers."""
        return (self.fast_greedy_drafts and self.zs_config.temperature == 0 and not processors
                and unsupported(self.hf, total_length) is None)

    # Folding into a bf16 / fp16 weight rounds away every update entry below half an ulp of its
    # weight (4e-5 at |w| = 0.02), entries that the training forward keeps and that act together
    # along a row: on SmolLM2 bf16 after 8 problems the folded drafts' logits were 1.6 away from
    # the training forward's (its own KV-cache noise: 0.95). True folds anyway, for speed.
    fold_lora_into_low_precision = False

    @contextlib.contextmanager
    def lora_merged(self):
        """Inside: every LoRA layer whose base weight is fp32 runs as one matmul on a temporary
        copy of that weight with the update folded in (W + scale * B A), instead of three
        (generation is launch- and bandwidth-bound). The original weight tensors are put back
        untouched on exit, so nothing drifts. Layers with bf16 / fp16 base weights keep peft's
        unmerged path, the training forward's own computation (a fold would round small updates
        away; `fold_lora_into_low_precision = True` folds them too), as do layers whose base is
        not a plain Linear / Conv1D. `merge_lora_for_generation = False` on the wrapper turns
        folding off everywhere."""
        swapped = []
        if self.peft is not None and self.merge_lora_for_generation:
            from peft.tuners.lora.layer import Linear as LoraLinear
            from transformers.pytorch_utils import Conv1D

            with torch.no_grad():
                for m in self.hf.modules():
                    if not isinstance(m, LoraLinear) or m.merged or any(m.lora_bias.values()):
                        continue
                    base = m.get_base_layer()
                    if type(base) not in (nn.Linear, Conv1D) or m.lora_variant:
                        continue
                    w = base.weight
                    if w.dtype.itemsize < 4 and not self.fold_lora_into_low_precision:
                        continue
                    names = [a for a in m.active_adapters if a in m.lora_A]
                    merged = w.detach().clone()
                    for a in names:
                        merged += m.get_delta_weight(a).to(w.dtype)
                    base.weight = nn.Parameter(merged, requires_grad=False)
                    m.merged_adapters = names
                    swapped.append((m, base, w))
        try:
            yield
        finally:
            for m, base, w in swapped:
                base.weight = w
                m.merged_adapters = []

    def decode(self, ids: torch.Tensor) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate_texts(self, prompts: list, batch_size: int = 8, max_new_tokens: int | None = None) -> list[str]:
        """Plain batched generation (left padding, KV cache) of many prompts from the target
        branch. Used for methods that do not adapt (`noadapt`, `eminf`)."""
        return [self.decode(row) for row in self.generate_batches(prompts, batch_size, max_new_tokens)]

    def generate_batches(self, prompts: list, batch_size: int = 8, max_new_tokens: int | None = None) -> list:
        """The new token ids of each prompt (`generate_texts` before decoding), `batch_size` prompts
        at a time, left-padded."""
        tok = self.tokenizer
        outs: list = []
        for i in range(0, len(prompts), batch_size):
            encoded = [self.encode(p)[0] for p in prompts[i:i + batch_size]]
            width = max(len(e) for e in encoded)
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            ids = torch.full((len(encoded), width), pad, dtype=torch.long, device=self.device)
            mask = torch.zeros_like(ids)
            for j, e in enumerate(encoded):
                ids[j, width - len(e):] = e
                mask[j, width - len(e):] = 1
            outs.extend(self.generate_ids(ids, mask, max_new_tokens))
        return outs

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


def check_lora_memory(model: nn.Module, targets: list[str], config: AdaptConfig, device: torch.device) -> None:
    """Refuse, before anything is allocated, LoRA whose parameters, gradients and optimizer state
    would not fit in the memory `device` has available (e.g. a mistyped lora_r)."""
    from .loading import available_memory
    from .lora_targets import linear_shapes

    n = sum(config.lora_r * (i + o) for i, o in linear_shapes(model, targets))
    states = 2 if config.optimizer != "sgd" else int(config.momentum > 0)  # AdamW: two moments; SGD: momentum
    need = n * 4 * (2 + states)  # fp32 adapters, their gradients, the optimizer's state
    free = available_memory(device)
    if free is not None and need > free:
        raise ValueError(f"LoRA with lora_r={config.lora_r} on {targets} adds {n:,} parameters, about "
                         f"{need / 2**30:.1f} GiB with gradients and optimizer state, and {device} has "
                         f"{free / 2**30:.1f} GiB available; lower lora_r (e.g. 8-64)")


def _canonical(name: str, adapter: str | None) -> str:
    parts = name.split(".")
    if "lora_" in name and len(parts) > 1 and parts[-2] == adapter:
        parts[-2] = "default"
    return ".".join(parts)


def render_prompt(tokenizer, prompt: str | list[dict]) -> str:
    """The text a prompt becomes. Chat messages, or a plain string (as one user message), go
    through the tokenizer's chat template when it has one; without a template, messages are
    written as "role: content" lines ending in "assistant:" and a string is used as it is."""
    check_prompt(prompt)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt) + "\nassistant:"


def check_prompt(prompt) -> None:
    """Refuse, in one line that says what to fix, a prompt that is not text or chat messages."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("empty prompt: give adapt_generate a question to answer")
        texts = [("the prompt", prompt)]
    elif isinstance(prompt, (list, tuple)):
        if not prompt:
            raise ValueError("empty chat: give adapt_generate at least one message")
        texts = []
        for i, m in enumerate(prompt):
            if not isinstance(m, dict):
                raise ValueError(f"chat message {i} is a {type(m).__name__}; each message is a dict "
                                 "{'role': ..., 'content': ...}")
            for key in ("role", "content"):
                if not isinstance(m.get(key), str):
                    what = "has no" if key not in m else f"has a {type(m[key]).__name__} as its"
                    raise ValueError(f"chat message {i} {what} {key!r}; each message is a dict with 'role' and "
                                     "'content' strings")
            if m["role"] not in CHAT_ROLES:
                raise ValueError(f"chat message {i} has role {m['role']!r}; the roles are {', '.join(CHAT_ROLES)}")
            texts.append((f"chat message {i}", m["content"]))
        if not any(m["role"] == "user" and m["content"].strip() for m in prompt):
            raise ValueError("the chat has no user message with text: give adapt_generate a question to answer "
                             "(a {'role': 'user', 'content': ...} message that is not blank)")
    else:
        raise ValueError(f"the prompt is {type(prompt).__name__}; give a string or a list of chat messages "
                         "[{'role': 'user', 'content': ...}]")
    for where, text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{where} holds a lone surrogate {text[e.start]!r} at character {e.start}, which is not "
                             "text; repair it first, e.g. s.encode('utf-8', 'replace').decode('utf-8')") from None
