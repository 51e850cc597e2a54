"""ZeroSiam and baselines for image classifiers: wrap, pick a method, adapt batch by batch.

from zs_llm.vision import Adapter, VISION_METHODS, VisionAdaptConfig, wrap_classifier
model = wrap_classifier(classifier)  # timm, torchvision-style (fc), or wrap_classifier(features_fn, head)
adapter = Adapter(model, VISION_METHODS["zerosiam"](), VisionAdaptConfig(lr=1e-3))
for x, y in stream:
    logits = adapter(x, y)  # predictions from the target branch, then one update
"""

from .adapt import Adapter, VisionAdaptConfig, check_model, collect_params, configure_model, norm_layers
from .methods import EATA, SAR, VISION_METHODS, NoAdapt, Tent, VisionMethod, ZeroSiam
from .model import Branches, SiameseClassifier, wrap_classifier

__all__ = [
    "EATA",
    "SAR",
    "VISION_METHODS",
    "Adapter",
    "Branches",
    "NoAdapt",
    "SiameseClassifier",
    "Tent",
    "VisionAdaptConfig",
    "VisionMethod",
    "ZeroSiam",
    "check_model",
    "collect_params",
    "configure_model",
    "norm_layers",
    "wrap_classifier",
]
