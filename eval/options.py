"""One set of flat options for `python -m eval run` and every recipe, parsed by transformers'
`HfArgumentParser` from the dataclasses that carry the help text: the run itself (`Launch`),
the harness (`RunConfig`), the settings every method shares (`AdaptConfig`) and each method's
own settings (`METHODS[name].config_class`).

A YAML file holds `field: value` lines; `--config FILE` (repeatable) reads one, and flags
(`--field value`, or `--field-name value`) override it:

    model: smollm2-135m-instruct        # RunConfig
    methods: [noadapt, tent, zerosiam]
    lr: 1.0e-4                          # AdaptConfig, given to every method
    alpha: 0.5                          # ZeroSiam's own; methods without it skip it
    out: runs/demo                      # Launch

A name both `RunConfig` and `AdaptConfig` have (`seed`) is the harness's: `--seed N` seeds
everything, the methods included; `--set seed=N` (or `adapt: {seed: N}` in YAML) gives the methods
another. `--set KEY=VALUE` sets any method
setting by name, as the flat flag does.

Every value, from a flag, `--set`, a YAML file or a method spec, is checked by the one check its
field declares (`zs_llm.settings.check_value`: type and range from the dataclass field), so the
same bad value gives the same message whichever way it came in; the message starts with where
it came from. A later `--config` file overrides an earlier one and flags override files, but one
source naming a field twice (a YAML key twice, `lr:` beside `adapt: {lr:}`, `--lr` beside `--set lr=`
with another value) is an error, not a silent choice. A flag repeated on the command line keeps its
last value, as on any command line (a script may append overrides to a base command).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from zs_llm.config import AdaptConfig, check_field
from zs_llm.methods import METHODS, load_methods
from zs_llm.settings import check_fields, check_value, parse_text, setting

from .datasets import DATASETS
from .prompting import PROMPT_STYLES
from .runner import RunConfig


@dataclass
class Launch:
    """Where a run writes and how it reports; not part of the run's configuration hash."""

    out: str | None = field(default=None, metadata={"help": "Run folder; rerun with the same one to resume."})
    overwrite: bool = field(default=False, metadata={"help": "Delete the results of another configuration in --out "
                                                     "first."})
    progress: bool = field(default=True, metadata={"help": "Progress bars (--no_progress: none)."})
    report: bool = field(default=True, metadata={"help": "Write report.md and the plots at the end (--no_report: "
                                                 "skip)."})
    report_to: str = field(default="none", metadata={
        "help": "Log every problem (loss, entropy, divergence, predictor drift, grad norm, running accuracy) and each "
                "stream's verdict to tensorboard (event files in OUT/tensorboard) or wandb (an offline run in "
                "OUT/wandb unless WANDB_MODE=online), as trl's --report_to; needs pip install 'zs_llm[track]'.",
        "choices": ("none", "tensorboard", "wandb")})
    draft_lookup: int = setting(0, "Greedy drafts of a stream decoding alone verify up to this many prompt-lookup "
                                "candidates a pass (ZeroSiamLM.draft_lookup; 2 suits a CPU): faster on repetitive "
                                "text, the model's own greedy choices kept, but from logits that round differently "
                                "(about 1e-6 of their size), so a near-tie can go the other way; 0 keeps drafts "
                                "bit-equal to generate's. Pooled streams do not use it.", min=0, max=64)

    def __post_init__(self):
        check_fields(self)


#: RunConfig fields whose values are registry names: the registries list them (nothing written twice)
REGISTRIES = {"methods": METHODS, "datasets": DATASETS, "prompt_style": PROMPT_STYLES}
#: a YAML config file is a few dozen lines: these bound what reading one may cost (a file of many
#: megabytes, or aliases that expand exponentially, is refused before it is built)
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 100_000


# --- the option table ------------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    name: str
    annotation: Any  # the field's own annotation (a string under `from __future__ import annotations`)
    hint: Any  # the resolved type, for HfArgumentParser
    default: Any
    help: str
    choices: tuple | None
    group: str
    target: str  # "launch", "run", "adapt"
    metadata: Any = None  # the field's metadata: its range, checked by zs_llm.settings.check_value

    def check(self, value: Any, where: str) -> Any:
        """`value` checked against this option's field; errors start with `where`."""
        try:
            return check_value(self.name, value, self.annotation, self.metadata, self.default)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


