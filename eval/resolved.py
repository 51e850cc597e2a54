"""A run's methods resolved once: each spec of `--methods` (`zerosiam+clip:alpha=0`) with the
run's overrides (`--lr`, `--set`, YAML) is parsed into one `ResolvedMethod`, by the label its
rows carry. `RunConfig` builds them when it is made; the runner runs them and records their
settings in run.json's `adapt_configs`, which the report reads. Nothing parses a spec again."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from zs_llm.config import AdaptConfig


def parse_method_spec(spec: str, base: dict | None = None) -> AdaptConfig:
    """`zerosiam+clip:alpha=0` -> its AdaptConfig (see `AdaptConfig.from_spec`)."""
    return AdaptConfig.from_spec(spec, base)


def method_label(spec: str, cfg: AdaptConfig) -> str:
    """The name a method's rows and tables carry: the spec with every add-on its config turns on
    written into it (`--set guard=true` makes `tent` read `tent+guard`), so a table never mixes
    guarded or clipped methods with plain ones silently."""
    _, sep, rest = spec.partition(":")
    return cfg.label() + sep + rest


def _adapts(ac: AdaptConfig) -> bool:
    from zs_llm.methods import METHODS

    m = METHODS[ac.method]
    return bool(m.trains) and m.loop_update


@dataclass(frozen=True)
class ResolvedMethod:
    """One method of a run as it runs: the spec it was given, the label its rows carry, its
    `AdaptConfig`, and that config's effective settings (the method's default lr and Nesterov
    choice filled in, every own setting present), as run.json records them."""

    spec: str
    label: str
    config: AdaptConfig
    settings: MappingProxyType  # AdaptConfig.to_dict(), read-only

    @property
    def adapts(self) -> bool:
        """Whether the method updates weights along its stream (an optimizer step after each draft)."""
        return _adapts(self.config)

    @property
    def online(self) -> bool:
        """An adapting stream whose state carries over problems: sequential, checkpointed, exported."""
        return self.config.schedule == "online" and self.adapts

    def record(self) -> dict[str, Any]:
        """The settings as a plain dict (run.json's `adapt_configs[label]`)."""
        return dict(self.settings)


def resolve_methods(specs: list[str], overrides: dict[str, Any]) -> list[ResolvedMethod]:
    """Each spec parsed once, with `overrides` applied before its own `key=value`s, in the order
    given (two that come out under one label are the runner's to refuse: `by_label`)."""
    out = []
    for spec in specs:
        ac = AdaptConfig.from_spec(spec, overrides)
        out.append(ResolvedMethod(spec, method_label(spec, ac), ac, MappingProxyType(ac.to_dict())))
    return out


def by_label(methods: list[ResolvedMethod]) -> dict[str, ResolvedMethod]:
    """`methods` by the label their rows carry; two under one label are an error."""
    out: dict[str, ResolvedMethod] = {}
    for m in methods:
        if m.label in out:
            raise ValueError(f"method {m.spec!r} repeats {m.label!r} in methods; list each once")
        out[m.label] = m
    return out
