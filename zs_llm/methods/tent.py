from ..objective import confidence_objective
from .base import METHODS, Method


@METHODS.register("tent")
class Tent(Method):
    """Tent (Wang et al., ICLR 2021): minimize the entropy of the model's own predictions.

    Here on the response (or prompt) tokens, updating the LoRA adapters only: the paper's
    Tent row for LLMs. Paper defaults for vision: SGD momentum 0.9, one step per batch.
    """

    name = "tent"
    trains = ("lora",)

    def token_loss(self, online_logits, target_logits, labels):
        return confidence_objective(online_logits, self.config.objective), None, {}
