from ..objective import FAST_OBJECTIVES
from .base import METHODS, Method


@METHODS.register("tent")
class Tent(Method):
    """Tent (Wang et al., ICLR 2021): minimize the entropy of the model's own predictions.

    Here on the response (or prompt) tokens, updating the LoRA adapters only: the paper's
    Tent row for LLMs. Paper defaults for vision: SGD momentum 0.9, one step per batch.
    """

    name = "tent"
    trains = ("lora",)

    def token_loss(self, online_logits, target_logp, labels, target_p=None):
        # no predictor: the target log-probabilities are the online ones (detached)
        q = target_logp.exp() if target_p is None else target_p
        value, grad = FAST_OBJECTIVES["entropy"](target_logp, q, inplace=True)  # target_logp is scratch
        return value, None, {"entropy": value}, grad
