from dataclasses import dataclass

from ..objective import opinion_entropy, opinion_entropy_rows
from ..settings import setting
from .base import METHODS, Method, MethodConfig

__all__ = ["COME", "COMEConfig", "opinion_entropy"]


@dataclass
class COMEConfig(MethodConfig):
    evidence: float | None = setting(None, "Evidence constant C of the uncertainty mass u = C / (S + C); None: the "
                                     "vocabulary size (the official code's 1000 is ImageNet's class count; 1000 "
                                     "reproduces it literally).", gt=0.0)
    eps: float = setting(1e-7, "Added to every opinion probability, inside the log too (official 1e-7). At a 128k "
                         "vocabulary it alone adds ~0.2 nats; 0 gives the exact opinion entropy.", min=0.0)
    tau: float = setting(1.0, "Scale of the norm-detached logits before the evidence exp() (not in the official "
                         "code: 1 reproduces it).", gt=0.0)


@METHODS.register("come")
class COME(Method):
    """COME (Zhang et al., ICLR 2025): minimize the entropy of a Dirichlet opinion with an
    explicit uncertainty mass instead of the softmax entropy. As in the official code
    (`dirichlet_entropy` in BlueWhaleLab/COME `tent_come.py`): the logits keep their value but
    their norm is detached, beliefs b_k = exp(x_k) / (S + C), uncertainty u = C / (S + C),
    and the entropy is of (b, u) + 1e-7; mean over tokens, one SGD step as Tent.

    Differs from the official code: C. The code hard-codes 1000, the class count of the
    ImageNet models it runs (its README writes the numerator as K); on a vocabulary we take C
    = the vocabulary size, the K of the paper's subjective-logic opinion (`evidence=1000`
    gives the code's constant). The official code updates normalization affine parameters;
    here the LoRA adapters, as every LLM method. Computed in log space (the code's exp()
    overflows above logit 88), with a closed-form gradient.
    """

    default_lr = 3e-3  # the selection of the paper protocol (docs/protocol.md)

    name = "come"
    trains = ("lora",)
    config_class = COMEConfig

    def token_loss(self, online_logits, target_logp, labels, target_p=None):
        c = self.cfg
        value, grad = opinion_entropy_rows(online_logits, c.evidence, c.eps, c.tau)
        return value, None, {}, grad
