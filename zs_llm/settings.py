"""Fields with help text, their checks and their command-line parsing: the pieces every config
dataclass of the library uses (`AdaptConfig`, each method's own settings, the harness's
`RunConfig`). A leaf module: it imports nothing from zs_llm, so a method's file can use it
without import cycles.

A field declares its type by its annotation and its range in its metadata (`min`/`max`
inclusive, `gt`/`lt` exclusive, `choices`; a list may be empty only with `empty_ok`).
`check_value` is the one check of a value against them: the dataclasses' `__post_init__`, the
command line, `--set`, YAML files and method specs all call it, so a bad value reads the same
whichever way it came in (the entry point only says where: a file, a flag, a spec).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import reprlib
from collections.abc import Mapping
from dataclasses import field
from typing import Any

#: an example value of each type, for the fix an error names
EXAMPLES = {"float": "1.0e-4", "int": "10", "bool": "true", "list": "a,b", "dict": "{key: value}", "str": "text"}
_NUMBERS = ("bool", "int", "float")
#: the largest seed a field accepts: torch.manual_seed takes [-2**63, 2**64), and a stream seeds
#: problem i with seed + i (zs_llm.model.sample_seed), so seeds below 2**63 leave room for any stream
SEED_MAX = 2**63 - 1
#: upper bounds of sizes (`max=`), each far above any real use: a slip (three zeros too many, 2**80)
#: is refused at once rather than hanging a run or failing after the model has loaded
MAX_STEPS = 10_000  # optimisation steps per problem (papers use 1 to 10; 10k already takes hours per problem)
MAX_TOKENS = 1_000_000  # tokens generated per answer (10x the longest reasoning traces; the model's own
#                         position limit is checked against the prompt when the model is loaded)
MAX_BATCH = 65_536  # prompts or streams run together


def setting(default, help: str, **kw):
    """A dataclass field with help text (read by `--help` and `AdaptConfig.help()`) and its range
    (`min=`, `max=`, `gt=`, `lt=`, `choices=`, `empty_ok=`: see `check_value`)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def type_name(annotation: Any) -> str:
    """An annotation as written (`float | None`, `list[str]`, `int`), whether it is still a string
    (`from __future__ import annotations`) or a type."""
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _parts(kind: str) -> list[str]:
    """`float | None` -> ["float", "None"]; `dict[str, Any]` stays one part."""
    return [p.strip() for p in kind.split("|")]


def _base(part: str) -> str:
    return part.split("[", 1)[0]


def _is(value: Any, part: str) -> bool:
    """Whether `value` has the type one part of an annotation names (a bool is not an int, a
    float is not an int, an int is a float; numpy scalars count as the numbers they hold)."""
    base = _base(part)
    if base == "None":
        return value is None
    if base == "bool":
        return isinstance(value, bool)
    if base == "int":
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if base == "float":
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if base == "str":
        return isinstance(value, str)
    if base == "list":
        item = part[5:-1] if part.endswith("]") else "Any"
        return isinstance(value, list) and all(_is(x, item) for x in value)
    if base == "dict":
        return isinstance(value, dict)
    return True  # Any, or a type this module does not know


#: a value's text in an error, bounded however large or nested the value (a YAML alias bomb, a long list)
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 8, 8, 60, 60


def _python(value: Any) -> Any:
    """A number of another type (numpy's np.int64, np.float32; a Fraction) as the Python int or
    float it holds, so records stay JSON and hash alike however the value was given; lists item
    by item; anything else as it is."""
    if isinstance(value, list):
        return [_python(x) for x in value]
    if isinstance(value, bool) or type(value) in (int, float):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def _shown(value: Any) -> str:
    if value is None:
        return "None"
    text = _REPR.repr(value)
    return text if isinstance(value, str) else f"{text} ({type(value).__name__})"


def _example(kind: str, default: Any) -> str:
    """A valid value to name in an error: the field's default where it has one, else one of its type."""
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, (int, float)) or (isinstance(default, str) and default):
        return str(default)
    if isinstance(default, list) and default:
        return ",".join(map(str, default))
    base = next((_base(p) for p in _parts(kind) if p != "None"), "str")
    return EXAMPLES.get(base, "...")


