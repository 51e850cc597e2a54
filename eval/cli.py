"""`python -m eval run ...` and `python -m eval report RUN_DIR`.

    python -m eval run --model smollm2-135m-instruct --methods noadapt,tent,zerosiam \
        --datasets arith,math500 --limit 20 --out runs/demo
    python -m eval report runs/demo
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from .runner import RunConfig, Runner


def read_yaml(path: str | Path) -> dict:
    """The mapping a YAML config file holds; a missing file, bad syntax or another shape is a
    one-line error naming the file (and the line)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist" if not p.exists() else f"config file {p} is a folder")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{p} is not UTF-8 text; save the config file as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{p}: invalid YAML{where} ({problem}); fix the syntax (field: value, one per line)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{p} must hold field: value lines (a mapping), not a {type(data).__name__}")
    return data


EXAMPLES = {"float": "1.0e-4", "int": "10", "bool": "true", "list": "[a, b]", "dict": "{key: value}", "str": "text"}


def coerce(name: str, value: Any, annotation: Any, where: str) -> Any:
    """A config file's value as its field's type, or a one-line error naming file, field and fix.
    PyYAML reads `1e-4` (no dot) as a string: numbers written as text are converted here."""
    from zs_llm.config import parse_value

    kind = str(annotation).replace("typing.", "")
    base = next((k for k in ("list", "dict", "bool", "float", "int", "str") if kind.startswith(k) or f"| {k}" in kind
                 or f"{k} |" in kind), "Any")

    def fail(got: str) -> ValueError:
        return ValueError(f"{where}: {name} expects {kind}, got {got}; write e.g. `{name}: {EXAMPLES.get(base, '...')}`")

    if value is None:
        if "None" in kind or base == "Any":
            return None
        raise fail("nothing (null)")
    if isinstance(value, str) and base in ("float", "int", "bool", "list"):
        try:
            return parse_value(value, kind)
        except ValueError:
            raise fail(repr(value)) from None
    ok = {"bool": lambda v: isinstance(v, bool),
          "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "list": lambda v: isinstance(v, list),
          "dict": lambda v: isinstance(v, dict),
          "str": lambda v: isinstance(v, str)}.get(base, lambda v: True)
    if not ok(value):
        raise fail(f"{value!r} ({type(value).__name__})")
    return float(value) if base == "float" else value


def coerce_settings(adapt: dict, where: str) -> dict:
    """AdaptConfig overrides from a config file, each as its setting's type; unknown names listed."""
    from zs_llm.config import all_settings

    settings = all_settings()
    if not isinstance(adapt, dict):
        raise ValueError(f"{where}: adapt must be a mapping of setting: value, got {type(adapt).__name__}")
    unknown = sorted(set(adapt) - set(settings))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown} under adapt; valid: {sorted(settings)}")
    return {k: coerce(k, v, settings[k].type, where) for k, v in adapt.items()}


def load_yaml(path: str | None) -> dict:
    """RunConfig fields from a YAML file, each checked against its type."""
    if not path:
        return {}
    data = read_yaml(path)
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in {path}; valid: {sorted(fields)}")
    out = {k: coerce(k, v, fields[k].type, str(path)) for k, v in data.items() if k != "adapt"}
    if "adapt" in data:
        out["adapt"] = coerce_settings(data["adapt"] or {}, str(path))
    return out


def build_run_config(args: argparse.Namespace) -> RunConfig:
    """YAML defaults, then command-line flags, then --set AdaptConfig overrides."""
    from zs_llm.config import all_settings, parse_value

    data = load_yaml(args.config)
    valid = {f.name for f in dataclasses.fields(RunConfig)}
    for name in valid - {"adapt"}:
        v = getattr(args, name, None)
        if v is not None:
            data[name] = v
    adapt = dict(data.get("adapt") or {})
    settings = all_settings()
    for item in args.set or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        if k not in settings:
            raise ValueError(f"--set {k}: not a setting of any method; valid: {sorted(settings)}")
        try:
            adapt[k] = parse_value(v, settings[k].type)
        except ValueError as e:
            raise ValueError(f"--set {k}={v}: {e}") from None
    data["adapt"] = adapt
    return RunConfig(**data)


def add_run_args(p: argparse.ArgumentParser) -> None:
    helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(RunConfig)}
    p.add_argument("--config", help="YAML file of RunConfig fields (flags override it)")
    p.add_argument("--model", help=helps["model"])
    p.add_argument("--gguf-file", dest="gguf_file", help=helps["gguf_file"])
    p.add_argument("--dtype", help=helps["dtype"])
    p.add_argument("--device", help=helps["device"])
    p.add_argument("--methods", help="Comma-separated. " + helps["methods"])
    p.add_argument("--datasets", help="Comma-separated. " + helps["datasets"])
    p.add_argument("--limit", type=int, help=helps["limit"])
    p.add_argument("--subset", help=helps["subset"])
    p.add_argument("--data-dir", dest="data_dir", help=helps["data_dir"] + " Or set ZS_LLM_DATA_DIR.")
    p.add_argument("--prompt-style", dest="prompt_style", help=helps["prompt_style"])
    p.add_argument("--prompt-template", dest="prompt_template", help=helps["prompt_template"])
    p.add_argument("--n-samples", dest="n_samples", type=int, help=helps["n_samples"])
    p.add_argument("--batch-size", dest="batch_size", type=int, help=helps["batch_size"])
    p.add_argument("--backend", help=helps["backend"])
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, help=helps["checkpoint_every"])
    p.add_argument("--seed", type=int, help=helps["seed"])
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="AdaptConfig override for every method "
                   "(repeatable), e.g. --set lr=1e-4 --set optimizer=sgd")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="zs-eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run methods on datasets into an output folder (resumable)")
    add_run_args(run)
    run.add_argument("--out", required=True, help="output folder; rerun with the same one to resume")
    run.add_argument("--overwrite", action="store_true", help="delete an output folder holding another configuration")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    rep = sub.add_parser("report", help="write report.md and plots for a run folder")
    rep.add_argument("run_dir", nargs="+", help="a run folder, or several seed runs of one configuration to combine "
                     "(written to --out, default <their common parent>/combined)")
    rep.add_argument("--out", help="output folder of a combined report")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "run":
            cfg = build_run_config(args)
            runner = Runner(cfg, args.out, progress=not args.no_progress, overwrite=args.overwrite)
            out = runner.run()
            if not args.no_report:
                from .report import write_report

                md = write_report(out)
                print(md.read_text())
                print(f"[eval] report: {md}")
        else:
            from .report import write_report

            md = write_report(args.run_dir[0] if len(args.run_dir) == 1 else args.run_dir, args.out)
            print(md.read_text())
            print(f"[eval] report: {md}")
    except (ValueError, KeyError, TypeError, OSError) as e:  # OSError: files, folders, the run lock
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 2
    return 0


def error_line(e: BaseException) -> str:
    """The one line a user error prints."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(str(msg).split()) if msg else type(e).__name__
