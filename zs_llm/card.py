"""What an exported adapter says about itself: the base model it was adapted on, portably, and its
model card (README.md).

The base model is recorded as a hub id and revision where there is one (a hub id, or a folder of
the Hugging Face cache, whose path names both), else as the name it was loaded by and its
fingerprint (`base_probe`): never a path into a machine's cache, so the folder loads elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

#: a folder of the Hugging Face hub cache: .../models--ORG--NAME/snapshots/COMMIT[/...]
_HUB_CACHE = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<commit>[0-9a-f]{7,64})")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def base_model_record(model, probe: dict) -> dict:
    """{"name", "hub_id", "revision", "gguf_file", "fingerprint"} of the base under `model`.
    `name` is what `zs_llm.load_model` loads it by here or anywhere the same name resolves: the
    hub id, the embedded model's name, or the path it was given (a cache path is never kept)."""
    from .loading import named_model

    given = str(getattr(model, "_zs_name", None) or getattr(getattr(model, "config", None), "_name_or_path", "") or "")
    gguf = getattr(model, "_zs_gguf_file", None)
    hub_id = revision = None
    cached = _HUB_CACHE.search(Path(given).as_posix()) if given else None
    if named_model(given) is not None:
        name, gguf = named_model(given).name, None  # its package files are found wherever they are installed
    elif cached:
        hub_id, revision = f"{cached['org']}/{cached['name']}", cached["commit"]
        name = hub_id
    elif _HUB_ID.fullmatch(given) and not Path(given).exists():
        hub_id, name = given, given
        revision = getattr(getattr(model, "config", None), "_commit_hash", None) or _cached_commit(given)
    else:
        name = given or None
        if name and name.endswith(".gguf"):
            gguf = None  # the name holds the file
    fingerprint = hashlib.sha256(json.dumps(probe, sort_keys=True).encode()).hexdigest()[:16]
    return {"name": name, "hub_id": hub_id, "revision": revision, "gguf_file": gguf, "fingerprint": fingerprint}


def _cached_commit(repo: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, "config.json")
    except (ImportError, ValueError):
        return None
    m = _HUB_CACHE.search(Path(found).as_posix()) if isinstance(found, str) else None
    return m["commit"] if m else None


def _table(pairs) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in pairs)]


def _code(value) -> str:
    return f"`{value}`" if value not in (None, "") else "-"


def _value(v) -> str:
    return _code(json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else v)


def model_card(meta: dict, card: dict | None = None) -> str:
    """README.md of an adapter folder: `meta` is its zs_llm config (the method's settings, the base
    model record, problems seen); `card` what the harness adds: the stream, accuracy with its
    interval and the verdict."""
    card = card or {}
    ac, base = meta["adapt_config"], meta["base"]
    method = ac.get("method", "?")
    shown = base["hub_id"] or base["name"] or "an unnamed base model"
    front = ["---", "library_name: peft" if meta.get("lora") else "library_name: zs_llm"]
    if base["hub_id"]:
        front.append(f"base_model: {base['hub_id']}")
    front += ["tags:", "- zs_llm", "- test-time-adaptation", f"- {method}", *(["- lora"] if meta.get("lora") else []),
              "---"]
    lines = [*front, "", f"# {method} adapter for {shown}", "",
             f"Adapted at test time by zs_llm's `{method}` method: no labels, one update per problem on the model's "
             "own answers to the stream below. This folder holds the final adapted state"
             + (" (a peft LoRA adapter, the predictor and the method's state)." if meta.get("lora") else
                " (the predictor and the method's state; no LoRA adapter)."), "", "## Base model", ""]
    lines += _table([("hub id", _code(base["hub_id"])), ("revision", _code(base["revision"])),
                     ("name given", _code(base["name"])), ("GGUF file", _code(base["gguf_file"])),
                     ("fingerprint", f"`{base['fingerprint']}` (zs_llm.model.base_probe: architecture, parameter "
                                     "shapes and sampled weights; checked when the adapter loads)")])
    lines += ["", "## Method and its settings", ""]
    own = ac.get("method_args") or {}
    lines += ["| setting | value |", "|---|---|",
              *(f"| {k} | {_value(v)} |" for k, v in ac.items() if k != "method_args"),
              *(f"| {k} ({method}'s own) | {_value(v)} |" for k, v in own.items())]
    lines += ["", "## Stream", ""]
    stream = card.get("stream") or {}
    lines += _table([("dataset", _code(stream.get("dataset"))), ("source", stream.get("source") or "-"),
                     ("problems in the stream", stream.get("problems", "-")),
                     ("problems seen (adapted on)", meta.get("problems_seen", "-"))])
    result = card.get("accuracy")
    lines += ["", "## Results", ""]
    if result:
        lines += _table([("accuracy", f"{result['correct']}/{result['n']} = {100 * result['acc']:.1f}% "
                                      f"[95% Wilson interval {100 * result['low']:.1f}, {100 * result['high']:.1f}]"),
                         ("verdict", f"{card.get('verdict', '-')} ({card.get('verdict_rule', '-')})")])
    else:
        lines.append("Not recorded (saved outside the evaluation harness, which adds accuracy and the verdict).")
    lines += ["", "## How to load", ""]
    if base["hub_id"]:
        rev = f', revision="{base["revision"]}"' if base["revision"] else ""
        load_base = f'base = AutoModelForCausalLM.from_pretrained("{base["hub_id"]}"{rev})'
    elif base["gguf_file"]:
        load_base = f'base = AutoModelForCausalLM.from_pretrained("{base["name"]}", gguf_file="{base["gguf_file"]}")'
    else:
        load_base = f'base, tokenizer = zs_llm.load_model("{base["name"]}")  # or your copy of the base model'
    if meta.get("lora"):
        lines += ["With peft (the LoRA part; the predictor is zs_llm's):", "", "```python",
                  "import zs_llm", "from peft import PeftModel", "from transformers import AutoModelForCausalLM", "",
                  load_base, 'model = PeftModel.from_pretrained(base, "path/to/this/folder")', "```", ""]
    lines += ["With zs_llm (the adapter, the predictor and the method's state, ready to keep adapting):", "",
              "```python", "from zs_llm import ZeroSiamLM", "",
              'lm = ZeroSiamLM.from_pretrained("path/to/this/folder")  # loads the base by the name above',
              "# or on a base model loaded yourself (its fingerprint is checked):",
              'lm = ZeroSiamLM.from_pretrained("path/to/this/folder", model=base, tokenizer=tokenizer)', "```", ""]
    return "\n".join(lines)
