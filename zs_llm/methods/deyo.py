import math
import zlib
from dataclasses import dataclass

import torch

from ..objective import FAST_OBJECTIVES, _dot, deyo_weights, plpd
from ..settings import setting
from .base import METHODS, Method, MethodConfig, no_step_without_selection

TRANSFORMS = ("patch", "token")


@dataclass
class DeYOConfig(MethodConfig):
    deyo_margin: float = setting(0.5, "Entropy filter: tokens with entropy < deyo_margin * ln(vocab) (official: "
                                 "0.5 * ln 1000).", min=0.0)
    deyo_margin_e0: float = setting(0.4, "Entropy weighting: exp(E0 - H), E0 = deyo_margin_e0 * ln(vocab) (official: "
                                    "0.4 * ln 1000).", min=0.0)
    plpd_threshold: float = setting(0.2, "PLPD filter: tokens whose pseudo-label loses more than this probability "
                                    "when the prompt's order is destroyed (official: 0.2; its script uses 0.3 in the "
                                    "mild ImageNet-C setting).", min=-1.0, max=1.0)
    transform: str = setting("patch", "How the prompt's order is destroyed: patch (cut into `patches` contiguous "
                             "pieces, shuffled: the official image patch shuffle) or token (every token moved: the "
                             "official pixel shuffle).", choices=TRANSFORMS)
    patches: int = setting(16, "Pieces the prompt is cut into by transform=patch (official: 4 x 4 image patches).",
                           min=2, max=65_536)


def shuffle_prompt(ids: torch.Tensor, prompt_len: int, patches: int, generator: torch.Generator) -> torch.Tensor:
    """(1, T) token ids with the first `prompt_len` cut into `patches` contiguous pieces (lengths
    differing by at most one; fewer when the prompt is shorter) put back in a random order; the
    tokens after the prompt stay where they are. Returns a new (1, T) tensor."""
    pieces = torch.tensor_split(torch.arange(prompt_len), min(patches, prompt_len))
    order = torch.randperm(len(pieces), generator=generator)
    perm = torch.cat([pieces[int(i)] for i in order]) if pieces else torch.arange(0)
    out = ids.clone()
    out[0, :prompt_len] = ids[0, perm.to(ids.device)]
    return out


