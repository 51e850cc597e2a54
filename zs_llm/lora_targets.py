"""Where LoRA goes on a causal LM that peft has no default for: the attention's query and value
projections, found by module type and name, fused or not.

peft knows the projection names of the architectures it lists (`q_proj`/`v_proj` for Llama,
`c_attn` for GPT-2 ...). For any other model, the first decoder layer's attention block (a module
whose class name ends in "Attention") is searched for its linear layers: separate query and
value projections when it has them, else the fused projection that computes them together
(`qkv_proj`, `query_key_value`, `Wqkv`, `c_attn`). The output projection is never chosen: the
paper's setting adapts what the attention reads, not what it writes. Layers another stream's
LoRA already wraps are seen through, so every stream on one model finds the same targets.
"""

from __future__ import annotations

import re

from torch import nn

QUERY = re.compile(r"^(q|q_proj|query|wq|q_lin)$")
VALUE = re.compile(r"^(v|v_proj|value|wv|v_lin)$")
FUSED = re.compile(r"^(qkv|qkv_proj|query_key_value|wqkv|c_attn|in_proj|att_proj)$", re.IGNORECASE)


def base_layer(module: nn.Module) -> nn.Module:
    """The layer a peft tuner layer wraps (another stream's LoRA on the same model), else `module`."""
    get = getattr(module, "get_base_layer", None)
    return get() if callable(get) and hasattr(module, "base_layer") else module


def _is_linear(module: nn.Module) -> bool:
    # transformers' Conv1D (GPT-2 family) is a linear layer with transposed weights
    module = base_layer(module)
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def linear_layer_names(model: nn.Module) -> list[str]:
    """The distinct last names of `model`'s linear layers, seen through LoRA wrappers (what
    `lora_target_modules` may name)."""
    names = set()
    for n, m in model.named_modules():
        if ".lora_" in n or n.endswith(".base_layer") or ".base_layer." in n:
            continue  # peft's own parts
        if _is_linear(m):
            names.add(n.rsplit(".", 1)[-1])
    return sorted(names)


def linear_shapes(model: nn.Module, targets: list[str]) -> list[tuple[int, int]]:
    """(in, out) features of every linear layer that `targets` names as peft matches a list of
    names (the full name, or its ending after a dot), seen through LoRA wrappers."""
    shapes = []
    for n, m in model.named_modules():
        if ".lora_" in n or n.endswith(".base_layer") or not _is_linear(m):
            continue
        if not any(n == t or n.endswith("." + t) for t in targets):
            continue
        w = base_layer(m).weight
        shapes.append((int(w.shape[1]), int(w.shape[0])) if isinstance(base_layer(m), nn.Linear)
                      else (int(w.shape[0]), int(w.shape[1])))
    return shapes


def peft_default(model: nn.Module) -> list[str] | None:
    """The target modules peft uses for this architecture, or None when it has none."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as MAPPING

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    found = MAPPING.get(model_type)
    return list(found) if found else None


def find_attention_projections(model: nn.Module) -> list[str]:
    """Names (last path component) of the query/value projections of `model`'s attention, or its
    fused projection. Raises ValueError naming the linear layers when none is recognisable."""
    attention = next((m for n, m in model.named_modules() if type(m).__name__.endswith("Attention")
                      and any(_is_linear(c) for c in m.children())), None)
    if attention is None:
        raise ValueError(f"{type(model).__name__}: no attention block found (no module whose class name ends in "
                         "'Attention' holds a linear layer)")
    names = [n for n, c in attention.named_children() if _is_linear(c)]
    q = [n for n in names if QUERY.match(n)]
    v = [n for n in names if VALUE.match(n)]
    if q and v:
        return [q[0], v[0]]
    fused = [n for n in names if FUSED.match(n)]
    if fused:
        return fused[:1]
    raise ValueError(f"{type(model).__name__}: cannot tell the query/value projections among the attention's "
                     f"linear layers {names}")


def lora_target_modules(model: nn.Module, requested: list[str] | None = None) -> tuple[list[str], str]:
    """(target module names, where they came from: "config", "peft default" or "found")."""
    if requested:
        return list(requested), "config"
    default = peft_default(model)
    if default:
        return default, "peft default"
    return find_attention_projections(model), "found"
