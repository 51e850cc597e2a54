from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import setting
from ..objective import head_loss
from .base import METHODS, LossBatch, Method, MethodConfig


@dataclass
class SLOTConfig(MethodConfig):
    steps: int = setting(5, "Optimisation steps of the per-prompt vector (paper: 5).", min=0)
    lr: float = setting(0.1, "AdamW learning rate of the per-prompt vector (paper: 0.1).", min=0.0)


@METHODS.register("slot")
class SLOT(Method):
    """SLOT (Hu et al., 2025): a per-prompt vector delta (H,) added to the final hidden state
    before the head, optimized on the prompt's own next-token cross-entropy, then used for
    the whole generation of that prompt. Reset to zero for every prompt; no LoRA, and the
    backbone's hidden states are computed once per prompt. Paper: 5 AdamW steps, lr 0.1."""

    name = "slot"
    trains = ("slot",)
    loop_update = False
    config_class = SLOTConfig

    def __init__(self, config):
        super().__init__(config)
        self.delta: torch.Tensor | None = None

    def token_loss(self, online_logits, target_logp, labels, target_p=None):
        return F.cross_entropy(online_logits, labels, reduction="none"), None, {}

    def _ensure(self, lm):
        if self.delta is None:
            self.delta = torch.zeros(lm.hidden_size, device=lm.device, dtype=torch.float32)
        return self.delta

    def on_problem_start(self, lm, prompt_ids):
        delta = self._ensure(lm)
        delta.zero_()
        if prompt_ids.shape[1] < 2:
            return {"slot_loss": None}
        batch = LossBatch(prompt_ids, torch.arange(prompt_ids.shape[1] - 1, device=lm.device), prompt_ids[0, 1:])
        with torch.no_grad():
            z = lm.features(batch.input_ids, batch.positions)  # (N, H), computed once
        delta.requires_grad_(True)
        opt = torch.optim.AdamW([delta], lr=self.cfg.lr, weight_decay=1e-8, eps=1e-5)
        first = last = None
        for _ in range(self.cfg.steps):
            opt.zero_grad()
            loss = head_loss((z.float() + delta).to(z.dtype), None, lm.head_logits, self.token_loss,
                             labels=batch.labels, chunk_size=self.config.chunk_size)
            loss.backward()
            opt.step()
            last = float(loss.detach())
            first = last if first is None else first
        delta.requires_grad_(False)
        return {"slot_loss_first": first, "slot_loss_last": last, "slot_norm": float(delta.norm())}

    def head_pre_hook(self, lm):
        delta = self._ensure(lm)
        return lambda h: (h.float() + delta).to(h.dtype)

    def extra_state(self):
        return {} if self.delta is None else {"slot_delta": self.delta}