class DeYOSelection:
    """DeYO's selection of token rows (`forward_and_adapt_deyo` in Jhyun17/DeYO `methods/deyo.py`),
    shared by `deyo` and `zerosiam+deyo`: the entropy filter (H < `deyo_margin * ln V`), then the
    PLPD filter: the pseudo-label (the row's argmax) must lose more than `plpd_threshold` of its
    probability when the input's order is destroyed; selected rows weigh exp(E0 - H) + exp(PLPD)
    (`objective.plpd`, `objective.deyo_weights`, shared with the vision path), the loss is the weighted sum over the number selected, and with
    none selected no optimizer step is taken.

    The transformation on text (the official one shuffles an image's 4 x 4 patches): the prompt's
    tokens are cut into `patches` (16) contiguous pieces and shuffled (`transform=token` moves
    every token), the response is kept, and each response position is read again at the same
    position. The tokens stay, their order goes: a token whose prediction rests on the question
    (the answer's digits) loses its pseudo-label's probability, one that the response's own prefix
    predicts (formatting, the rest of a word) keeps it and is dropped, as DeYO drops a prediction
    that survives the destruction of the object's shape. The whole prompt is shuffled, chat
    template included, as the whole image is; with signal=prompt the rows are the prompt's own.
    The order is drawn from the seed and the sequence's tokens (a rerun or a resume draws the same;
    the official code draws from the global generator)."""

    _prime: torch.Tensor | None = None  # (N, H) features of the transformed sequence, for this loss
    _prime_head = None
    _offset = 0

    def transformed(self, batch) -> torch.Tensor:
        """The batch's (1, T) sequence with its prompt's order destroyed (`transform`, `patches`)."""
        ids = batch.input_ids
        prompt_len = ids.shape[1] if self.config.signal == "prompt" else int(batch.positions.min()) + 1
        key = zlib.crc32(ids.detach().cpu().numpy().tobytes())
        g = torch.Generator().manual_seed((self.config.seed * 1_000_003 + key) % 2**63)
        patches = prompt_len if self.cfg.transform == "token" else self.cfg.patches
        return shuffle_prompt(ids, prompt_len, patches, g)

    def set_transformed(self, features: torch.Tensor | None, head_fn=None) -> None:
        """The (N, H) features of the batch's rows on the transformed sequence and the head that
        gives their logits (the target branch's): the next loss reads them, chunk by chunk."""
        self._prime, self._prime_head, self._offset = features, head_fn, 0

    def deyo_select(self, target_logp, target_p) -> tuple[torch.Tensor, dict]:
        """(c, V) log-probabilities and probabilities of the predictions of the next c rows ->
        (weights (c,), 0 off the selection; extras). Reads `target_logp` only."""
        if self._prime is None:
            raise RuntimeError(f"{self.name}: its loss needs the transformed sequence's features; call loss() or "
                               "backward(), or set_transformed() first")
        c = target_logp.shape[0]
        with torch.no_grad():
            prime = self._prime_head(self._prime[self._offset : self._offset + c])  # (c, V)
        self._offset += c
        c_ = self.cfg
        ent = -_dot(target_p, target_logp)  # (c,)
        drop = plpd(target_logp, prime)  # (c,) log-probabilities serve as logits
        coeff = deyo_weights(ent, drop, math.log(target_p.shape[-1]), c_.deyo_margin, c_.deyo_margin_e0,
                             c_.plpd_threshold)
        return coeff, {"plpd": drop}

    def loss(self, lm, batch, stats=None):
        with torch.no_grad():
            self.set_transformed(lm.features(self.transformed(batch), batch.positions), lm.head_logits)
        try:
            return super().loss(lm, batch, stats)
        finally:
            self.set_transformed(None)

    def backward(self, lm, batch):
        return no_step_without_selection(lm, super().backward(lm, batch))


@METHODS.register("deyo")
class DeYO(DeYOSelection, Method):
    """DeYO (Lee et al., ICLR 2024) as its official code runs it (`forward_and_adapt_deyo` in
    Jhyun17/DeYO `methods/deyo.py`, defaults of its `config.py`): entropy of the predictions on
    the rows `DeYOSelection` keeps (entropy filter, then PLPD filter), weighted exp(E0 - H) +
    exp(PLPD), summed and divided by the number kept; SGD momentum 0.9, no step on a batch with no
    row kept.

    Differs from the official code: the transformation, which has no text form in it: the
    prompt's tokens shuffled in 16 pieces (`transform`, `patches`; see `DeYOSelection`). The
    margins are fractions of ln(vocabulary), as the official 0.5 and 0.4 * ln 1000 are of
    ImageNet's; a selected token's entropy weight reaches exp(0.4 ln V), about 75 at SmolLM2's
    49,152 tokens (16 on ImageNet). The official code adapts normalization layers except the top
    of the network; here the LoRA adapters, as every LLM method."""

    default_lr = 1e-3  # the selection of the paper protocol (docs/protocol.md)

    name = "deyo"
    trains = ("lora",)
    config_class = DeYOConfig

    def token_loss(self, online_logits, target_logp, labels, target_p=None):
        q = target_logp.exp() if target_p is None else target_p
        coeff, extras = self.deyo_select(target_logp, q)  # before the entropy builds its gradient in target_logp
        value, grad = FAST_OBJECTIVES["entropy"](target_logp, q, inplace=True)
        return value * coeff, (coeff > 0).float(), {"entropy": value, **extras}, grad.mul_(coeff.unsqueeze(-1))
