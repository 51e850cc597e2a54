"""zs_llm: ZeroSiam test-time adaptation for Hugging Face causal language models."""

from .adapt import AdaptResult
from .api import Streams, adapt_generate, load
from .config import AdaptConfig
from .loading import EMBEDDED, load_model
from .methods import METHODS, Method
from .model import ZeroSiamLM

__all__ = ["AdaptConfig", "AdaptResult", "EMBEDDED", "METHODS", "Method", "Streams", "ZeroSiamLM", "adapt_generate",
           "load", "load_model"]
__version__ = "0.1.0"
