from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..objective import head_loss
from ..settings import MAX_STEPS, setting
from .base import METHODS, LossBatch, Method, MethodConfig


@dataclass
class SLOTConfig(MethodConfig):
    delta_steps: int = setting(5, "Optimisation steps of the per-prompt vector (paper: 5).", min=0, max=MAX_STEPS)
    delta_lr: float = setting(0.1, "AdamW learning rate of the per-prompt vector (paper: 0.1).", min=0.0)
    delta_weight_decay: float = setting(1e-8, "AdamW weight decay of the vector (official Hugging Face code: 1e-8).",
                                        min=0.0)
    adam_eps: float = setting(1e-5, "AdamW epsilon (official Hugging Face code: 1e-5).", min=0.0)
    adam_beta2: float = setting(0.999, "AdamW second-moment decay (official Hugging Face code: torch's 0.999).",
                                min=0.0, lt=1.0)


@METHODS.register("slot")
class SLOT(Method):
    """SLOT (Hu et al., 2025): a per-prompt vector delta (H,) added to the final hidden state
    (after the final norm) before the head, optimized on the prompt's own next-token
    cross-entropy (mean over the prompt's positions), then added for the whole generation of
    that prompt, its first token included. As the official Hugging Face code
    (`modeling_qwen2_slot.py` in maple-research-lab/SLOT, run by `run.sh`): a new zero vector
    and a new AdamW (lr 0.1, weight decay 1e-8, eps 1e-5, betas (0.9, 0.999)) for every prompt,
    5 steps; the backbone's hidden states are computed once per prompt (no gradient reaches
    it); no LoRA.

    Differs from the official code: the vector is fp32 (the official one takes the hidden
    states' dtype, bf16 on a bf16 model) and the loss is computed in fp32. The repository's
    vLLM runner for AIME / MATH-500 / GPQA hand-writes Adam with betas (0.9, 0.95), eps 1e-6,
    weight decay 1e-5, and averages the gradient over positions once more (1/N smaller); the
    first three are settings here (`adam_beta2`, `adam_eps`, `delta_weight_decay`), the 1/N is not."""

    name = "slot"
    trains = ("slot",)
    loop_update = False
    config_class = SLOTConfig

    def __init__(self, config):
        super().__init__(config)
        # per-prompt scratch, zeroed at each problem's start: no state outlives a problem, so none
        # is in `extra_state` (a checkpoint or a save taken after a problem loads into a fresh SLOT)
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
        c = self.cfg
        opt = torch.optim.AdamW([delta], lr=c.delta_lr, weight_decay=c.delta_weight_decay, eps=c.adam_eps,
                                betas=(0.9, c.adam_beta2))
        first = last = None
        for _ in range(c.delta_steps):
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
