from dataclasses import dataclass

import torch

from ..objective import FAST_OBJECTIVES, _dot, eata_redundant, eata_weights
from ..settings import setting
from .base import METHODS, Method, MethodConfig, no_step_without_selection

#: the momentum of EATA's moving mean of probabilities (`update_model_probs` in its eata.py)
MEAN_MOMENTUM = 0.9


@dataclass
class EATAConfig(MethodConfig):
    filter_margin: float = setting(0.4, "Reliable tokens: entropy < E0 = filter_margin * ln(vocab), weighted "
                                   "exp(E0 - H) (official: E0 = 0.4 * ln 1000 on ImageNet).", min=0.0)
    d_margin: float | None = setting(0.05, "Redundant tokens: |cos(p, moving mean of the selected tokens' p)| >= "
                                     "d_margin are dropped (official 0.05); None turns the filter off.", min=0.0)


class EATASelection:
    """EATA's selection of token rows (`forward_and_adapt_eata` in mr-eggplant/EATA `eata.py`),
    shared by `eata` and `zerosiam+eata`. A row is selected when the entropy of its prediction
    is below E0 = `filter_margin * ln V` and, with `d_margin` set, when its probabilities are not
    redundant: |cos(p, m)| < `d_margin`, m the moving mean (momentum 0.9) of the probabilities of
    the rows selected at earlier steps; each step then moves m toward the mean of its own selected
    rows (the first step, with no m yet, sets m to the mean of its reliable rows). A selected row's
    loss is weighted exp(E0 - H); the loss is the weighted sum over the number selected, and with
    none selected no optimizer step is taken (no momentum step either).

    Token rows stand for images: one step's rows (a problem's response) are one batch, compared
    with the mean from earlier problems, not with each other; a token whose prediction resembles
    what recent problems predicted (a digit, a space, "The") is redundant. The mean is method
    state (checkpointed, restored by a reset; the official reset keeps it)."""

    def __init__(self, config):
        super().__init__(config)
        self.mean_probs: torch.Tensor | None = None  # (V,), allocated by attach (or the first rows seen)
        self._kept_sum: torch.Tensor | None = None  # (V,) this step's selected probabilities, summed
        self._kept_n = 0.0

    def attach(self, lm):
        super().attach(lm)
        if self.cfg.d_margin is not None:
            self.mean_probs = torch.zeros(lm.head.weight.shape[0], device=lm.head.weight.device)

    def _mean(self, like: torch.Tensor) -> torch.Tensor:
        if self.mean_probs is None:  # zeros: no mean recorded yet (a mean of probabilities sums to 1)
            self.mean_probs = torch.zeros(like.shape[-1], device=like.device)
        return self.mean_probs

    def extra_state(self):
        state = super().extra_state()
        if self.mean_probs is not None:
            state["eata_mean_probs"] = self.mean_probs
        return state

    def eata_select(self, target_logp, target_p) -> tuple[torch.Tensor, dict]:
        """(c, V) log-probabilities and probabilities of the predictions -> (weights (c,), 0 off the
        selection; extras). Reads `target_logp` only: call it before anything overwrites it."""
        ent = -_dot(target_p, target_logp)  # (c,)
        coeff = eata_weights(target_logp, self.cfg.filter_margin, ent)  # (c,) 0 off the reliable rows
        extras = {}
        if self.cfg.d_margin is not None:
            mean = self._mean(target_p)
            if bool(mean.any()):
                redundant = eata_redundant(target_p, mean, self.cfg.d_margin) & (coeff > 0)
                coeff = coeff.masked_fill(redundant, 0.0)
                extras["eata_redundant"] = redundant.float()
            kept = (coeff > 0).to(target_p.dtype)  # (c,)
            if self._kept_sum is None:
                self._kept_sum = torch.zeros_like(mean)
            self._kept_sum += kept @ target_p  # (V,)
            self._kept_n += float(kept.sum())
        return coeff, extras

    def backward(self, lm, batch):
        self._kept_sum, self._kept_n = None, 0.0
        stats = super().backward(lm, batch)
        if self._kept_n > 0:  # the mean moves toward this step's selected rows (update_model_probs)
            new = self._kept_sum / self._kept_n
            with torch.no_grad():
                if bool(self.mean_probs.any()):
                    self.mean_probs.mul_(MEAN_MOMENTUM).add_(new, alpha=1 - MEAN_MOMENTUM)
                else:
                    self.mean_probs.copy_(new)
        self._kept_sum = None
        return no_step_without_selection(lm, stats)


@METHODS.register("eata")
class EATA(EATASelection, Method):
    """EATA (Niu et al., ICML 2022) as its official code runs it without the Fisher term (the
    repository's `--algorithm eta`, `forward_and_adapt_eata` in mr-eggplant/EATA `eata.py`):
    entropy of the predictions on the rows `EATASelection` keeps (reliable, not redundant),
    weighted exp(E0 - H), summed and divided by the number kept; SGD momentum 0.9, no step on a
    batch with no row kept.

    Differs from the official code: no Fisher regularizer (the `eata` algorithm adds
    2000 * sum F (theta - theta0)^2, F estimated from 2000 clean source images with their
    pseudo-labels): an LLM's test stream comes with no source set of its own, and the term only
    guards against forgetting over long streams. E0 is a fraction of ln(vocabulary), as the
    official 0.4 * ln 1000 is of ImageNet's; the redundancy filter runs on token rows
    (`EATASelection`) with the official d_margin 0.05, set for 1000 classes and not measured here.
    A selected token's weight reaches exp(0.4 ln V), about 75 at SmolLM2's 49,152 tokens (16 on
    ImageNet)."""

    name = "eata"
    trains = ("lora",)
    config_class = EATAConfig

    def token_loss(self, online_logits, target_logp, labels, target_p=None):
        q = target_logp.exp() if target_p is None else target_p
        coeff, extras = self.eata_select(target_logp, q)  # before the entropy builds its gradient in target_logp
        value, grad = FAST_OBJECTIVES["entropy"](target_logp, q, inplace=True)
        # the coefficient goes into the loss; the weight only selects, so the mean is over selected rows
        return value * coeff, (coeff > 0).float(), {"entropy": value, **extras}, grad.mul_(coeff.unsqueeze(-1))
