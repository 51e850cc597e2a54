import math
import re
from dataclasses import dataclass

import torch

from ..objective import FAST_OBJECTIVES, head_loss
from ..settings import setting
from .base import METHODS, Method, MethodConfig


@dataclass
class SARConfig(MethodConfig):
    filter_margin: float = setting(0.4, "Reliable tokens: entropy < filter_margin * ln(vocab) (official: 0.4 * ln "
                                   "1000 on ImageNet's 1000 classes).", min=0.0)
    rho: float = setting(0.05, "Radius of the sharpness-aware perturbation (official: 0.05).", min=0.0)
    reset_constant: float | None = setting(0.2, "Model recovery: restore the adapters and the optimizer to their "
                                           "initial state when the moving average of the second pass's loss falls "
                                           "below this (official: 0.2); None disables.", min=0.0)
    frozen_top_fraction: float = setting(0.25, "Leave the adapters of this top fraction of the decoder layers "
                                         "unchanged (official: the top quarter, layer4 of ResNet-50 or blocks 9-11 "
                                         "of ViT-B).", min=0.0, max=1.0)


def top_layer_parameters(named, n_layers: int | None, fraction: float) -> list[torch.nn.Parameter]:
    """The parameters of `named` ((name, parameter) pairs) whose layer, the first number in the
    name (`model.layers.17.self_attn...`), is in the top `fraction` of `n_layers` layers
    (rounded half up). Without `n_layers`, the largest layer index seen + 1."""
    layer = {n: int(m.group(1)) for n, _ in named if (m := re.search(r"\.(\d+)\.", n))}
    if not layer or fraction <= 0:
        return []
    n = n_layers or max(layer.values()) + 1
    first = n - int(fraction * n + 0.5)
    return [p for name, p in named if layer.get(name, -1) >= first]


@METHODS.register("sar")
class SAR(Method):
    """SAR (Niu et al., ICLR 2023), as its official code runs it (`forward_and_adapt_sar` in
    mr-eggplant/SAR `sar.py`, with `sam.py`): entropy on the reliable tokens (entropy below
    `filter_margin * ln K`); SAM: the weights climb `rho` along the normalized gradient, a
    second pass at that point keeps the tokens that were reliable in the first pass AND are
    still reliable there, and its gradient is applied at the original weights by the optimizer
    (SGD momentum 0.9), which steps even when no token is kept (momentum alone). Model
    recovery: an exponential moving average (0.9) of the second pass's loss, updated when that
    loss exists; when it is below `reset_constant` (0.2) after a step, the adapters and the
    optimizer state return to their initial values (`sar_recovered` in the step's stats). As in
    the official code the average itself survives the reset, so a low average resets again
    until new losses lift it.

    LLM equivalents of image-specific choices: the margin is a fraction of ln(vocabulary)
    (official 0.4 * ln 1000); the official code leaves the top quarter of the network
    unadapted, here the LoRA adapters of the top quarter of the decoder layers
    (`frozen_top_fraction`); the official code adapts normalization affine parameters, here
    LoRA as every LLM method.
    """

    default_lr = 3e-3  # the selection of the paper protocol (docs/protocol.md)

    name = "sar"
    trains = ("lora",)
    config_class = SARConfig
    nonfinite_state = {"sar_ema": ("nan",)}  # NaN: no second-pass loss recorded yet

    def __init__(self, config):
        super().__init__(config)
        self.ema = torch.tensor(float("nan"), dtype=torch.float64)  # NaN: no loss recorded yet
        self._kept: list[torch.Tensor] | None = None
        self._frozen: set[int] | None = None

    def extra_state(self):
        return {"sar_ema": self.ema}

    def token_loss(self, online_logits, target_logp, labels, target_p=None):
        q = target_logp.exp() if target_p is None else target_p
        value, grad = FAST_OBJECTIVES["entropy"](target_logp, q, inplace=True)
        w = (value < self.cfg.filter_margin * math.log(online_logits.shape[-1])).float()  # (c,) reliable
        if self._kept is not None:
            self._kept.append(w)
        return value, w, {"entropy": value}, grad

    def loss(self, lm, batch, stats=None, mask=None):
        z = lm.features(batch.input_ids, batch.positions)  # (N, H)
        return head_loss(z, None, lm.head_logits, self.token_loss, mask=mask, labels=batch.labels,
                         chunk_size=self.config.chunk_size, stats=stats)

    def _frozen_ids(self, lm) -> set[int]:
        if self._frozen is None:
            hf_config = getattr(getattr(lm, "hf", None), "config", None)
            n_layers = getattr(hf_config, "num_hidden_layers", None) or getattr(hf_config, "n_layer", None)
            top = top_layer_parameters(lm.named_trainable(), n_layers, self.cfg.frozen_top_fraction)
            self._frozen = {id(p) for p in top}
        return self._frozen

    def _pass(self, lm, batch, params, mask=None) -> dict:
        stats: dict = {}
        loss = self.loss(lm, batch, stats, mask)
        if loss.requires_grad:
            loss.backward()
        frozen = self._frozen_ids(lm)
        for p in params:
            if id(p) in frozen:
                p.grad = None  # not adapted: outside the perturbation's norm and the optimizer's step
        stats["loss"] = float(loss.detach())
        return stats

    def backward(self, lm, batch):
        c = self.cfg
        params = [p for p in lm.trainable_parameters() if p.requires_grad]
        self._kept = []
        try:
            first = self._pass(lm, batch, params)
            keep = torch.cat(self._kept)  # (N,) reliable at the current weights
        finally:
            self._kept = None
        # SAM's first step: climb rho along the gradient, normalized over every adapted tensor
        live = [p for p in params if p.grad is not None]
        norm = torch.sqrt(sum(p.grad.float().pow(2).sum() for p in live)) if live else torch.zeros(())
        start = [p.detach().clone() for p in live]
        with torch.no_grad():
            for p in live:
                p.add_(p.grad * (c.rho / (norm + 1e-12)).to(p.dtype))
                p.grad = None
        second = self._pass(lm, batch, params, mask=keep)  # kept: reliable in both passes
        with torch.no_grad():
            for p, s in zip(live, start):
                p.copy_(s)
        stats = {**first, "loss": second["loss"], "loss_first_pass": first["loss"],
                 "tokens_selected": second["tokens_selected"], "tokens_selected_first": first["tokens_selected"]}
        if second["tokens_selected"] > 0 and not math.isnan(second["loss"]):
            prev = float(self.ema)
            self.ema.fill_(second["loss"] if math.isnan(prev) else 0.9 * prev + (1 - 0.9) * second["loss"])
        ema = float(self.ema)
        stats["sar_ema"] = None if math.isnan(ema) else ema
        stats["sar_recovered"] = c.reset_constant is not None and ema < c.reset_constant  # False while NaN
        if stats["sar_recovered"]:
            # the official code steps, then reloads the initial state: the same as reloading and not stepping
            lm.restore(lm._initial)
            self.ema.fill_(ema)
            for p in params:
                p.grad = None
        return stats
