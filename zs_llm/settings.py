"""Fields with help text, their checks and their command-line parsing: the pieces every config
dataclass of the library uses (`AdaptConfig` and each method's own settings). A leaf module:
it imports nothing from zs_llm, so a method's file can use it without import cycles."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any


def setting(default, help: str, **kw):
    """A dataclass field with help text (read by `--help` and `AdaptConfig.help()`)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def check_fields(obj, owner: str) -> None:
    """Refuse NaN / infinite numbers and values outside a field's `choices` metadata, naming the field."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{owner}.{f.name}={v} is not a finite number; give a finite value")
        choices = f.metadata.get("choices")
        if choices is not None and v not in choices:
            raise ValueError(f"{owner}.{f.name}={v!r} is not valid; choose one of {tuple(choices)}")
        low = f.metadata.get("min")
        if low is not None and v is not None and v < low:
            raise ValueError(f"{owner}.{f.name} must be >= {low}, got {v}")


def help_text(cls) -> str:
    """One line per field of a config dataclass: name, default, help."""
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"{f.name} (default {default!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)


def type_name(annotation: Any) -> str:
    """An annotation as written (`float | None`, `list[str]`, `int`), whether it is still a string
    (`from __future__ import annotations`) or a type."""
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def parse_value(text: str, annotation: Any) -> Any:
    """A command-line string as the type a field's annotation names (`float | None`, `list[str]` ...)."""
    kind = type_name(annotation)
    if text.lower() in ("none", "null"):
        if "None" in kind or kind == "Any":
            return None
        raise ValueError(f"this setting cannot be None (type {kind})")
    if "list" in kind:
        return [x for x in text.split(",") if x]
    if "bool" in kind:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1", "yes")
    try:
        if "int" in kind and "float" not in kind:
            return int(text)
        if "float" in kind:
            return float(text)
    except ValueError:
        raise ValueError(f"expected a number ({kind}), got {text!r}") from None
    return text
