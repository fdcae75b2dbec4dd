"""The model-zoo examples are torchvision's models, weight for weight.

For each of resnet18, resnet50, mobilenet_v2 and vgg16 (and the DeepLabv3 head)
the .cdl example must have torchvision's parameter count and state_dict keys,
and, given a seeded random torchvision model's weights (with non-trivial BN
statistics), compute the same outputs in eval mode (micrograd-style: same
function, same numbers).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from convdsl.backends.torch import build_module
from convdsl.ir.verify import verify
from convdsl.lang.elaborate import elaborate_file

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ATOL = 1e-5



class _DeepLabClassifier(nn.Module):
    """DeepLabV3's classifier on a 512-channel feature map at output stride 8,
    ASPP rates 6/12/18, upsampled back like DeepLabV3.forward does."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = DeepLabHead(512, 21, atrous_rates=(6, 12, 18))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.classifier(x), scale_factor=8, mode="bilinear", align_corners=False)


# example name -> (torchvision constructor, published parameter count, input shape)
MODELS = {
    "resnet18": (models.resnet18, 11_689_512, (2, 3, 224, 224)),
    "resnet50": (models.resnet50, 25_557_032, (2, 3, 224, 224)),
    "mobilenet_v2": (models.mobilenet_v2, 3_504_872, (2, 3, 224, 224)),
    "vgg16": (models.vgg16, 138_357_544, (2, 3, 224, 224)),
    "deeplab_aspp": (_DeepLabClassifier, 4_727_573, (2, 512, 28, 28)),  # count: torchvision's own
}


def _torchvision(name: str) -> nn.Module:
    """A seeded, randomly initialised torchvision model whose BatchNorms are not
    identities: random affine params and running statistics, so that a wrong
    BN wiring (or a BN skipped) changes the output."""
    torch.manual_seed(0)
    model = MODELS[name][0]()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=gen) * 0.5 + 0.25)
                m.bias.copy_(torch.rand(c, generator=gen) - 0.5)
                m.running_mean.copy_((torch.rand(c, generator=gen) - 0.5) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(7)
    return model.eval()


@pytest.fixture(scope="module", params=sorted(MODELS))
def pair(request):
    """(name, convdsl graph, convdsl module, torchvision model) for one example."""
    name = request.param
    graph = verify(elaborate_file(EXAMPLES / f"{name}.cdl"))
    return name, graph, build_module(graph).eval(), _torchvision(name)


def test_parameter_count(pair):
    name, graph, module, tv = pair
    expected = MODELS[name][1]
    assert sum(p.numel() for p in tv.parameters()) == expected  # the published count
    assert graph.params.count() == expected
    assert sum(p.numel() for p in module.parameters()) == expected


def test_state_dict_keys(pair):
    name, graph, module, tv = pair
    ours, theirs = set(module.state_dict()), set(tv.state_dict())
    assert ours == theirs, f"only convdsl: {sorted(ours - theirs)[:8]}; only torchvision: {sorted(theirs - ours)[:8]}"


def test_same_output_on_torchvision_weights(pair):
    name, graph, module, tv = pair
    x = torch.randn(*MODELS[name][2], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = tv(x)
        before = module(x)
        module.load_state_dict(tv.state_dict())  # strict: same keys and shapes
        got = module(x)
    assert got.shape == expected.shape
    # the check can fail: different weights give clearly different logits
    assert (before - expected).abs().max().item() > 1e-2
    diff = (got - expected).abs().max().item()
    assert diff <= ATOL, f"{name}: max abs diff {diff:.3g} (logits up to {expected.abs().max().item():.3g})"
