"""Predictors inserted between the backbone's features and the output head.

Each starts as the identity map (or, for `fixed_random`, a deliberate non-identity) and
has `reset()` and `deviation()` (how far it has moved from its initial function).
Parameters are kept in float32 whatever the model's dtype: an identity matmul on a bf16
input cast to fp32 and back is exact, so the online branch equals the target at init.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import Registry

PREDICTORS = Registry("predictor")


class _Predictor(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (..., H) -> (..., H)
        return self._map(z.float()).to(z.dtype)

    def deviation(self) -> float:
        """Frobenius distance of the parameters from their initial values."""
        with torch.no_grad():
            return float(sum((p - p0).pow(2).sum() for p, p0 in zip(self._init_params(), self._initial())) ** 0.5)

    def _initial(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def _init_params(self) -> list[torch.Tensor]:
        return list(self.parameters())


@PREDICTORS.register("linear")
class LinearPredictor(_Predictor):
    """h(z) = W z with W = I at init, no bias (the paper's default). Deviation is ||W - I||_F."""

    def __init__(self, dim: int):
        super().__init__(dim)
        self.weight = nn.Parameter(torch.empty(dim, dim))
        self.reset()

    def reset(self) -> None:
        with torch.no_grad():
            self.weight.copy_(torch.eye(self.dim))

    def _map(self, z):
        return z @ self.weight.T

    def _initial(self):
        return [torch.eye(self.dim, device=self.weight.device)]

    def deviation(self) -> float:
        # one temporary instead of an identity matrix plus two (the predictor is H x H: 4096^2 at 8B)
        with torch.no_grad():
            d = self.weight.detach().clone()
            d.diagonal().sub_(1)
            return float(torch.linalg.vector_norm(d))


@PREDICTORS.register("fixed_random")
class FixedRandomPredictor(_Predictor):
    """A frozen random matrix (entries N(0, 1/H)): the paper's symmetry-breaking ablation.

    It has no trainable parameters, so the online branch differs from the target from the
    start and never moves. `seed` makes the matrix reproducible.
    """

    def __init__(self, dim: int, seed: int = 0):
        super().__init__(dim)
        self.seed = seed
        self.register_buffer("weight", torch.empty(dim, dim))
        self.reset()

    def reset(self) -> None:
        g = torch.Generator().manual_seed(self.seed)
        self.weight.copy_(torch.randn(self.dim, self.dim, generator=g) / self.dim**0.5)

    def _map(self, z):
        return z @ self.weight.T

    def deviation(self) -> float:
        return 0.0


@PREDICTORS.register("mlp")
class MLPPredictor(_Predictor):
    """FC(H -> 2H) - ReLU - FC(2H -> H), identity-equivalent at init.

    fc1 = [I; -I], fc2 = [I, -I]: relu(z) - relu(-z) = z exactly.
    """

    def __init__(self, dim: int):
        super().__init__(dim)
        self.fc1 = nn.Linear(dim, 2 * dim, bias=True)
        self.fc2 = nn.Linear(2 * dim, dim, bias=True)
        self.reset()

    def reset(self) -> None:
        eye = torch.eye(self.dim)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.cat([eye, -eye], 0))
            self.fc2.weight.copy_(torch.cat([eye, -eye], 1))
            self.fc1.bias.zero_()
            self.fc2.bias.zero_()

    def _map(self, z):
        return self.fc2(torch.relu(self.fc1(z)))

    def _init_params(self):
        return [self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias]

    def _initial(self):
        eye = torch.eye(self.dim, device=self.fc1.weight.device)
        zeros = torch.zeros
        return [torch.cat([eye, -eye], 0), zeros(2 * self.dim, device=eye.device), torch.cat([eye, -eye], 1),
                zeros(self.dim, device=eye.device)]


def build_predictor(kind: str, dim: int, **kwargs) -> _Predictor:
    """Build a registered predictor by name (`linear`, `fixed_random`, `mlp`)."""
    return PREDICTORS[kind](dim, **kwargs)
