"""Batched train-time image transforms that run on whatever device the images live on.

Every function takes a whole batch (N, C, H, W) and draws its random parameters per sample in one
call, so a GPU trainer never falls back to per-image PIL work. Random numbers come from ``generator``
when given (drawn on the generator's own device, then moved), else from torch's global RNG on
``x.device``.

``strong_augment`` reproduces the reference study's oversample+augmentation pipeline, matching
torchvision's v1 transforms in parameter ranges, geometry conventions and interpolation modes:
ColorJitter(brightness=0.5, hue=0.3) -> RandomPerspective(0.2, p=0.5, fill=0)
-> RandomRotation((0, 180), fill=0) -> RandomSolarize(0.75 * 255, p=0.5).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SOLARIZE_THRESHOLD = 0.75 * 255  # the study's threshold of 0.75, in uint8 units
BRIGHTNESS = 0.5  # factor drawn from [1 - 0.5, 1 + 0.5]
HUE = 0.3  # hue shift drawn from [-0.3, 0.3] of a full turn
DISTORTION = 0.2  # RandomPerspective distortion_scale
MAX_DEGREES = 180.0  # RandomRotation((0, 180))


def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``n`` uniforms in [0, 1) on ``device``, drawn from ``generator`` on its own device if given."""
    if generator is None:
        return torch.rand(n, device=device)
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def _randint(low: int, high: int, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``n`` integers in [low, high) (torch.randint semantics) on ``device``."""
    if generator is None:
        return torch.randint(low, high, (n,), device=device)
    return torch.randint(low, high, (n,), generator=generator, device=generator.device).to(device)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """x uint8 (N,3,H,W) any device -> float32 normalised; mean/std are (3,) in 0-1 units."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    # One fused affine: (x/255 - mean)/std == x * (1/(255 std)) - mean/std.
    return torch.addcmul(-mean / std, x.to(torch.float32), 1.0 / (255.0 * std))


def random_crop_flip(
    x: torch.Tensor, *, pad: int = 4, flip: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Batched per-sample pad-`pad` (zero) random crop + horizontal flip on (N,C,H,W) of any dtype.

    Runs on x's device and keeps x's dtype (crop uint8 before normalising to move 4x fewer bytes).
    """
    n, c, h, w = x.shape
    if n == 0:
        return x.clone()
    padded = F.pad(x, (pad, pad, pad, pad)) if pad > 0 else x
    dy = _randint(0, 2 * pad + 1, n, generator, x.device)
    dx = _randint(0, 2 * pad + 1, n, generator, x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (N, H) source rows
    cols = torch.arange(w, device=x.device).expand(n, w)
    if flip:
        flipped = _rand(n, generator, x.device) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    cols = dx[:, None] + cols  # (N, W) source columns; a flip just reverses the column order
    # Two gathers (rows, then columns) instead of a Python loop over samples.
    out = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, padded.shape[3]))
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def _source_coords(homography: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input coordinates (N, H*W) x and y of every output pixel centre under ``homography`` (N,3,3).

    Written as broadcast multiply-adds: a batched matmul with K=3 is several times slower on CPU.
    """
    m = homography.to(torch.float32).reshape(-1, 9, 1)
    dev = homography.device
    gy, gx = torch.meshgrid(
        torch.arange(h, device=dev, dtype=torch.float32) + 0.5,
        torch.arange(w, device=dev, dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    gx, gy = gx.reshape(1, -1), gy.reshape(1, -1)
    den = m[:, 6] * gx + m[:, 7] * gy + m[:, 8]
    return (m[:, 0] * gx + m[:, 1] * gy + m[:, 2]) / den, (m[:, 3] * gx + m[:, 4] * gy + m[:, 5]) / den


def _warp(x: torch.Tensor, homography: torch.Tensor, mode: str) -> torch.Tensor:
    """Sample float ``x`` (N,C,H,W) at ``homography`` (N,3,3) applied to output pixel centres; zero fill.

    Coordinates are continuous pixel units with pixel ``i`` centred at ``i + 0.5`` (torchvision's
    convention), so the grid maps exactly onto ``grid_sample(align_corners=False)``.
    """
    n, _, h, w = x.shape
    sx, sy = _source_coords(homography, h, w)
    grid = torch.stack([sx * (2.0 / w) - 1.0, sy * (2.0 / h) - 1.0], dim=-1).view(n, h, w, 2)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def _perspective_homography(startpoints: torch.Tensor, endpoints: torch.Tensor) -> torch.Tensor:
    """(N,3,3) homographies mapping output corners ``endpoints`` to input corners ``startpoints`` (N,4,2).

    Same linear system as torchvision's ``_get_perspective_coeffs``, solved for the whole batch at once.
    """
    n = startpoints.shape[0]
    e = endpoints.to(torch.float64)
    s = startpoints.to(torch.float64)
    ex, ey, sx, sy = e[..., 0], e[..., 1], s[..., 0], s[..., 1]
    zeros, ones = torch.zeros_like(ex), torch.ones_like(ex)
    row_x = torch.stack([ex, ey, ones, zeros, zeros, zeros, -sx * ex, -sx * ey], dim=-1)
    row_y = torch.stack([zeros, zeros, zeros, ex, ey, ones, -sy * ex, -sy * ey], dim=-1)
    a = torch.stack([row_x, row_y], dim=2).reshape(n, 8, 8)
    b = torch.stack([sx, sy], dim=2).reshape(n, 8, 1)
    coeffs = torch.linalg.solve(a, b).squeeze(-1)
    return torch.cat([coeffs, torch.ones(n, 1, dtype=coeffs.dtype, device=coeffs.device)], 1).view(n, 3, 3)


def _perspective_endpoints(n: int, h: int, w: int, generator: torch.Generator | None, device: torch.device):
    """Random corner displacements exactly as ``RandomPerspective.get_params`` draws them, per sample."""
    dw, dh = int(DISTORTION * (w // 2)), int(DISTORTION * (h // 2))

    def ri(low: int, high: int) -> torch.Tensor:
        return _randint(low, high, n, generator, device)

    top_left = torch.stack([ri(0, dw + 1), ri(0, dh + 1)], 1)
    top_right = torch.stack([ri(w - dw - 1, w), ri(0, dh + 1)], 1)
    bot_right = torch.stack([ri(w - dw - 1, w), ri(h - dh - 1, h)], 1)
    bot_left = torch.stack([ri(0, dw + 1), ri(h - dh - 1, h)], 1)
    end = torch.stack([top_left, top_right, bot_right, bot_left], 1).to(torch.float32)
    start = torch.tensor([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=torch.float32, device=device)
    return start.expand(n, 4, 2), end


def _rotation_homography(angles_deg: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N,3,3) output->input maps: counter-clockwise turn about the image centre, as torchvision.rotate."""
    t = torch.deg2rad(angles_deg.to(torch.float32))
    cos, sin = torch.cos(t), torch.sin(t)
    cx, cy = w / 2.0, h / 2.0
    m = torch.zeros(angles_deg.shape[0], 3, 3, device=angles_deg.device)
    # input = C + R(theta) (output - C) in y-down pixel coordinates; that reads as a counter-clockwise turn.
    m[:, 0, 0], m[:, 0, 1] = cos, -sin
    m[:, 1, 0], m[:, 1, 1] = sin, cos
    m[:, 0, 2] = cx - cos * cx + sin * cy
    m[:, 1, 2] = cy - sin * cx - cos * cy
    m[:, 2, 2] = 1.0
    return m


_HSV_K = torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)  # HSV->RGB phase of R, G, B in sixths of a turn


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of float RGB (N,3,H,W) by ``shift`` (N,) turns; same result as torchvision.adjust_hue.

    Works on any non-negative scale (0-1 or 0-255). A hue rotation keeps each pixel's max (V) and its
    chroma (max - min), so the output is ``max - chroma * ramp(hue + shift)`` without building S and V.
    """
    # Masks as float factors rather than torch.where, which is ~30x slower than a multiply on CPU.
    r, g, b = x.unbind(1)
    maxc = x.amax(1)
    chroma = maxc - x.amin(1)
    m_r = (maxc == r).to(x.dtype)
    m_g = (maxc == g).to(x.dtype) * (1.0 - m_r)
    m_b = 1.0 - m_r - m_g
    num = m_r * (g - b) + m_g * (b - r) + m_b * (r - g)
    offset = 2.0 * m_g + 4.0 * m_b
    # chroma == 0 implies num == 0, so the clamp only avoids 0/0 (hue 0 there, as in torchvision).
    safe = chroma.clamp_min(1e-12)
    hue6 = (num / safe + offset + 6.0 * shift.view(-1, 1, 1)).unsqueeze(1)  # hue in sixths of a turn
    k = torch.remainder(_HSV_K.to(x.device) + hue6, 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return maxc.unsqueeze(1) - chroma.unsqueeze(1) * ramp


def _rotate_nearest(x: torch.Tensor, homography: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour warp of any-dtype ``x`` by a gather: same pixels as ``grid_sample(mode="nearest")``.

    Working on uint8 directly avoids two float conversions of the whole batch.
    """
    n, c, h, w = x.shape
    sx, sy = _source_coords(homography, h, w)
    # grid_sample (align_corners=False) samples pixel round(p - 0.5), rounding half to even.
    ix = torch.round(sx - 0.5).to(torch.int64)
    iy = torch.round(sy - 0.5).to(torch.int64)
    valid = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    flat = (iy * w + ix) * valid  # invalid pixels read index 0, then get zeroed below
    out = x.reshape(n, c, h * w).gather(2, flat.view(n, 1, h * w).expand(n, c, h * w))
    return (out * valid.view(n, 1, h * w).to(x.dtype)).view(n, c, h, w)


def solarize(x: torch.Tensor, threshold: float, apply: torch.Tensor | None = None) -> torch.Tensor:
    """Invert uint8 pixels >= ``threshold`` (torchvision.solarize) in samples where ``apply`` (N,) is set."""
    invert = x >= threshold
    if apply is not None:
        invert &= apply.view(-1, 1, 1, 1)
    return torch.bitwise_xor(x, invert.to(torch.uint8) * 255)  # 255 - v == v ^ 0xFF for uint8


def strong_augment(x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """The study's oversample_aug transforms, per-sample random params, batched, uint8 (N,3,H,W) in/out.

    ColorJitter(brightness=0.5, hue=0.3), RandomPerspective(distortion 0.2, p=0.5 as torchvision's default,
    fill 0), RandomRotation((0, 180), fill 0), RandomSolarize(threshold 0.75*255, p=0.5).
    """
    if x.dtype != torch.uint8:
        raise ValueError(f"strong_augment expects uint8 images, got {x.dtype}")
    n, _, h, w = x.shape
    if n == 0:
        return x.clone()
    dev = x.device
    # Work in 0-255 floats: every step below is scale-free, which saves two passes over the batch.

    # ColorJitter: brightness and hue in a per-sample random order, as torchvision permutes them.
    factor = 1.0 - BRIGHTNESS + 2.0 * BRIGHTNESS * _rand(n, generator, dev)
    shift = HUE * (2.0 * _rand(n, generator, dev) - 1.0)
    brightness_first = _rand(n, generator, dev) < 0.5
    pre = torch.where(brightness_first, factor, torch.ones_like(factor)).view(n, 1, 1, 1)
    post = torch.where(brightness_first, torch.ones_like(factor), factor).view(n, 1, 1, 1)
    img = (x * pre).clamp_(0.0, 255.0)  # uint8 * float32 -> float32 in one pass
    img = adjust_hue(img, shift)
    img = img.mul_(post).clamp_(0.0, 255.0)

    # RandomPerspective (bilinear, p=0.5): warp only the selected samples.
    start, end = _perspective_endpoints(n, h, w, generator, dev)
    chosen = (_rand(n, generator, dev) < 0.5).nonzero().squeeze(1)
    if chosen.numel():
        hom = _perspective_homography(start[chosen], end[chosen]).to(torch.float32)
        img[chosen] = _warp(img[chosen], hom, "bilinear")

    # RandomRotation((0, 180)) with nearest interpolation (torchvision's default) only moves pixels, so it
    # commutes with the rounding back to uint8 and runs as a gather on the 4x smaller uint8 tensor.
    out = img.round_().clamp_(0, 255).to(torch.uint8)
    angles = MAX_DEGREES * _rand(n, generator, dev)
    out = _rotate_nearest(out, _rotation_homography(angles, h, w))
    return solarize(out, SOLARIZE_THRESHOLD, _rand(n, generator, dev) < 0.5)


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC -> per-channel mean, std (3,) in 0-1 units, reading a few million pixels at a time.

    Chunking keeps memory flat for memory-mapped arrays; sums are float64 so 50k x 1024 pixels stay exact.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"channel_stats expects a non-empty uint8 (N,H,W,3) array, got shape {images.shape}")
    chunk = max(1, (1 << 22) // (images.shape[1] * images.shape[2]))
    total = np.zeros(3, dtype=np.float64)
    total_sq = np.zeros(3, dtype=np.float64)
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start : start + chunk], dtype=np.float64).reshape(-1, 3)
        total += block.sum(0)
        total_sq += np.square(block).sum(0)
    count = len(images) * images.shape[1] * images.shape[2]
    mean = total / count
    var = np.maximum(total_sq / count - mean**2, 0.0)
    return (mean / 255.0).astype(np.float32), (np.sqrt(var) / 255.0).astype(np.float32)


__all__ = [
    "adjust_hue",
    "channel_stats",
    "normalize",
    "random_crop_flip",
    "solarize",
    "strong_augment",
]
