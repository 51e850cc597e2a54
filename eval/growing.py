"""Runs that grow: a finished (or stopped) run folder takes a larger `--limit`, more methods or more
datasets, keeps every row it holds and computes only the rest.

A row is reused when what it was computed on is the same: the model, the data (each set's file
and, for the problems it already holds, their ids, questions and golds), the prompt (style,
template, chat template, system prompt) and the method's resolved settings (the rows'
`config_hash`). Those are checked as a resume checks them (`eval.identity`); the sets' problems
are compared over the prefix the run holds, so that `--limit 40` continues a run of 20 only if its
first 20 problems are those 20 (a generated stream whose shape follows `--limit`, such as `shift`,
is another stream at another size and is refused).

What grows, and how the settings merge:
- `limit`: the larger one (no limit, the whole set, is the largest); a smaller one computes nothing;
- `methods`, `datasets`: the run's, then the new ones in the order given (a run never loses a stream);
- `subset`: subsets of datasets the run does not hold yet.
Every other setting that changes results (the model, `--seed`, `--lr`, `--set`, the prompt, ...)
changes what a row means: that folder is refused, naming each such setting. `--overwrite` does not
grow: it deletes the other configuration's results, as before.

run.json then records the merged configuration, and under "grown" what each growth added.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .datasets import DATASETS, load_problems, parse_subsets
from .identity import RunChanged, _short, check_resume, problems_sha256

#: settings a run grows in (`merge` below); every other setting that changes results is the run's identity
GROWABLE = ("limit", "methods", "datasets", "subset")


@dataclass
class Growth:
    """How a run's settings (run.json `info`) and a new configuration meet."""

    merged: dict | None = None  # the merged RunConfig settings (None: nothing merges)
    added: list[str] = field(default_factory=list)  # what the new configuration adds, in words
    blocked: list[str] = field(default_factory=list)  # `setting: old -> new` of settings that cannot grow


def _cell(v) -> str:
    return repr(v)[:60]


