from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor

from ..objective import eminf_rows
from ..settings import MAX_STEPS, setting
from .base import METHODS, Method, MethodConfig


@dataclass
class EMINFConfig(MethodConfig):
    logit_steps: int = setting(3, "Adam steps on the logits at each decoding step (official script: 3).", min=0,
                               max=MAX_STEPS)
    logit_lr: float = setting(0.1, "Adam learning rate of the logit optimisation (official: 0.1).", min=0.0)
    threshold: float = setting(0.3, "Stop optimising a row as soon as its entropy falls below this, in nats "
                               "(official: 0.3).", min=0.0)
    kl_weight: float = setting(0.05, "Weight of KL(p0 || p), p0 the step's starting distribution (official script: "
                               "0.05; the code's fallback 0.001).", min=0.0)


class EntropyMinLogitsProcessor(LogitsProcessor):
    """At each decoding step, each row's logits z take up to `steps` Adam steps (lr `lr`) on
    `H(p) + kl_weight * KL(p0 || p)`, p = softmax(z) at temperature 1, p0 = the row's starting
    distribution, H = -sum p log(p + 1e-12); before every step a row whose H is below
    `threshold` stops (and is left as it is). Rows are independent problems; the sampling
    temperature and other warpers apply afterwards."""

    def __init__(self, steps: int, lr: float, threshold: float, kl_weight: float):
        self.steps, self.lr, self.threshold, self.kl_weight = steps, lr, threshold, kl_weight
        self.calls = self.optimized = self.adam_steps = 0

    def __call__(self, input_ids, scores):  # scores (B, V)
        self.calls += 1
        if self.steps == 0:
            return scores
        finite = torch.isfinite(scores)
        # masked entries (-inf) as a finite floor: probability 0, zero gradient, so Adam leaves them
        z0 = scores.float().masked_fill(~finite, -1e4)  # (B, V)
        logp0 = F.log_softmax(z0, -1)
        out = z0.clone()
        z = z0.clone()  # the rows Adam moves; a row's result is copied to `out` when it stops
        opt = torch.optim.Adam([z], lr=self.lr)
        live = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
        for step in range(self.steps):
            _, h, grad = eminf_rows(z, logp0, self.kl_weight)
            stop = live & (h < self.threshold)
            out[stop] = z[stop]
            live &= ~stop
            if not bool(live.any()):
                break
            if step == 0:
                self.optimized += int(live.sum())
            self.adam_steps += int(live.sum())
            z.grad = grad  # stopped rows move too, but their result is already in `out`
            opt.step()
        out[live] = z[live]
        return out.to(scores.dtype).masked_fill(~finite, float("-inf"))


@METHODS.register("eminf")
class EMINF(Method):
    """EM-INF (Agarwal et al., 2025): no parameter changes; at each decoding step the logits are
    optimized a few steps to lower their entropy, as in the official code (`ent_sample` in
    `min_entropy.py` / `em_inf_utils.py` of the EM_PT repository, run by `em_inf_eval.sh`):
    Adam (lr 0.1) for up to 3 steps on the entropy at temperature 1 plus 0.05 * KL(p0 || p),
    stopping as soon as the entropy falls below 0.3 nats; then the usual processors and
    warpers. The official runs then sample at temperature 0.1 (`AdaptConfig.temperature`
    here, shared with every method): each Adam step moves every logit by about lr in the
    direction of its entropy gradient, so the most likely tokens all rise together and greedy
    decoding rarely changes a token.

    Differs from the official code: its batch (one prompt per call in its scripts) sums the
    entropies of the rows into one stopping test and divides the KL by the batch size; here
    rows are separate problems, each with its own test and full KL weight (equal at batch 1).
    Its KL takes log(softmax), -inf where a probability underflows (a row spanning more than
    ~104 nats in fp32), which turns the logits into NaN; log_softmax here keeps them finite.
    Decoding is greedy by default (`temperature` 0, shared by every method so that a comparison
    differs in adaptation only); `eminf:temperature=0.1` samples as the official runs. The
    processors `transformers` builds from the model's generation config (repetition penalty,
    minimum length, ...) act before this one (it is passed as a custom processor, which
    `generate` appends after its own), where the official code optimizes the raw logits first;
    with none set, as in SmolLM2's config, the order changes nothing (the sampling warpers come
    after it in both).
    """

    name = "eminf"
    batchable = True
    config_class = EMINFConfig

    def logits_processors(self, lm):
        c = self.cfg
        return [EntropyMinLogitsProcessor(c.logit_steps, c.logit_lr, c.threshold, c.kl_weight)]
