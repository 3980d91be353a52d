"""Model contract: features/head split used by MC-dropout scoring, shapes, registry, documented cost."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from backend.training.models import MODELS, build_model, count_macs


@pytest.mark.parametrize("name", sorted(MODELS))
def test_features_head_contract(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, dropout=0.3).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        feats = model.features(x)
        logits = model(x)
        assert feats.shape == (4, model.head[1].in_features)
        assert logits.shape == (4, 7)
        assert torch.allclose(logits, model.head(feats), atol=1e-6)
    assert isinstance(model.head, nn.Sequential) and len(model.head) == 2
    assert isinstance(model.head[0], nn.Dropout) and model.head[0].p == 0.3
    assert isinstance(model.head[1], nn.Linear) and model.head[1].out_features == 7
    # No dropout anywhere in the backbone: features() is deterministic even in train mode.
    assert not any(isinstance(m, nn.Dropout) for m in model.backbone.modules())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_head_dropout_is_stochastic_in_train_mode(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, dropout=0.5).eval()
    feats = model.features(torch.randn(2, 3, 32, 32)).detach()
    model.head.train()
    a, b = model.head(feats), model.head(feats)
    assert not torch.allclose(a, b)


def test_resnet18_cifar_stem() -> None:
    model = build_model("resnet18_cifar", 10)
    conv1 = model.backbone.conv1
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and conv1.padding == (1, 1)
    assert isinstance(model.backbone.maxpool, nn.Identity)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962


def test_small_documented_cost() -> None:
    model = build_model("small", 10)
    assert sum(p.numel() for p in model.parameters()) == 98_970
    assert count_macs(model) == 3_982_592
    assert count_macs(build_model("resnet18_cifar", 10)) == 555_422_720


def test_small_pools_before_relu_with_the_same_function() -> None:
    """Pool-then-ReLU equals the textbook ReLU-then-pool, so the reorder costs nothing in accuracy."""
    torch.manual_seed(0)
    model = build_model("small", 10).eval()
    mods = list(model.backbone)
    assert [type(m).__name__ for m in mods[:4]] == ["Conv2d", "BatchNorm2d", "MaxPool2d", "ReLU"]
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        ref, i = x, 0
        while i < len(mods):
            if isinstance(mods[i], nn.MaxPool2d) and isinstance(mods[i + 1], nn.ReLU):
                ref, i = mods[i](torch.relu(ref)), i + 2  # the textbook order: ReLU, then pool
            else:
                ref, i = mods[i](ref), i + 1
        assert torch.equal(model.backbone(x), ref)


def test_build_model_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg", 10)
    with pytest.raises(ValueError, match="dropout"):
        build_model("small", 10, dropout=1.0)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("small", 1)
