from ..objective import FAST_OBJECTIVES
from .base import METHODS, Method


@METHODS.register("tent")
class Tent(Method):
    """Tent (Wang et al., ICLR 2021): minimize the entropy of the model's own predictions.

    The loss is the official one (`softmax_entropy` and `forward_and_adapt` in DequanWang/tent
    `tent.py`): -sum softmax * log_softmax per row, averaged over rows (here the response's,
    or the prompt's, tokens), one optimizer step per batch. The official code updates the
    affine parameters of BatchNorm layers under batch statistics; a causal LM has no batch
    norm, so here the LoRA adapters are updated, as for every LLM method (the paper's Tent row
    for LLMs). Official optimizers: SGD momentum 0.9 with Nesterov momentum (ImageNet; `nesterov`
    below) or Adam 1e-3 (CIFAR).

    The SAR, COME and ZeroSiam repositories run their Tent baseline with plain momentum 0.9
    (no Nesterov); `tent:nesterov=false` (the shared `AdaptConfig.nesterov`) runs it that way.
    """

    name = "tent"
    trains = ("lora",)
    nesterov = True

    def token_loss(self, online_logits, target_logp, labels, target_p=None):
        # no predictor: the target log-probabilities are the online ones (detached)
        q = target_logp.exp() if target_p is None else target_p
        value, grad = FAST_OBJECTIVES["entropy"](target_logp, q, inplace=True)  # target_logp is scratch
        return value, None, {"entropy": value}, grad