def _fields(cls) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def options() -> dict[str, Option]:
    """Every flat option, in --help order: the run, the harness, the shared adaptation settings,
    then each method's own (a setting several methods have appears once, naming them)."""
    out: dict[str, Option] = {}

    def add(f, hint, group, target, help_extra=""):
        choices = f.metadata.get("choices")
        reg = REGISTRIES.get(f.name)
        if reg is not None and typing.get_origin(hint) is not list:
            choices = tuple(reg)
        elif reg is not None:
            help_extra += f" Registered: {', '.join(reg)}."
        out[f.name] = Option(f.name, f.type, hint, _default(f), f.metadata.get("help", "") + help_extra,
                             tuple(choices) if choices is not None else None, group, target, f.metadata)

    for f, hint in _fields(Launch):
        add(f, hint, "run", "launch")
    for f, hint in _fields(RunConfig):
        if f.name == "adapt":
            continue
        add(f, hint, "harness (eval.runner.RunConfig)", "run")
    for f, hint in _fields(AdaptConfig):
        if f.name in ("method", "method_args") or f.name in out:
            continue  # the method comes from each spec in --methods; seed: see the module docstring
        add(f, hint, "adaptation, every method (zs_llm.AdaptConfig)", "adapt")
    owners: dict[str, list[str]] = {}
    first: dict[str, tuple[dataclasses.Field, Any, str]] = {}
    for name, cls in METHODS.items():
        for f, hint in _fields(cls.config_class):
            if f.name in out:
                continue
            owners.setdefault(f.name, []).append(name)
            first.setdefault(f.name, (f, hint, cls.config_class.__name__))
    for name, (f, hint, owner_cls) in first.items():
        methods = owners[name]
        group = f"settings of {', '.join(methods)} ({owner_cls})"
        add(f, hint, group, "adapt")
    return out


def _run_names() -> set[str]:
    return {f.name for f in dataclasses.fields(RunConfig)} - {"adapt"}


# --- values ------------------------------------------------------------------------------------
def coerce(name: str, value: Any, annotation: Any, where: str, metadata: Any = None, default: Any = None) -> Any:
    """A config file's value checked against its field (`zs_llm.settings.check_value`), or a
    one-line error naming the file, the field and the fix. Text is read as a command-line value
    is (`parse_text`): PyYAML reads `1e-4` (no dot) as a string, and `a,b` is a list."""
    if isinstance(value, str):
        value = parse_text(value, annotation)
    try:
        return check_value(name, value, annotation, metadata, default)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def coerce_settings(adapt: dict, where: str) -> dict:
    """AdaptConfig settings by name (a YAML `adapt:` mapping), each checked; unknown names listed."""
    from zs_llm.config import all_settings

    settings = all_settings()
    if not isinstance(adapt, dict):
        raise ValueError(f"{where}: adapt must be a mapping of setting: value, got {type(adapt).__name__}")
    unknown = sorted(map(str, set(adapt) - set(settings)))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown} under adapt; valid: {sorted(settings)}")
    return {k: coerce(k, v, settings[k].type, where, settings[k].metadata, _default(settings[k]))
            for k, v in adapt.items()}


def _put_setting(given: dict, name: str, value: Any) -> None:
    """A setting given by its AdaptConfig name: flat, unless the harness has a field of that name."""
    if name in _run_names():
        given.setdefault("adapt", {})[name] = value
    else:
        given[name] = value


class _Refused(Exception):
    """A YAML file the bounded loader will not build (its message lacks only the file name)."""


