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

    def token_loss(self, online_logits, target_logp, labels):
        # no predictor: the target log-probabilities are the online ones (detached)
        value, grad = FAST_OBJECTIVES[self.config.objective](target_logp, target_logp.exp())
        return value, None, {}, grad
