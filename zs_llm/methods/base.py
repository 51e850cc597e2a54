"""The interface every test-time method implements, and the registry that holds them.

A method is one small class: the parameters it updates (`trains`), the loss it minimizes
per token (`token_loss`), and optional hooks where it acts at generation time. The
adaptation loop (`zs_llm.adapt`) drives every method the same way.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..objective import head_loss
from ..registry import Registry
from ..settings import check_fields

if TYPE_CHECKING:
    from ..config import AdaptConfig
    from ..model import ZeroSiamLM


class MethodRegistrationError(TypeError):
    """A method the registry refuses (its message is the one line that says why and what to rename)."""


class MethodRegistry(Registry):
    """The method registry: a `Registry` that also refuses a method whose own setting is named like
    a shared field. A spec's `key=value` goes to the shared field of that name, so such a setting
    could never be set (`mymethod:steps=5` would set the shared `steps`). The shared names come
    from `zs_llm.config` once `AdaptConfig` exists (`reserve`); methods registered before that
    (this package's own files, imported while `AdaptConfig` is being defined) are checked then."""

    reserved: frozenset[str] | None = None

    def __setitem__(self, name, cls):
        if name not in self and self.reserved is not None:
            self._check(name, cls)
        super().__setitem__(name, cls)

    def __missing__(self, name):
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(self))} (a method outside "
                       "zs_llm/methods: --method_module FILE_OR_MODULE, or an entry point in the group "
                       f"{ENTRY_POINT_GROUP!r})")

    def reserve(self, names) -> None:
        """Refuse, from now on and among those registered, own settings named like `names`."""
        self.reserved = frozenset(names)
        for name, cls in self.items():
            self._check(name, cls)

    def _check(self, name, cls) -> None:
        config_class = getattr(cls, "config_class", None)
        if config_class is None or not dataclasses.is_dataclass(config_class):
            raise MethodRegistrationError(f"method {name!r} ({_where(cls)}): config_class must be a dataclass (a "
                                          f"subclass of zs_llm.methods.MethodConfig), got {config_class!r}")
        clash = sorted(f.name for f in dataclasses.fields(config_class) if f.name in self.reserved)
        if clash:
            raise MethodRegistrationError(f"method {name!r} ({_where(cls)}): its own setting(s) {clash} are named "
                                          f"like shared AdaptConfig field(s), which `{name}:{clash[0]}=...` would set "
                                          f"instead; rename them in {config_class.__name__}")


def _where(cls) -> str:
    module = sys.modules.get(getattr(cls, "__module__", ""), None)
    return getattr(module, "__file__", None) or getattr(cls, "__module__", "?")


#: the entry point group of methods installed by other packages (`[project.entry-points."zs_llm.methods"]`)
ENTRY_POINT_GROUP = "zs_llm.methods"
METHODS = MethodRegistry("method")


@dataclass
class MethodConfig:
    """A method's own settings. A method declares a subclass beside its class (fields made with
    `zs_llm.config.setting`, help text included) and names it in `config_class`; the settings
    travel in `AdaptConfig.method_args` and are read as `method.cfg.<name>`. Each field's range is
    in its metadata (`setting(..., min=0.0)`), checked here as everywhere (`zs_llm.settings`)."""

    def __post_init__(self):
        check_fields(self)


@dataclass
class LossBatch:
    """One sequence to adapt on: the rows of hidden states the loss reads."""

    input_ids: torch.Tensor  # (1, T)
    positions: torch.Tensor  # (N,) positions whose next-token distribution enters the loss
    labels: torch.Tensor  # (N,) the token that followed each position (used by CE-type losses)
    #: (N, V) the target branch's logits at `positions` when already known (the draft's, while
    #: the state is the one that generated it); a method with a predictor then skips their head matmul
    target_logits: torch.Tensor | None = None
    #: (N, H) the final hidden states at `positions` when already computed (by a pooled forward
    #: over several streams' sequences, `zs_llm.pool`); otherwise the loss runs the backbone
    features: torch.Tensor | None = None


def no_step_without_selection(lm: ZeroSiamLM, stats: dict) -> dict:
    """EATA's and DeYO's rule: the optimizer steps only on a batch with a selected row, so with
    none selected the gradients are dropped and momentum does not move the weights either."""
    if stats.get("tokens_selected", 1) == 0:
        for p in lm.trainable_parameters():
            p.grad = None
    return stats