def _range(meta: Mapping) -> str | None:
    """The interval a field's metadata declares, as a fix reads it: `>= 1`, `in [0, 1]`, `in (0, 1]`."""
    lo, gt, hi, lt = (meta.get(k) for k in ("min", "gt", "max", "lt"))
    low = (f"[{lo}" if lo is not None else f"({gt}") if lo is not None or gt is not None else None
    high = (f"{hi}]" if hi is not None else f"{lt})") if hi is not None or lt is not None else None
    if low and high:
        return f"in {low}, {high}"
    if low:
        return f">= {lo}" if lo is not None else f"> {gt}"
    if high:
        return f"<= {hi}" if hi is not None else f"< {lt}"
    return None


def _in_range(v: float, meta: Mapping) -> bool:
    lo, gt, hi, lt = (meta.get(k) for k in ("min", "gt", "max", "lt"))
    return ((lo is None or v >= lo) and (gt is None or v > gt) and (hi is None or v <= hi)
            and (lt is None or v < lt))


def check_value(name: str, value: Any, annotation: Any, metadata: Mapping | None = None, default: Any = None) -> Any:
    """`value` checked against a field's type (its annotation) and range (its metadata); returns
    it as the field holds it (an int given for a float becomes a float). Raises a one-line
    ValueError that names the field and the fix; the text depends only on the field and the
    value, never on where the value came from."""
    meta = metadata or {}
    kind = type_name(annotation)
    parts = _parts(kind)
    if not any(_is(value, p) for p in parts):
        raise ValueError(f"{name} expects {kind}, got {_shown(value)}; e.g. {_example(kind, default)}")
    value = _python(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}={value} is not a finite number; give a finite value")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        desc = _range(meta)
        if desc is not None and not _in_range(value, meta):
            raise ValueError(f"{name} must be {desc}, got {value}")
        if "float" in parts and "int" not in parts:
            value = float(value)
    if isinstance(value, str) and not value:
        raise ValueError(f"{name} is empty; give a value, e.g. {_example(kind, default)}")
    if isinstance(value, list):
        if not value and not meta.get("empty_ok"):
            raise ValueError(f"{name} is an empty list; give at least one value, e.g. {_example(kind, default)}")
        if any(isinstance(x, str) and not x for x in value):
            raise ValueError(f"{name} holds an empty item; remove it")
        texts = [x for x in value if isinstance(x, str)]
        twice = next((x for i, x in enumerate(texts) if x in texts[:i]), None)
        if twice is not None:
            raise ValueError(f"{name} lists {twice!r} twice; list each once")
    choices = meta.get("choices")
    if choices is not None and value is not None:
        for x in value if isinstance(value, list) else [value]:
            if x not in choices:
                raise ValueError(f"{name}={x!r} is not valid; choose one of {', '.join(map(str, choices))}")
    return value


def check_field(f: dataclasses.Field, value: Any, name: str | None = None) -> Any:
    """`check_value` against a dataclass field's annotation, metadata and default."""
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
    return check_value(name or f.name, value, f.type, f.metadata, default)


def check_fields(obj) -> None:
    """Every field of a config dataclass instance checked (`check_value`) and set to the value as
    the field holds it (an int given for a float, a numpy scalar): for `__post_init__`."""
    for f in dataclasses.fields(obj):
        if f.init:
            object.__setattr__(obj, f.name, check_field(f, getattr(obj, f.name)))


def help_text(cls) -> str:
    """One line per field of a config dataclass: name, default, help."""
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"{f.name} (default {default!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)


def parse_text(text: str, annotation: Any) -> Any:
    """A command-line string as the value a YAML file would hold for the field (`none` -> None, but
    the word itself in a text field that cannot be None; `true` -> True, `3` -> 3, `1e-4` -> 0.0001,
    `a,b` -> ["a", "b"] for a list); text a number field cannot read stays text, for `check_value`
    to refuse. Never raises."""
    parts = _parts(type_name(annotation))
    if text.strip().lower() in ("none", "null") and ("None" in parts or "str" not in parts):
        return None  # a text field that cannot be None keeps the word (`--report_to none`)
    item = next((p[5:-1] for p in parts if p.startswith("list[")), None)
    if item is not None:
        return [_scalar(x.strip(), [item]) for x in text.split(",") if x.strip()]
    return _scalar(text, parts)


def _scalar(text: str, parts: list[str]) -> Any:
    if "str" in parts or not any(_base(p) in _NUMBERS for p in parts):
        return text
    low = text.strip().lower()
    if low in ("true", "yes", "false", "no"):
        return low in ("true", "yes")
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return text


def parse_value(text: str, annotation: Any, name: str = "value", metadata: Mapping | None = None) -> Any:
    """A command-line string as the type a field's annotation names, checked (`parse_text`, then
    `check_value`)."""
    return check_value(name, parse_text(text, annotation), annotation, metadata)
