from dataclasses import dataclass

from ..objective import DIVERGENCES, OBJECTIVES, sar_weights, zerosiam_rows
from ..predictor import PREDICTORS
from ..settings import setting
from .base import METHODS, Method, MethodConfig
from .eata import EATASelection


@dataclass
class ZeroSiamConfig(MethodConfig):
    alpha: float = setting(1.0, "Weight of the alignment term D(p_o || sg[p_r]); 0 leaves pure entropy through the "
                           "predictor.", min=0.0)
    divergence: str = setting("sym_kl", "Alignment divergence: sym_kl (KL both ways, summed), kl, rkl, js, mse.",
                              choices=tuple(DIVERGENCES))
    objective: str = setting("entropy", "Confidence term: entropy, slr (soft likelihood ratio), ce_argmax, neg_p2 "
                             "(-sum p^2).", choices=tuple(OBJECTIVES))
    predictor: str = setting("linear", "Predictor before the head: linear (identity init), fixed_random (frozen), "
                             "mlp.", choices=tuple(PREDICTORS))
    predictor_lr: float | None = setting(None, "Learning rate of the predictor; None uses lr * predictor_lr_scale.",
                                         min=0.0)
    predictor_lr_scale: float = setting(1.0, "Predictor learning rate as a multiple of the LoRA lr, used when "
                                        "predictor_lr is None. 1 is this protocol's choice; the official scripts "
                                        "use 10 (ResNet50-GN, ViT-S, ConvNeXt), 5 (Swin) or 1 (ViT-B).", min=0.0)

    def effective_predictor_lr(self, lora_lr: float) -> float:
        return self.predictor_lr if self.predictor_lr is not None else lora_lr * self.predictor_lr_scale


@dataclass
class FilteredZeroSiamConfig(ZeroSiamConfig):
    filter_margin: float = setting(0.4, "Reliable tokens: entropy < filter_margin * ln(vocab) (SAR, EATA: 0.4).",
                                   min=0.0)


@METHODS.register("zerosiam")
class ZeroSiam(Method):
    """ZeroSiam (ICLR 2026): `H(p_o) + alpha * D(p_o || sg[p_r])` with p_o from the head
    applied to the predictor's output and p_r from the head on the raw features, stop-gradient
    on p_r. Updates LoRA and the predictor with separate learning rates; predictions come
    from the target branch. Paper defaults: alpha 1, symmetric KL, linear identity predictor.
    Ablations are configurations: alpha=0, predictor=fixed_random or mlp, each divergence.

    Differs from the official code: the predictor learns at the LoRA rate (`predictor_lr_scale`
    1). The official scripts set it per backbone, 10x the backbone's rate for ResNet50-GN, ViT-S
    and ConvNeXt, 5x for Swin, 1x for ViT-B; no rule carries those to LoRA adapters on an LLM,
    and no study here has varied the ratio, so the protocol keeps 1 (`predictor_lr_scale=10`
    gives the most common official ratio). It may be the most consequential untested choice:
    on SmolLM2 ZeroSiam's first gradient norm (LoRA and predictor) is 20.3 where Tent's is 1.65
    on the same draft."""

    name = "zerosiam"
    trains = ("lora", "predictor")
    uses_predictor = True
    config_class = ZeroSiamConfig

    def weights(self, target_logp):
        return None

    def token_loss(self, online_logits, target_logp, labels, target_p=None):
        c = self.cfg
        w = self.weights(target_logp)  # before zerosiam_rows builds its gradient in target_logp
        loss, grad, extras = zerosiam_rows(online_logits, target_logp, c.alpha, c.divergence, c.objective, target_p,
                                           inplace=True)
        return loss, w, extras, grad


@METHODS.register("zerosiam+sar")
class ZeroSiamSAR(ZeroSiam):
    """ZeroSiam's loss on SAR's reliable tokens only (the paper's plug-in ablation): SAR's
    reliability filter (entropy of the predictions below `filter_margin * ln K`) and nothing
    else of SAR. Unlike the `sar` method there is no sharpness-aware step (one gradient at the
    current weights), no model recovery, and no freezing of the top layers' adapters; a batch
    with no reliable token still takes the momentum step, as SAR's optimizer does."""

    name = "zerosiam+sar"
    config_class = FilteredZeroSiamConfig

    def weights(self, target_logp):
        return sar_weights(target_logp, self.cfg.filter_margin)


@dataclass
class ZeroSiamEATAConfig(FilteredZeroSiamConfig):
    d_margin: float | None = setting(None, "EATA's redundancy filter: drop tokens with |cos(p, moving mean of the "
                                     "selected tokens' p)| >= d_margin; None (this method's default) leaves it out, "
                                     "0.05 is EATA's.", min=0.0)


@METHODS.register("zerosiam+eata")
class ZeroSiamEATA(EATASelection, ZeroSiam):
    """ZeroSiam's loss on EATA's selection of tokens, weighted as EATA weights samples
    (`EATASelection`, shared with the `eata` method; `forward_and_adapt_eata` in mr-eggplant/EATA
    `eata.py`): tokens whose entropy (of the predictions, the target branch) is below
    E0 = `filter_margin * ln K` count with weight 1 / exp(H - E0); the loss is the weighted sum
    divided by the number of those tokens (not by the sum of the weights), and no optimizer step
    is taken when there is none. EATA's redundancy filter (cosine to a moving mean of
    probabilities) is off by default (`d_margin=0.05` gives EATA's, as the `eata` method runs it)
    and its Fisher regularizer (estimated on source data) is not applied; E0 is a fraction of
    ln(vocabulary), as the official 0.4 * ln 1000 is of ImageNet's."""

    name = "zerosiam+eata"
    config_class = ZeroSiamEATAConfig

    def token_loss(self, online_logits, target_logp, labels, target_p=None):
        q = target_logp.exp() if target_p is None else target_p
        coeff, selection = self.eata_select(target_logp, q)  # (c,) 0 off the selected tokens
        loss, _, extras, grad = super().token_loss(online_logits, target_logp, labels, q)
        # the coefficient goes into the loss; the weight only selects, so the mean is over selected tokens
        return loss * coeff, (coeff > 0).float(), {**extras, **selection}, grad.mul_(coeff.unsqueeze(-1))
