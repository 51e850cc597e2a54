from ..objective import eata_weights, sar_weights, zerosiam_rows
from .base import METHODS, Method


@METHODS.register("zerosiam")
class ZeroSiam(Method):
    """ZeroSiam (ICLR 2026): `H(p_o) + alpha * D(p_o || sg[p_r])` with p_o from the head
    applied to the predictor's output and p_r from the head on the raw features, stop-gradient
    on p_r. Updates LoRA and the predictor with separate learning rates; predictions come
    from the target branch. Paper defaults: alpha 1, symmetric KL, linear identity predictor.
    Ablations are configurations: alpha=0, predictor=fixed_random or mlp, each divergence."""

    name = "zerosiam"
    trains = ("lora", "predictor")
    uses_predictor = True

    def weights(self, target_logp):
        return None

    def token_loss(self, online_logits, target_logp, labels, target_p=None):
        c = self.config
        w = self.weights(target_logp)  # before zerosiam_rows builds its gradient in target_logp
        loss, grad, extras = zerosiam_rows(online_logits, target_logp, c.alpha, c.divergence, c.objective, target_p,
                                           inplace=True)
        return loss, w, extras, grad


@METHODS.register("zerosiam+sar")
class ZeroSiamSAR(ZeroSiam):
    """ZeroSiam's loss on SAR's reliable tokens only (the paper's plug-in ablation)."""

    name = "zerosiam+sar"

    def weights(self, target_logp):
        return sar_weights(target_logp, self.config.filter_margin)


@METHODS.register("zerosiam+eata")
class ZeroSiamEATA(ZeroSiam):
    """ZeroSiam's loss weighted per token as EATA weights samples: exp(H0 - H) below H0."""

    name = "zerosiam+eata"

    def weights(self, target_logp):
        return eata_weights(target_logp, self.config.filter_margin)
