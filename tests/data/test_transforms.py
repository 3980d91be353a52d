"""Batched transforms against intuition and against torchvision's per-image reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from backend.data import transforms as T


@pytest.fixture
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g)


def test_normalize_matches_formula(images: torch.Tensor) -> None:
    mean, std = torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26])
    out = T.normalize(images, mean, std)
    expected = (images.float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_crop_flip_without_pad_or_flip_is_identity(images: torch.Tensor) -> None:
    assert torch.equal(T.random_crop_flip(images, pad=0, flip=False), images)


def test_flip_of_asymmetric_image_is_mirror_or_original() -> None:
    x = torch.arange(8, dtype=torch.uint8).view(1, 1, 1, 8).expand(64, 3, 4, 8).contiguous()
    out = T.random_crop_flip(x, pad=0, flip=True, generator=torch.Generator().manual_seed(3))
    flipped = torch.tensor([torch.equal(o, x[0].flip(-1)) for o in out])
    kept = torch.tensor([torch.equal(o, x[0]) for o in out])
    assert bool((flipped | kept).all())
    assert 10 < int(flipped.sum()) < 54  # about half of 64 are mirrored


def test_crop_shifts_content_within_padded_window() -> None:
    x = torch.arange(1, 65, dtype=torch.int64).view(1, 1, 8, 8).expand(200, 1, 8, 8)
    out = T.random_crop_flip(x, pad=2, flip=False, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x[:1], (2, 2, 2, 2))[0, 0]
    offsets = set()
    for o in out[:, 0]:
        # The top-left non-padding pixel tells where the window was taken.
        match = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(padded[dy : dy + 8, dx : dx + 8], o)]
        assert len(match) == 1
        offsets.add(match[0])
    assert len(offsets) == 25  # every offset of a pad-2 crop occurs in 200 draws
    assert out.dtype == torch.int64


def test_crop_flip_is_deterministic_with_generator(images: torch.Tensor) -> None:
    a = T.random_crop_flip(images, generator=torch.Generator().manual_seed(7))
    b = T.random_crop_flip(images, generator=torch.Generator().manual_seed(7))
    c = T.random_crop_flip(images, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("angle", [0.0, 37.5, 90.0, 163.0, 180.0])
def test_rotation_matches_torchvision(images: torch.Tensor, angle: float) -> None:
    hom = T._rotation_homography(torch.full((len(images),), angle), 32, 32)
    mine = T._warp(images.float(), hom, "nearest").round().to(torch.uint8)
    assert torch.equal(mine, TF.rotate(images, angle, fill=0))


def test_rotation_by_zero_is_identity(images: torch.Tensor) -> None:
    hom = T._rotation_homography(torch.zeros(len(images)), 32, 32)
    torch.testing.assert_close(T._warp(images.float(), hom, "bilinear"), images.float())


def test_perspective_matches_torchvision(images: torch.Tensor) -> None:
    start = [[0, 0], [31, 0], [31, 31], [0, 31]]
    end = [[2, 1], [29, 3], [30, 28], [1, 30]]
    n = len(images)
    hom = T._perspective_homography(
        torch.tensor([start], dtype=torch.float32).expand(n, 4, 2),
        torch.tensor([end], dtype=torch.float32).expand(n, 4, 2),
    )
    mine = T._warp(images.float(), hom.float(), "bilinear")
    ref = TF.perspective(images.float(), start, end, interpolation=TF.InterpolationMode.BILINEAR)
    # 0-255 pixel units: 1e-2 is far below one grey level; float sums differ with the thread count.
    torch.testing.assert_close(mine, ref, atol=1e-2, rtol=0)


@pytest.mark.parametrize("shift", [0.0, 0.1, -0.3, 0.3])
def test_hue_matches_torchvision(images: torch.Tensor, shift: float) -> None:
    f = images.float() / 255
    mine = T.adjust_hue(f, torch.full((len(images),), shift))
    torch.testing.assert_close(mine, TF.adjust_hue(f, shift), atol=1e-5, rtol=0)


def test_hue_shift_zero_is_identity(images: torch.Tensor) -> None:
    f = images.float() / 255
    torch.testing.assert_close(T.adjust_hue(f, torch.zeros(len(images))), f, atol=1e-5, rtol=0)


def test_solarize_threshold_math() -> None:
    x = torch.tensor([0, 100, 191, 192, 255], dtype=torch.uint8).view(1, 1, 1, 5)
    out = T.solarize(x, T.SOLARIZE_THRESHOLD)
    assert out.flatten().tolist() == [0, 100, 191, 255 - 192, 0]
    assert torch.equal(T.solarize(x, T.SOLARIZE_THRESHOLD, torch.tensor([False])), x)


def test_strong_augment_shape_dtype_determinism(images: torch.Tensor) -> None:
    a = T.strong_augment(images, generator=torch.Generator().manual_seed(1))
    b = T.strong_augment(images, generator=torch.Generator().manual_seed(1))
    assert a.dtype == torch.uint8 and a.shape == images.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, images)


def test_strong_augment_rotates_with_zero_fill() -> None:
    # A flat grey image: for most angles in (0, 180) the corner pixel comes from outside the image and
    # is filled with 0 (solarize leaves 0 alone), while the centre stays non-zero.
    x = torch.full((64, 3, 16, 16), 128, dtype=torch.uint8)
    out = T.strong_augment(x, generator=torch.Generator().manual_seed(0))
    assert float((out[:, :, 0, 0] == 0).all(dim=1).float().mean()) > 0.8
    assert bool((out[:, :, 8, 8] > 0).all())


def test_strong_augment_rejects_float(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="uint8"):
        T.strong_augment(images.float())


def test_channel_stats_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(300, 8, 8, 3), dtype=np.uint8)
    mean, std = T.channel_stats(imgs)
    flat = imgs.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, flat.std(0), rtol=1e-4)
    assert mean.shape == (3,) and std.shape == (3,)


def test_channel_stats_rejects_empty() -> None:
    with pytest.raises(ValueError, match="channel_stats"):
        T.channel_stats(np.zeros((0, 8, 8, 3), dtype=np.uint8))
