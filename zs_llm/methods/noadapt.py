from .base import METHODS, Method


@METHODS.register("noadapt")
class NoAdapt(Method):
    """No adaptation: the model generates as it is. Every parameter stays unchanged."""

    name = "noadapt"
    batchable = True
