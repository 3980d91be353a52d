"""Head-only MC-dropout scoring equals T full passes, and streaming equals scoring everything at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from backend.core.hooks import Stopped
from backend.selection import scoring
from backend.selection.acquisition import SUMMARY_KEYS, summarize
from backend.training.models import build_model

MEAN, STD = [0.5, 0.45, 0.4], [0.25, 0.24, 0.26]


class TinyNet(nn.Module):
    """A hand-built module with the features/head contract (conv + BN backbone, dropout head)."""

    def __init__(self, num_classes: int = 3, p: float = 0.5) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Sequential(nn.Dropout(p), nn.Linear(8, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def _warm_bn(model: nn.Module, x: np.ndarray) -> nn.Module:
    """Give BatchNorm non-trivial running stats, so eval vs train mode would make a difference."""
    model.train()
    with torch.no_grad():
        model(scoring.to_input(x, MEAN, STD, "cpu"))
    return model


@pytest.mark.parametrize("make", [lambda: TinyNet(), lambda: build_model("small", 4, dropout=0.5)])
def test_head_only_equals_full_passes(make) -> None:
    torch.manual_seed(0)
    x = _images(23)
    model = _warm_bn(make(), x)
    head = scoring.mc_probs(model, x, MEAN, STD, mc_samples=6, batch_size=8, seed=3, sequential=True)
    full = scoring.full_pass_probs(model, x, MEAN, STD, mc_samples=6, batch_size=8, seed=3)
    assert head.shape == full.shape == (6, 23, head.shape[2])
    np.testing.assert_allclose(head, full, rtol=1e-5, atol=1e-6)
    assert head.std(axis=0).max() > 1e-3  # the passes really differ: dropout is active
    assert model.training  # the caller's mode is restored


def test_batched_passes_match_full_passes_in_distribution() -> None:
    """The default path runs the T passes as one head call (masks drawn in another order): over many
    passes its per-image mean and spread match T full passes, and masks stay independent across passes
    (spread > 0) and across the images of one pass (no correlation between two images' outputs)."""
    torch.manual_seed(0)
    x = _images(3)
    model = _warm_bn(TinyNet(num_classes=3, p=0.5), _images(16))
    t = 2000
    batched = scoring.mc_probs(model, x, MEAN, STD, mc_samples=t, seed=1)
    # The sequential head passes stand for T full passes: bitwise equal to them (the test above).
    full = scoring.mc_probs(model, x, MEAN, STD, mc_samples=t, seed=2, sequential=True)
    assert batched.shape == full.shape == (t, 3, 3)
    spread = full.std(axis=0)
    assert spread.min() > 1e-3  # dropout makes the passes differ
    # Means agree within 5 standard errors; spreads within 10%.
    np.testing.assert_array_less(np.abs(batched.mean(0) - full.mean(0)), 5 * spread / np.sqrt(t) + 1e-6)
    np.testing.assert_allclose(batched.std(axis=0), spread, rtol=0.1)
    corr = np.corrcoef(batched[:, 0, 0], batched[:, 1, 0])[0, 1]
    assert abs(corr) < 0.1  # one mask shared by the images of a pass would correlate them


def test_scoring_precision_follows_native_bf16() -> None:
    from backend.training.trainer import cpu_has_native_bf16

    assert scoring.scoring_precision("cpu") == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert scoring.scoring_precision("cuda") == "bf16"
    # The bf16 path itself runs on any CPU (emulated where not native) and stays close to fp32.
    torch.manual_seed(0)
    model, x = build_model("small", 4, dropout=0.5).eval(), scoring.to_input(_images(8), MEAN, STD, "cpu")
    with torch.no_grad():
        fp32 = scoring._backbone(model, x, "cpu", bf16=False)
        bf16 = scoring._backbone(model, x, "cpu", bf16=True)
    assert fp32.dtype == bf16.dtype == torch.float32
    np.testing.assert_allclose(bf16.numpy(), fp32.numpy(), rtol=0.05, atol=0.05 * float(fp32.abs().max()))
    assert not torch.equal(bf16, fp32)  # the autocast really ran in bf16


def test_head_only_differs_when_the_backbone_has_dropout() -> None:
    """The equality above is not automatic: dropout inside the backbone breaks it."""
    torch.manual_seed(0)
    model = TinyNet()
    model.backbone.insert(4, nn.Dropout(0.5))
    x = _images(10)
    head = scoring.mc_probs(model, x, MEAN, STD, mc_samples=4, batch_size=10, seed=1)
    full = scoring.full_pass_probs(model, x, MEAN, STD, mc_samples=4, batch_size=10, seed=1)
    assert not np.allclose(head, full, atol=1e-4)


def test_scoring_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(0)
    model, x = TinyNet(), _images(12)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = scoring.mc_probs(model, x, MEAN, STD, mc_samples=3, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    b = scoring.mc_probs(model, x, MEAN, STD, mc_samples=3, seed=5)
    c = scoring.mc_probs(model, x, MEAN, STD, mc_samples=3, seed=6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_streaming_summaries_equal_whole_pool(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = TinyNet(num_classes=4), _images(37)
    np.save(tmp_path / "pool.npy", x)
    rows = scoring.NpyRows(tmp_path / "pool.npy")
    seen: list[float] = []
    streamed = scoring.score_pool(
        model, rows, MEAN, STD, target=2, mc_samples=5, batch_size=8, seed=9, progress=lambda f, m=None: seen.append(f)
    )
    whole = summarize(scoring.mc_probs(model, x, MEAN, STD, mc_samples=5, batch_size=8, seed=9), 2)
    for key in SUMMARY_KEYS:
        assert streamed[key].shape == (37,)
        np.testing.assert_allclose(streamed[key], whole[key], rtol=1e-5, atol=1e-6)
    assert seen[-1] == 1.0 and len(seen) == 5


def test_score_pool_stops_between_batches() -> None:
    model, x = TinyNet(), _images(20)
    calls = iter([False, True])
    with pytest.raises(Stopped):
        scoring.score_pool(model, x, MEAN, STD, target=0, mc_samples=2, batch_size=5, should_stop=lambda: next(calls))


def test_npy_rows_reads_slices_and_index_arrays(tmp_path: Path) -> None:
    x = _images(30, seed=4)
    np.save(tmp_path / "a.npy", x)
    rows = scoring.NpyRows(tmp_path / "a.npy")
    assert len(rows) == 30 and rows.shape == x.shape
    np.testing.assert_array_equal(rows[5:17], x[5:17])
    np.testing.assert_array_equal(rows[np.array([29, 0, 7])], x[[29, 0, 7]])
    np.save(tmp_path / "f.npy", x.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        scoring.NpyRows(tmp_path / "f.npy")


def test_extract_features_keeps_the_requested_order() -> None:
    torch.manual_seed(0)
    model, x = _warm_bn(TinyNet(), _images(25)), _images(25)
    everything = scoring.extract_features(model, x, MEAN, STD, batch_size=7)
    idx = np.array([20, 3, 11, 3, 0])
    np.testing.assert_allclose(
        scoring.extract_features(model, x, MEAN, STD, indices=idx, batch_size=2), everything[idx], atol=1e-6
    )


def test_scoring_puts_a_checkpoint_model_in_channels_last_without_changing_its_outputs() -> None:
    """A model loaded from a checkpoint comes in NCHW; scoring converts its weights once (the input is
    channels_last already) and the probabilities stay what the NCHW model gives."""
    torch.manual_seed(0)
    x = _images(9)
    model = _warm_bn(build_model("small", 4, dropout=0.5), x)
    reference = build_model("small", 4, dropout=0.5)
    reference.load_state_dict(model.state_dict())
    conv = model.backbone[0].weight
    assert conv.is_contiguous() and not conv.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():  # the same arithmetic as scoring (bf16 backbone where native), NCHW weights
        feats = scoring._backbone(reference.eval(), scoring.to_input(x, MEAN, STD, "cpu").contiguous(), "cpu")
        expected = torch.softmax(reference.head[1](feats), dim=1).numpy()
    model.head[0].p = 1e-9  # dropout that keeps every feature: each pass is the plain forward
    probs = scoring.mc_probs(model, x, MEAN, STD, mc_samples=2, batch_size=4, seed=0)
    assert model.backbone[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert probs.shape == (2, 9, 4)
    np.testing.assert_allclose(probs[0], expected, atol=0.01)
    np.testing.assert_allclose(probs[1], expected, atol=0.01)
