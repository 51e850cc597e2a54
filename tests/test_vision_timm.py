"""The vision wrapper on small randomly initialized timm models (no download).

timm needs torchvision, which imports on these machines only beside torch 2.14.1, so this file
runs in its own environment: `bash scripts/vision_env.sh && .venv-vision/bin/python -m pytest
tests/test_vision_timm.py`. In the main .venv it is skipped.
"""

from __future__ import annotations

import pytest
import torch

timm = pytest.importorskip(
    "timm", reason="timm is not importable here; run scripts/vision_env.sh and use .venv-vision/bin/python"
)

from zs_llm.vision import VISION_METHODS, Adapter, VisionAdaptConfig, wrap_classifier  # noqa: E402
from zs_llm.vision.adapt import NORM_TYPES  # noqa: E402

MODELS = {
    # LayerNorm transformer: 16 tokens of 8x8 patches at 32x32
    "vit_tiny_patch16_224": {"img_size": 32, "patch_size": 8, "depth": 2},
    # BatchNorm ResNet
    "resnet10t": {},
}


def _model(name):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10, **MODELS[name]).eval()


def _x(seed=0):
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(MODELS))
def test_identity_predictor_gives_the_timm_models_logits(name):
    net = _model(name)
    x = _x()
    with torch.no_grad():
        ref = net(x)
        model = wrap_classifier(net)
        assert model.form == "timm"
        out = model.branches(x)
    assert torch.equal(out.target, ref)
    assert torch.equal(out.online, ref)


@pytest.mark.parametrize("method", ["tent", "zerosiam"])
@pytest.mark.parametrize("name", list(MODELS))
def test_only_norm_affine_and_predictor_move(name, method):
    model = wrap_classifier(_model(name))
    adapter = Adapter(model, VISION_METHODS[method](), VisionAdaptConfig(lr=0.1))
    for n in adapter.param_names:  # predictor parameters, or the affine parameters of a norm layer
        owner = model.get_submodule(n.rsplit(".", 1)[0])
        assert n.startswith("predictor.") or isinstance(owner, NORM_TYPES), n
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for s in range(2):
        adapter(_x(s))
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and moved <= set(adapter.param_names), moved - set(adapter.param_names)
    assert ("predictor.weight" in moved) == (method == "zerosiam")
    adapter.reset()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
