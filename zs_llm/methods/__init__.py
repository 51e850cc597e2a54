"""Test-time methods, one small class each, in the `METHODS` registry."""

from . import come, eminf, noadapt, sar, slot, tent, zerosiam  # noqa: F401  (registration)
from .base import METHODS, LossBatch, Method

__all__ = ["METHODS", "LossBatch", "Method"]