def _larger_limit(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else max(a, b)


def _method_labels(specs: list[str], config: dict) -> dict[str, str]:
    """{label: spec} of a recorded run's method specs."""
    from zs_llm.config import AdaptConfig

    from .resolved import method_label
    from .run_folder import method_overrides

    return {method_label(s, AdaptConfig.from_spec(s, method_overrides(config))): s for s in specs}


def _method_changes(old: dict, new: dict, ma, mb) -> list[str]:
    """The method settings that changed between the recorded configuration `old` and `new` (`ma`,
    `mb`: each method's resolved settings): named once as a flag every method shares (--lr, --set)
    when one changed, else per method (its defaults changed since)."""
    blocked = []
    old_adapt, new_adapt = old.get("adapt") or {}, new.get("adapt") or {}
    raw = [k for k in sorted(set(old_adapt) | set(new_adapt)) if old_adapt.get(k) != new_adapt.get(k)]
    if isinstance(ma, dict) and isinstance(mb, dict):
        seeded = old.get("seed") != new.get("seed")  # named once, as the run's seed
        moved = {}
        for spec in [s for s in mb if s in ma]:  # a method both name: its rows need the same settings
            keys = [k for k in sorted(set(ma[spec]) | set(mb[spec]))
                    if ma[spec].get(k) != mb[spec].get(k) and not (seeded and k == "seed")]
            if keys:
                moved[spec] = keys
        if moved and raw:  # --lr, --set: every method's settings
            blocked += [f"{k} (every method): {_cell(old_adapt.get(k))} -> {_cell(new_adapt.get(k))}" for k in raw]
        else:  # the same flags resolved otherwise (a method's defaults changed since)
            blocked += [f"the settings of {spec} (" + ", ".join(
                f"{k}: {_cell(ma[spec].get(k))} -> {_cell(mb[spec].get(k))}" for k in keys[:4]) + ")"
                for spec, keys in moved.items()]
    elif raw:
        blocked += [f"{k} (every method): {_cell(old_adapt.get(k))} -> {_cell(new_adapt.get(k))}" for k in raw]
    return blocked


def plan(runner, info: dict) -> Growth:
    """How `runner`'s configuration grows the run recorded in run.json `info`: the merged settings,
    or the settings that would change what the run's rows were computed on (`blocked`)."""
    from .run_folder import RESULT_FREE_FIELDS, normalised_config

    old = info.get("config")
    if not isinstance(old, dict):
        return Growth(blocked=["its run.json records no settings"])
    new = runner.cfg.to_dict()
    try:
        a, b = normalised_config(old, info), runner._normalised(info)
    except (TypeError, ValueError, KeyError) as e:  # settings this version cannot read
        return Growth(blocked=[f"its recorded settings do not parse here ({e})"])
    blocked = []
    for k in sorted(set(a) | set(b)):
        if k in GROWABLE or k == "adapt" or k in RESULT_FREE_FIELDS or a.get(k) == b.get(k):
            continue
        blocked.append(f"{k}: {_cell(old.get(k))} -> {_cell(new.get(k))}")
    blocked += _method_changes(old, new, a.get("adapt"), b.get("adapt"))
    old_sub, new_sub = parse_subsets(old.get("subset") or []), parse_subsets(new.get("subset") or [])
    both = set(_names(info)) & set(runner.cfg.dataset_names())
    for name in sorted((set(old_sub) | set(new_sub)) & both):  # a set both hold: the same problems
        was, now = old_sub.get(name), new_sub.get(name)
        if (was and was.spec) != (now and now.spec):
            blocked.append(f"subset of {name}: {was.spec if was else None!r} -> {now.spec if now else None!r}")
    if blocked:
        return Growth(blocked=blocked)
    added = []
    labels = _method_labels(old["methods"], old)
    new_methods = [r.spec for r in runner.cfg.resolved_methods() if r.label not in labels]
    if new_methods:
        added.append(f"methods {', '.join(new_methods)}")
    have = set(_names(info))
    new_sets = [entry for entry, name in zip(new["datasets"], runner.cfg.dataset_names()) if name not in have]
    if new_sets:
        added.append(f"datasets {', '.join(new_sets)}")
    limit = _larger_limit(old.get("limit"), new.get("limit"))
    if limit != old.get("limit"):
        added.append(f"limit {old.get('limit')} -> {'none (whole sets)' if limit is None else limit}")
    subset = list(old.get("subset") or []) + [s for s in new.get("subset") or [] if s not in (old.get("subset") or [])]
    merged = {**new, "methods": list(old["methods"]) + new_methods, "datasets": list(old.get("datasets") or []) + new_sets,
              "limit": limit, "subset": subset}
    return Growth(merged=merged, added=added)


def _names(info: dict) -> list[str]:
    """The dataset names a recorded run holds (by name, as its rows carry them)."""
    sets = ((info.get("identity") or {}).get("sets") or {}) or (info.get("data") or {})
    return list(sets)


def grown_config(runner, out: Path, overwrite: bool):
    """The configuration `runner` runs in `out`: its own, or, when `out` holds a run that it grows
    (see the module docstring), the merged one (logged). A folder it cannot grow is left to
    `FolderChecks.check_folder`, which refuses it naming the settings (`Growth.blocked`)."""
    from .run_folder import _log, has_results, read_run_json
    from .runner import RunConfig

    run_json = out / "run.json"
    if overwrite or not run_json.is_file() or not has_results(out):
        return runner.cfg
    try:
        info = read_run_json(run_json)
    except ValueError:
        return runner.cfg  # check_folder says what is wrong with it
    if runner.same_run(info):
        return runner.cfg
    g = plan(runner, info)
    if g.merged is None:
        return runner.cfg
    cfg = RunConfig(**g.merged)
    if g.added and runner.rank == 0:
        _log(f"growing {out}: adds {'; '.join(g.added)}. Rows computed on the same model, data, prompt and method "
             f"settings are reused; only the rest is computed (the run now holds methods {', '.join(cfg.methods)} on "
             f"{', '.join(cfg.dataset_names())}, limit {cfg.limit})")
    elif not g.added and runner.rank == 0:
        _log(f"{out} already holds what this configuration asks for (methods {', '.join(cfg.methods)}, limit "
             f"{cfg.limit}): nothing is added")
    return cfg


def check_grown_data(out: Path, old_info: dict, data: dict, ident: dict, cfg) -> None:
    """Before a run grows: each set it holds reads the same problems over the part it holds (the
    first n problems under the new limit are the n it ran), and its files, data dir and model are
    those it ran on (`check_resume`); raises `RunChanged` naming the difference."""
    old_sets = (old_info.get("identity") or {}).get("sets") or {}
    subsets = parse_subsets(cfg.subset)
    same = {}
    for d, was in old_sets.items():
        if d not in ident["sets"]:
            continue
        problems = load_problems(d, data_dir=cfg.data_dir, limit=cfg.limit, seed=cfg.seed, source=cfg.source,
                                 subset=subsets.get(d))
        head = problems[:was["n"]]
        if len(head) < was["n"] or problems_sha256(head) != was["problems_sha256"]:
            spec = DATASETS.get(d)
            why = (f"{d} is generated in a shape that follows --limit, so at --limit {cfg.limit} it is another stream"
                   if spec is not None and spec.scales else f"its data changed since (sha256 of their ids, questions "
                   f"and golds {_short(was['problems_sha256'])}, now {_short(problems_sha256(head))})")
            raise RunChanged(f"{out} cannot grow: the first {was['n']} {d} problems are not the {was['n']} it holds "
                             f"({why}); keep its --limit for {d}, or run into a new --out")
        same[d] = was
    check_resume(out, old_info, data, {**ident, "sets": same}, True, verb="grow")


def grown_record(old_info: dict, new_info: dict, added: list[str]) -> dict:
    """run.json of a grown run: the new configuration's record, keeping what was recorded of the model
    and prompt once loaded (checked again when it loads) and the history of growths."""
    old_ident = old_info.get("identity") or {}
    return {**new_info, "identity": {**old_ident, **new_info["identity"]},
            "created": old_info.get("created", new_info["created"]),
            **({"prompt_format": old_info["prompt_format"]} if old_info.get("prompt_format") else {}),
            "grown": [*old_info.get("grown", []), {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "added": added,
                                                   "from_config_hash": old_info.get("config_hash")}]}
