from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

from ..config import setting
from ..objective import entropy
from .base import METHODS, Method, MethodConfig


@dataclass
class EMINFConfig(MethodConfig):
    steps: int = setting(3, "Optimisation steps on the logits at each decoding step.", min=0)
    lr: float = setting(0.1, "Learning rate of the logit optimisation.", min=0.0)
    threshold: float = setting(0.3, "Only optimise the logits while their entropy exceeds this (nats).", min=0.0)
    temperature: float = setting(0.1, "Temperature of the softmax inside the entropy being minimised.", min=0.0)


class EntropyMinLogitsProcessor(LogitsProcessor):
    """At each decoding step, rows whose entropy exceeds `threshold` get their logits moved
    `steps` Adam steps of size `lr` down the entropy of softmax(logits / temperature)."""

    def __init__(self, steps: int, lr: float, threshold: float, temperature: float):
        self.steps, self.lr, self.threshold, self.temperature = steps, lr, threshold, temperature
        self.calls = self.optimized = 0

    def __call__(self, input_ids, scores):  # scores (B, V)
        self.calls += 1
        finite = torch.isfinite(scores)
        rows = entropy(scores.masked_fill(~finite, -1e4)) > self.threshold
        if self.steps == 0 or not bool(rows.any()):
            return scores
        self.optimized += int(rows.sum())
        with torch.enable_grad():
            z = scores[rows].float().masked_fill(~finite[rows], -1e4).detach().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=self.lr)
            for _ in range(self.steps):
                opt.zero_grad()
                entropy(z / self.temperature).sum().backward()
                opt.step()
        out = scores.clone()
        out[rows] = z.detach().to(scores.dtype).masked_fill(~finite[rows], float("-inf"))
        return out


@METHODS.register("eminf")
class EMINF(Method):
    """EM-INF (Agarwal et al., 2025): no parameter changes; at each decoding step the logits are
    optimized a few steps to lower their entropy when it exceeds a threshold. Paper: 3 steps,
    lr 0.1, temperature 0.1 inside the entropy. Under greedy decoding it rarely changes the
    argmax; it matters with sampling."""

    name = "eminf"
    batchable = True
    config_class = EMINFConfig

    def logits_processors(self, lm):
        c = self.cfg
        return [EntropyMinLogitsProcessor(c.steps, c.lr, c.threshold, c.temperature)]