def _yaml_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """PyYAML's safe loader that refuses a mapping naming a key twice (PyYAML keeps the last)."""

        def construct_mapping(self, node, deep=False):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` keys may be overridden: that is what a merge is for
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:
                    continue  # an unhashable key: the constructor names it
                if first != key_node.start_mark.line + 1:
                    raise _Refused(f"{key!r} is given twice (lines {first} and {key_node.start_mark.line + 1}); "
                                   "keep one")
            return super().construct_mapping(node, deep)

        def construct_yaml_int(self, node):
            digits = str(node.value).lstrip("+-").replace("_", "")
            if len(digits) > 1 and digits[0] == "0" and digits[1].isdigit():  # not 0x / 0o / 0b
                raise _Refused(f"{node.value} (line {node.start_mark.line + 1}) has a leading zero, which YAML reads "
                               "as an octal number; write it without the zero, or quote it")
            return super().construct_yaml_int(node)

    Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_yaml_int)
    return Loader


def _children(node) -> list:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _expanded_size(root) -> int:
    """How many values a composed YAML document builds, each alias counted where it is used (the
    count stops past MAX_YAML_NODES, and at an alias inside its own anchor, whose value never ends)."""
    cap = MAX_YAML_NODES + 1
    sizes: dict[int, int] = {}
    on_path = {id(root)}
    stack = [(root, iter(_children(root)))]
    while stack:
        node, kids = stack[-1]
        kid = next(kids, None)
        if kid is None:
            stack.pop()
            on_path.discard(id(node))
            sizes[id(node)] = min(cap, 1 + sum(sizes[id(k)] for k in _children(node)))
        elif id(kid) in on_path:
            return cap
        elif id(kid) not in sizes:
            on_path.add(id(kid))
            stack.append((kid, iter(_children(kid))))
    return sizes[id(root)]


def read_yaml(path: str | Path) -> dict:
    """The mapping a YAML config file holds, read safely: no Python objects, a key given twice is
    an error, and a file over MAX_YAML_BYTES or one whose aliases expand past MAX_YAML_NODES
    values is refused before it is built. A missing file, bad syntax or another shape is a
    one-line error naming the file (and the line)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist" if not p.exists() else f"config file {p} is a folder")
    if p.stat().st_size > MAX_YAML_BYTES:
        raise ValueError(f"{p} is {p.stat().st_size} bytes, more than a config file's {MAX_YAML_BYTES}; give a file "
                         "of field: value lines")
    loader = None
    try:
        loader = _yaml_loader()(p.read_text(encoding="utf-8"))
        node = loader.get_single_node()
        if node is not None and _expanded_size(node) > MAX_YAML_NODES:
            raise _Refused(f"its aliases expand to more than {MAX_YAML_NODES} values (or into themselves); write "
                           "the values out")
        data = loader.construct_document(node) if node is not None else None
    except UnicodeDecodeError:
        raise ValueError(f"{p} is not UTF-8 text; save the config file as UTF-8") from None
    except _Refused as e:
        raise ValueError(f"{p}: {e}") from None
    except RecursionError:
        raise ValueError(f"{p}: values nested too deeply; a config holds field: value lines") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{p}: invalid YAML{where} ({problem}); fix the syntax (field: value, one per line)") from None
    finally:
        if loader is not None:
            loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{p} must hold field: value lines (a mapping), not a {type(data).__name__}")
    return data


def read_options(path: str | Path) -> dict[str, Any]:
    """A YAML file's options, each checked against its field: unknown names, values of the wrong
    type or out of range are one-line errors naming the file, the field and the fix. An `adapt:`
    mapping (settings by their AdaptConfig names) is read too; a setting given both there and at
    the top level with different values is an error naming both."""
    data = read_yaml(path)
    opts = options()
    unknown = sorted(map(str, set(data) - set(opts) - {"adapt"}))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in {path}; valid fields: {', '.join(sorted(opts))}")
    out: dict[str, Any] = {}
    for k, v in coerce_settings(data.get("adapt") or {}, str(path)).items():
        _put_setting(out, k, v)
    for k, v in data.items():
        if k == "adapt":
            continue
        o = opts[k]
        value = coerce(k, v, o.annotation, str(path), o.metadata, o.default)
        if k in out and out[k] != value:
            raise ValueError(f"{path}: {k} is given twice, as {k}: {value!r} and under adapt: {out[k]!r}; give it "
                             "once")
        out[k] = value
    return out


def merge(given: dict, new: dict) -> dict:
    """`new` over `given`; their `adapt` mappings merge key by key."""
    adapt = {**given.get("adapt", {}), **new.get("adapt", {})}
    given.update(new)
    if adapt:
        given["adapt"] = adapt
    return given


# --- the parser ----------------------------------------------------------------------------------
class _Unset:
    def __repr__(self):
        return "<unset>"


UNSET = _Unset()


class OptionParser(HfArgumentParser):
    """`HfArgumentParser` over the flat options (one argument group per dataclass), with `--config`
    and `--set`, values parsed as the config files parse them, and errors raised as one-line
    `ValueError`s instead of printing usage and exiting."""

    def __init__(self, defaults: dict[str, Any] | None = None, **kw):
        self.opts = options()
        groups: dict[str, list[Option]] = {}
        for o in self.opts.values():
            groups.setdefault(o.group, []).append(o)
        shown = {**{k: o.default for k, o in self.opts.items()}, **(defaults or {})}
        types = []
        for i, (title, opts) in enumerate(groups.items()):
            specs = []
            for o in opts:
                # choices are shown, not enforced by argparse: the field's own check refuses a bad
                # value with the message a YAML file or --set gives
                shown_choices = o.choices and typing.get_origin(o.hint) is not list  # a list's help names them
                meta = {"help": o.help, **({"metavar": "{" + ",".join(map(str, o.choices)) + "}"} if shown_choices
                                           else {})}
                d = shown[o.name]
                f = (field(default_factory=lambda d=d: list(d), metadata=meta) if isinstance(d, list)
                     else field(default=d, metadata=meta))
                specs.append((o.name, o.hint, f))
            cls = dataclasses.make_dataclass(f"_Options{i}", specs)
            cls._argument_group_name = title
            types.append(cls)
        kw.setdefault("allow_abbrev", False)  # `--limi 3` is a typo, not --limit
        super().__init__(types, **kw)
        self.add_argument("--config", action="append", metavar="FILE", help="YAML file of options (repeatable; later "
                          "files and then flags override earlier ones).")
        self.add_argument("--method_module", action="append", metavar="FILE_OR_MODULE", help="A .py file or an "
                          "importable module of methods outside zs_llm/methods (repeatable); its methods join "
                          "--methods and their settings these options. A resume needs it again.")
        self.add_argument("--set", action="append", metavar="KEY=VALUE", help="A method setting by its AdaptConfig "
                          "name (repeatable), e.g. --set lr=1e-4; the same as --KEY VALUE, except that --set seed=N is "
                          "the methods' seed alone (--seed seeds everything, the methods too, unless --set seed=N).")
        for action in self._actions:
            o = self.opts.get(action.dest)
            if o is None:
                continue
            if action.type is not None:
                action.type = _converter(o)
            elif action.option_strings[0].startswith("--no_"):  # the complement HfArgumentParser adds
                action.help, action.default = f"The same as --{o.name} false.", argparse.SUPPRESS

    def error(self, message: str):
        raise ValueError(message)

    def parse(self, argv: list[str]) -> dict[str, Any]:
        """The options `argv` gives (only those: unset ones are absent), `--set` included."""
        if any(a in ("-h", "--help") for a in argv):
            self.parse_args(["--help"])  # prints the help with the defaults in force, and exits
        for a in self._actions:
            if a.dest in self.opts and a.default is not argparse.SUPPRESS:
                a.default = UNSET
        *objs, rest = self.parse_args_into_dataclasses(argv, return_remaining_strings=True, look_for_args_file=False)
        if rest:
            flag = next((a for a in rest if a.startswith("-")), None)
            if flag is not None:
                name = flag.lstrip("-").split("=", 1)[0]
                raise ValueError(f"unknown field --{name}; valid fields: {', '.join(sorted(self.opts))}")
            raise ValueError(f"unexpected argument {rest[0]!r}; use --field value")
        given: dict[str, Any] = {}
        extra = objs.pop() if objs and isinstance(objs[-1], argparse.Namespace) else argparse.Namespace()
        for obj in objs:
            for k, v in vars(obj).items():
                if v is not UNSET:
                    given[k] = self.opts[k].check(_flatten(v) if isinstance(v, list) else v, f"--{k}")
        flags = set(given)  # --set applies after every flag, wherever it stands: a flag it contradicts is an error
        from zs_llm.config import all_settings

        settings = all_settings()
        for item in getattr(extra, "set", None) or []:
            k, eq, text = item.partition("=")
            if not eq:
                raise ValueError(f"--set expects key=value, got {item!r}")
            if k not in settings:
                raise ValueError(f"--set {k}: not a setting of any method; valid: {sorted(settings)}")
            try:
                value = check_field(settings[k], parse_text(text, settings[k].type))
            except ValueError as e:
                raise ValueError(f"--set {k}={text}: {e}") from None
            if k not in _run_names() and k in flags and given[k] != value:
                raise ValueError(f"{k} is given twice, by --{k} {given[k]} and --set {k}={text}; give it once")
            _put_setting(given, k, value)
        return given


def _flatten(items: list) -> list | None:
    out = []
    for x in items:
        if x is None:
            return None  # `--lora_target_modules none`
        out.extend(x if isinstance(x, list) else [x])
    return out


def _converter(o: Option):
    """A flag's text as the value a YAML file would hold (never fails: `OptionParser.parse` checks
    the value as every entry point does)."""

    def convert(text: str):
        return parse_text(text, o.annotation)

    convert.__name__ = o.name
    return convert


def parse_options(argv: list[str] | None = None, base: str | Path | None = None, prog: str | None = None,
                  description: str | None = None) -> dict[str, Any]:
    """The options given: `base` (a YAML file, a recipe's), then each `--config FILE`, then the
    flags. Only what these give is in the result (defaults stay with the dataclasses, so a run's
    configuration records exactly what was set). `--help` lists every option with its help and
    the default in force (after the YAML files) and exits."""
    argv = list(sys.argv[1:] if argv is None else argv)
    known, rest = _ConfigFiles().parse_known_args(argv)
    for source in known.method_module:  # first: its methods' settings are options too
        load_methods(source)
    given = read_options(base) if base else {}
    for path in known.config:
        merge(given, read_options(path))
    shown = {k: v for k, v in given.items() if k != "adapt"}
    parser = OptionParser(shown, prog=prog, description=description, formatter_class=_HelpFormatter)
    return merge(given, parser.parse(rest))


class _ConfigFiles(argparse.ArgumentParser):
    """Picks the `--config FILE`s and `--method_module`s out of a command line, before the options
    they set are parsed."""

    def __init__(self):
        super().__init__(add_help=False, allow_abbrev=False)
        self.add_argument("--config", action="append", default=[])
        self.add_argument("--method_module", "--method-module", action="append", default=[])

    def error(self, message: str):
        if "--method" in message:
            raise ValueError(f"--method_module needs a .py file or a module name ({message})")
        raise ValueError(f"--config needs a YAML file ({message})")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def run_config(given: dict[str, Any]) -> tuple[RunConfig, Launch]:
    """(RunConfig, Launch) from parsed options; every method spec is checked against the settings
    given, before any model loads."""
    opts = options()
    unknown = sorted(map(str, set(given) - set(opts) - {"adapt"}))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; valid fields: {', '.join(sorted(opts))}")
    run = {k: v for k, v in given.items() if k in opts and opts[k].target == "run"}
    adapt = {**given.get("adapt", {}), **{k: v for k, v in given.items() if k in opts and opts[k].target == "adapt"}}
    launch = Launch(**{k: v for k, v in given.items() if k in opts and opts[k].target == "launch"})
    cfg = RunConfig(**run, adapt=adapt)  # checks the overrides and resolves each method spec, once
    return cfg, launch


def to_options(cfg: RunConfig, launch: Launch | None = None) -> dict[str, Any]:
    """The flat options that give `cfg` back (`run_config(to_options(cfg))[0] == cfg`)."""
    out: dict[str, Any] = {}
    if launch is not None:
        out.update({k: v for k, v in dataclasses.asdict(launch).items() if v != _default(Launch.__dataclass_fields__[k])})
    out.update({k: v for k, v in cfg.to_dict().items() if k != "adapt"})
    for k, v in cfg.adapt.items():
        _put_setting(out, k, v)
    return out


def dump_yaml(cfg: RunConfig, launch: Launch | None = None) -> str:
    """`to_options` as a flat YAML file: a valid --config for `python -m eval run` and for every recipe."""
    import yaml

    return yaml.safe_dump(to_options(cfg, launch), sort_keys=False)
