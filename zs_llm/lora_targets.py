"""Where LoRA goes on a causal LM that peft has no default for: the attention's query and value
projections, found by module type and name, fused or not.

peft knows the projection names of the architectures it lists (`q_proj`/`v_proj` for Llama,
`c_attn` for GPT-2 ...). For any other model, the first decoder layer's attention block (a module
whose class name ends in "Attention") is searched for its linear layers: separate query and
value projections when it has them, else the fused projection that computes them together
(`qkv_proj`, `query_key_value`, `Wqkv`, `c_attn`). The output projection is never chosen: the
paper's setting adapts what the attention reads, not what it writes.
"""

from __future__ import annotations

import re

from torch import nn

QUERY = re.compile(r"^(q|q_proj|query|wq|q_lin)$")
VALUE = re.compile(r"^(v|v_proj|value|wv|v_lin)$")
FUSED = re.compile(r"^(qkv|qkv_proj|query_key_value|wqkv|c_attn|in_proj|att_proj)$", re.IGNORECASE)


def _is_linear(module: nn.Module) -> bool:
    # transformers' Conv1D (GPT-2 family) is a linear layer with transposed weights
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


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
