"""ZeroSiam and baselines for image classifiers: wrap, pick a method, adapt batch by batch.

from zs_llm.vision import Adapter, VISION_METHODS, VisionAdaptConfig, wrap_classifier
model = wrap_classifier(classifier)  # timm, torchvision-style (fc), or wrap_classifier(features_fn, head)
adapter = Adapter(model, VISION_METHODS["zerosiam"](), VisionAdaptConfig(lr=1e-3))
for x, y in stream:
    logits = adapter(x, y)  # predictions from the target branch, then one update
"""

from .adapt import Adapter, VisionAdaptConfig, check_model, collect_params, configure_model, norm_layers
from .methods import (
    COME,
    EATA,
    SAR,
    VISION_METHODS,
    COMEDeYO,
    DeYO,
    NoAdapt,
    Tent,
    VisionMethod,
    ZeroSiam,
    ZeroSiamDeYO,
    ZeroSiamEATA,
    patch_shuffle,
)
from .model import Branches, SiameseClassifier, wrap_classifier

__all__ = [
    "COME",
    "EATA",
    "SAR",
    "VISION_METHODS",
    "Adapter",
    "Branches",
    "COMEDeYO",
    "DeYO",
    "NoAdapt",
    "SiameseClassifier",
    "Tent",
    "VisionAdaptConfig",
    "VisionMethod",
    "ZeroSiam",
    "ZeroSiamDeYO",
    "ZeroSiamEATA",
    "check_model",
    "collect_params",
    "configure_model",
    "norm_layers",
    "patch_shuffle",
    "wrap_classifier",
]
