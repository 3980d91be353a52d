"""Classifiers used by benchmarks and active learning.

Every model built here has the same shape so MC-dropout scoring can run the backbone once and the
head T times:

    model.features(x) -> (N, F)   everything up to the pooled feature vector, no dropout inside
    model.head        -> nn.Sequential(nn.Dropout(p), nn.Linear(F, num_classes))
    model(x)          == model.head(model.features(x))

Models
------
``resnet18_cifar``
    The study's network: torchvision's ResNet18 with a 3x3 stride-1 first convolution and no max-pool
    (CIFAR images are 32x32, so ImageNet's 4x early downsampling would leave 1x1 maps too soon).
    11.17 M parameters, 0.56 G multiply-accumulates (1.11 GFLOPs) per 32x32 image.
``small``
    A fast CNN for CPU runs: four conv3x3-BN-ReLU stages of 16, 32, 64 and 128 channels, a 2x2 max-pool
    in each of the first three (before the ReLU, which gives the same function for less work), then
    global average pooling to a 128-d feature vector.
    98,970 parameters (with a 10-class head); 3.98 M multiply-accumulates (7.97 MFLOPs) per 32x32 image,
    about 140x less than ``resnet18_cifar``. Training throughput on two CPU cores (AMD EPYC with
    AVX512-BF16): about 11,000 images/s with bf16 autocast, 8,000 in fp32 (benchmarks/bench_train.py),
    so an epoch of CIFAR-10 takes 5-6 s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn as nn


class Classifier(nn.Module):
    """A feature extractor followed by a dropout + linear head (the MC-dropout contract above)."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_features = num_features
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float -> (N, F) pooled features."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float -> (N, num_classes) logits."""
        return self.head(self.features(x))


def resnet18_cifar(num_classes: int, dropout: float = 0.0) -> Classifier:
    """torchvision ResNet18 adapted to 32x32 inputs (3x3 stride-1 conv1, no max-pool)."""
    # Imported here: torchvision.models pulls in torch._dynamo (seconds), which only this model needs.
    import torchvision.models

    net = torchvision.models.resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    num_features = net.fc.in_features
    # The classifier lives in our head so dropout can be inserted before it; the backbone ends at the pool.
    net.fc = nn.Identity()
    return Classifier(net, num_features, num_classes, dropout)


def small(num_classes: int, dropout: float = 0.0, widths: tuple[int, ...] = (16, 32, 64, 128)) -> Classifier:
    """The fast CPU CNN described in the module docstring."""
    layers: list[nn.Module] = []
    c_in = 3
    for i, width in enumerate(widths):
        layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)]
        # Pool before the ReLU: max and ReLU commute (ReLU is monotonic), so the function is the same as
        # conv-BN-ReLU-pool, but the ReLU and its backward touch a quarter of the values.
        if i < len(widths) - 1:
            layers.append(nn.MaxPool2d(2))
        layers.append(nn.ReLU(inplace=True))
        c_in = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Classifier(nn.Sequential(*layers), c_in, num_classes, dropout)


MODELS: dict[str, Callable[..., Classifier]] = {"resnet18_cifar": resnet18_cifar, "small": small}
# Share of one GPU a training run of each model takes on a Ray cluster (--ray): the small CNN leaves room for
# four runs per GPU; ResNet18 at batch 256 keeps one GPU busy. Models not listed take a whole GPU.
GPU_SHARE: dict[str, float] = {"small": 0.25, "resnet18_cifar": 1.0}
ModelName = Literal[tuple(MODELS)]  # type: ignore[valid-type]  # for params: an enum in their JSON schema


def build_model(name: str, num_classes: int, dropout: float = 0.0) -> Classifier:
    """Build a registered classifier; unknown names raise ValueError listing the choices."""
    if name not in MODELS:
        raise ValueError(f"model: unknown model {name!r}; choose one of {sorted(MODELS)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return MODELS[name](num_classes, dropout=dropout)


def count_macs(model: nn.Module, image_size: tuple[int, int] = (32, 32)) -> int:
    """Multiply-accumulates of one forward pass on a single 3-channel image (convolutions and linears)."""
    total = 0

    def conv_hook(module: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total += out.numel() * k

    def linear_hook(module: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, *image_size))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total