class Method:
    """Base class. Subclasses set `trains` and override `token_loss` (or `backward`)."""

    name: ClassVar[str] = "base"
    #: which parameter sets the optimizer updates: any of "lora", "predictor"
    trains: ClassVar[tuple[str, ...]] = ()
    #: the online branch goes through the predictor (the target branch never does)
    uses_predictor: ClassVar[bool] = False
    #: the adaptation loop steps the optimizer after the draft (SLOT adapts per prompt instead)
    loop_update: ClassVar[bool] = True
    #: generation-only methods can batch a whole set through `generate`
    batchable: ClassVar[bool] = False
    #: the method's own settings
    config_class: ClassVar[type] = MethodConfig
    #: the LoRA learning rate when `AdaptConfig.lr` is None (the protocol's selection, docs/protocol.md)
    default_lr: ClassVar[float] = 3e-4
    #: SGD with Nesterov momentum when `AdaptConfig.nesterov` is None (as the method's official code)
    nesterov: ClassVar[bool] = False
    #: `extra_state` entries that may legitimately hold non-finite values, and which kinds
    #: (`zs_llm.checkpoint.NONFINITE_KINDS`: "nan", "+inf", "-inf"), e.g. {"sar_ema": ("nan",)}
    #: for a NaN that marks "nothing recorded yet". Checkpoints and saved adapters accept exactly
    #: these; any other non-finite value is refused as damage.
    nonfinite_state: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        from ..checkpoint import NONFINITE_KINDS

        for name, kinds in cls.nonfinite_state.items():
            if isinstance(kinds, str) or not set(kinds) <= set(NONFINITE_KINDS):
                raise TypeError(f"{cls.__name__}.nonfinite_state[{name!r}] = {kinds!r}; give a tuple of "
                                f"{NONFINITE_KINDS}")

    def __init__(self, config: AdaptConfig):
        self.config = config

    @property
    def cfg(self) -> Any:
        """This method's settings: an instance of `config_class`."""
        return self.config.method_config

    @property
    def adapts(self) -> bool:
        return bool(self.trains)

    # --- the loss -----------------------------------------------------------------------
    def token_loss(self, online_logits, target_logp, labels, target_p=None):
        """(c, V) online logits, (c, V) target log-probabilities (detached), (c,) labels,
        (c, V) target probabilities (their exponent, given to spare recomputing it) ->
        (per-token loss (c,), weight (c,) | None, extras[, d loss / d online logits (c, V)]).
        Return the 4th element when the gradient has a closed form; otherwise the loss must
        carry an autograd graph to `online_logits`. An extra named like a `logit_stats` entry
        (e.g. "entropy") must be that statistic of the target logits: it replaces the
        loop's own computation. `target_logp` is the loop's scratch: nothing reads it after
        the call, so the method may overwrite it once it has read what it needs (Tent and
        ZeroSiam build their gradient in it); `target_p` must stay intact."""
        raise NotImplementedError(f"method {self.name!r} defines no loss")

    def loss(self, lm: ZeroSiamLM, batch: LossBatch, stats: dict | None = None) -> torch.Tensor:
        z = lm.features(batch.input_ids, batch.positions) if batch.features is None else batch.features  # (N, H)
        z_online = lm.predictor(z) if self.uses_predictor else z
        z_target = z.detach() if self.uses_predictor else None
        known = batch.target_logits if self.uses_predictor else None
        return head_loss(z_online, z_target, lm.head_logits, self.token_loss, labels=batch.labels,
                         chunk_size=self.config.chunk_size, stats=stats, target_logits=known)

    def backward(self, lm: ZeroSiamLM, batch: LossBatch) -> dict:
        """Compute the loss and leave gradients in the trained parameters. Returns stats."""
        stats: dict = {}
        loss = self.loss(lm, batch, stats)
        if loss.requires_grad:
            loss.backward()
        stats["loss"] = float(loss.detach())
        return stats

    # --- generation-time hooks ----------------------------------------------------------
    def on_problem_start(self, lm: ZeroSiamLM, prompt_ids: torch.Tensor) -> dict:
        """Called once per problem before the draft (SLOT optimizes its vector here)."""
        return {}

    def logits_processors(self, lm: ZeroSiamLM) -> list:
        """Extra `transformers` logits processors applied while generating (EM-INF)."""
        return []

    def head_pre_hook(self, lm: ZeroSiamLM):
        """A function added to the hidden state before the head at generation (SLOT), or None."""
        return None

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Tensors beyond LoRA and predictor that `reset()` and checkpoints must cover."""
        return {}

    def attach(self, lm: ZeroSiamLM) -> None:
        """Called once by the model that runs this method, before its first snapshot: state sized
        by the model (EATA's mean of probabilities over the vocabulary) is allocated here, so that
        `extra_state` has its final shapes from the start."""
