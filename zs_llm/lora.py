"""Placing a wrapper's LoRA adapter on a Hugging Face model: where (`lora_targets`), whether it
fits in memory, and peft's adapter itself, added beside the other streams' on a shared model."""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from .config import AdaptConfig
from .lora_targets import linear_layer_names, linear_shapes, lora_target_modules

logger = logging.getLogger("zs_llm")


def check_lora_memory(model: nn.Module, targets: list[str], config: AdaptConfig, device: torch.device) -> None:
    """Refuse, before anything is allocated, LoRA whose parameters, gradients and optimizer state
    would not fit in the memory `device` has available (e.g. a mistyped lora_r)."""
    from .loading import available_memory

    n = sum(config.lora_r * (i + o) for i, o in linear_shapes(model, targets))
    states = 2 if config.optimizer != "sgd" else int(config.momentum > 0)  # AdamW: two moments; SGD: momentum
    need = n * 4 * (2 + states)  # fp32 adapters, their gradients, the optimizer's state
    free = available_memory(device)
    if free is not None and need > free:
        raise ValueError(f"LoRA with lora_r={config.lora_r} on {targets} adds {n:,} parameters, about "
                         f"{need / 2**30:.1f} GiB with gradients and optimizer state, and {device} has "
                         f"{free / 2**30:.1f} GiB available; lower lora_r (e.g. 8-64)")


def _placement_error(model: nn.Module, e: Exception) -> ValueError:
    return ValueError(f"could not place LoRA adapters on {type(model).__name__}: {e}. Set lora_target_modules to "
                      f"some of this model's linear layers: {linear_layer_names(model)}")


def inject_lora(model: nn.Module, config: AdaptConfig, shared, adapter_name: str,
                device: torch.device) -> tuple[object, list[str], str]:
    """Add the adapter `adapter_name` to `model` (through `shared.peft`, peft's model around it,
    made on the first call): returns peft's model, the module names LoRA was placed on and where
    that choice came from ("config", "peft" or "found"). Every stream's adapter stays trainable
    (each stream's optimizer holds its own); which one runs is `ZeroSiamLM.activate`'s call."""
    from peft import LoraConfig, get_peft_model

    try:
        target, source = lora_target_modules(model, config.lora_target_modules)
    except ValueError as e:
        raise _placement_error(model, e) from e
    if source == "found":
        logger.info("LoRA on %s of %s (no peft default for this architecture; set lora_target_modules to "
                    "choose others)", target, type(model).__name__)
    check_lora_memory(model, target, config, device)
    try:
        lcfg = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=target, bias="none", task_type="CAUSAL_LM")
        # lora_A's random init draws from the global RNG: seed it so runs are reproducible
        with torch.random.fork_rng(), warnings.catch_warnings():
            torch.manual_seed(config.seed)
            # peft reads transformers' deprecated `is_gradient_checkpointing`: a warning the user cannot act on
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft = shared.peft
            if peft is None:
                peft = shared.peft = get_peft_model(model, lcfg, adapter_name=adapter_name)
            else:  # another stream's adapter beside the ones already there, initialised as a fresh one would be
                peft.add_adapter(adapter_name, lcfg)
    except ValueError as e:
        raise _placement_error(model, e) from e
    # peft trains only its active adapter: every stream's adapter stays trainable here
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.requires_grad_(True)
    shared.active = None
    model._zs_llm_wrapped = True  # for `refuse_wrapped`: a second wrapper must not stack on these layers
    return peft, target, source
