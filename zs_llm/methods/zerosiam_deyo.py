from dataclasses import dataclass

from .base import METHODS
from .deyo import DeYOConfig, DeYOSelection
from .zerosiam import ZeroSiam, ZeroSiamConfig


@dataclass
class ZeroSiamDeYOConfig(ZeroSiamConfig, DeYOConfig):
    pass


@METHODS.register("zerosiam+deyo")
class ZeroSiamDeYO(DeYOSelection, ZeroSiam):
    """ZeroSiam's loss on DeYO's selection of tokens, weighted as DeYO weights samples (the
    paper's plug-in ablation; `DeYOSelection`, shared with the `deyo` method): the entropy and
    PLPD filters and the weight exp(E0 - H) + exp(PLPD) read the predictions (the target branch,
    on the sequence and on its prompt-shuffled copy); the loss is ZeroSiam's per token times the
    weight, summed and divided by the number selected; no optimizer step when none is. The same
    settings as `deyo` (margins, PLPD threshold, transformation) and as `zerosiam`."""

    name = "zerosiam+deyo"
    config_class = ZeroSiamDeYOConfig

    def token_loss(self, online_logits, target_logp, labels, target_p=None):
        q = target_logp.exp() if target_p is None else target_p
        coeff, selection = self.deyo_select(target_logp, q)  # (c,) 0 off the selected tokens
        loss, _, extras, grad = super().token_loss(online_logits, target_logp, labels, q)
        return loss * coeff, (coeff > 0).float(), {**extras, **selection}, grad.mul_(coeff.unsqueeze(-1))
