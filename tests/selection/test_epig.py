"""EPIG on hand-made probability tensors, stochastic batch sampling, and the near-duplicate measure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend.selection import acquisition as acq
from backend.selection import scoring
from backend.selection.batch import near_duplicate_share, stochastic_order
from backend.selection.epig import epig
from tests.selection.test_scoring import MEAN, STD, TinyNet, _images

LN2 = math.log(2)
# T=2 posterior samples, one target image: sample 0 says class 0, sample 1 says class 1.
TARGET = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])


def test_epig_is_the_information_about_the_target_prediction() -> None:
    probs = np.array(
        [
            [[1.0, 0.0], [0.5, 0.5], [1.0, 0.0], [0.0, 1.0]],
            [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0], [1.0, 0.0]],
        ]
    )
    # 0: follows the target sample by sample -> knowing y tells y* exactly: I = ln 2.
    # 1: same for every sample (aleatoric doubt) and 2: confident everywhere -> independent of y*: 0.
    # 3: anti-correlated with the target -> just as informative: ln 2.
    np.testing.assert_allclose(epig(probs, TARGET), [LN2, 0.0, 0.0, LN2], atol=1e-9)
    # With T=4 samples, two candidates equally uncertain for BALD: one splits the samples {0,1}|{2,3},
    # the other {0,2}|{1,3} like the target. Only the second tells anything about the target.
    target = np.array([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]], [[0.0, 1.0]]])  # (T=4, M=1, C=2)
    unrelated = np.array([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]], [[0.0, 1.0]]])
    assert acq.bald(unrelated)[0] == pytest.approx(acq.bald(target)[0]) == pytest.approx(LN2)
    assert epig(target, target)[0] == pytest.approx(LN2, abs=1e-9)
    assert epig(unrelated, target)[0] == pytest.approx(0.0, abs=1e-9)


def test_epig_streams_in_chunks_and_checks_shapes() -> None:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=(6, 50))  # (T, N, C)
    q = rng.dirichlet(np.ones(4), size=(6, 7))  # (T, M, C)
    np.testing.assert_allclose(epig(p, q, chunk=3), epig(p, q, chunk=64), rtol=1e-12)
    assert (epig(p, q) >= 0).all()
    with pytest.raises(ValueError, match="agree"):
        epig(p, q[:5])
    summary = acq.summarize(p, 1, q)
    h = acq.get_heuristic("epig")
    assert h.needs_targets
    np.testing.assert_allclose(h.compute_score(p, 1, q), epig(p, q), rtol=1e-6)
    with pytest.raises(ValueError, match="epig"):
        h.score_summary(acq.summarize(p, 1))
    assert summary["epig"].shape == (50,)


def test_score_pool_epig_uses_shared_masks_and_is_batch_size_free() -> None:
    torch.manual_seed(0)
    model, x, targets = TinyNet(num_classes=3), _images(23), _images(5, seed=3)
    kw = dict(target=1, mc_samples=6, seed=2, targets=targets)
    a = scoring.score_pool(model, x, MEAN, STD, batch_size=4, **kw)
    b = scoring.score_pool(model, x, MEAN, STD, batch_size=23, **kw)
    np.testing.assert_allclose(a["epig"], b["epig"], rtol=1e-5, atol=1e-7)
    plain = scoring.score_pool(model, x, MEAN, STD, target=1, mc_samples=6, seed=2, batch_size=4)
    for key in acq.SUMMARY_KEYS:  # EPIG leaves every other summary as it was
        np.testing.assert_array_equal(a[key], plain[key])
    # Reference: the same shared masks on whole-pool features.
    with torch.no_grad(), scoring.mc_dropout_mode(model):
        masks = scoring.shared_masks(model, 6, 3, "cpu")
        f = torch.from_numpy(scoring.extract_features(model, x, MEAN, STD))
        ref = epig(
            scoring.shared_mask_probs(model, f, masks).numpy(),
            scoring.target_probs(model, targets, MEAN, STD, masks),
        )
    np.testing.assert_allclose(a["epig"], ref, rtol=1e-4, atol=1e-7)
    assert a["epig"].max() > 0


def test_stochastic_order_samples_by_score_and_none_is_top_k() -> None:
    scores = np.linspace(1.0, 0.0, 100)
    ranked = np.arange(100)
    np.testing.assert_array_equal(stochastic_order(ranked, scores, "none", 1.0, 0), ranked)
    for mode, beta in (("softmax", 5.0), ("power", 2.0), ("softrank", 1.0)):
        picks = np.stack([stochastic_order(ranked, scores, mode, beta, s)[:10] for s in range(200)])
        assert not np.array_equal(picks[0], ranked[:10])  # not top-k
        assert len(np.unique(picks[0])) == 10  # without replacement
        assert picks.mean() < 45  # but biased toward the high scores (uniform: 49.5)
    hot = stochastic_order(ranked, scores, "softmax", 1000.0, 0)[:10]
    np.testing.assert_array_equal(hot, ranked[:10])  # beta -> inf is top-k
    with pytest.raises(ValueError, match="stochastic"):
        stochastic_order(ranked, scores, "boltzmann", 1.0, 0)


def test_diversity_and_stochastic_rounds_avoid_near_copies() -> None:
    n = 40
    summary = {k: np.zeros(n, np.float32) for k in acq.SUMMARY_KEYS}
    summary["target_prob"] = np.linspace(1.0, 0.5, n).astype(np.float32)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(n, 8))
    feats[:10] = feats[0] + 1e-3 * rng.normal(size=(10, 8))  # the 10 best are one image
    fn = lambda idx: feats[idx]  # noqa: E731
    top = acq.get_heuristic("target_prob").select(summary, np.ones(n, bool), 5, fn).indices
    spread = acq.get_heuristic("target_prob", diversity="k_center").select(summary, np.ones(n, bool), 5, fn).indices
    sampled = acq.get_heuristic("target_prob", stochastic="softrank").select(summary, np.ones(n, bool), 5, fn).indices
    share = [near_duplicate_share(feats[i], 0.01) for i in (top, spread, sampled)]
    assert share[0] == 1.0  # top-k: all 10 pairs are copies
    assert share[1] <= 0.1 and share[2] < 1.0, share


def test_shared_masks_are_inverted_dropout_masks() -> None:
    """Each shared mask keeps a feature with probability 1 - p and scales it by 1 / (1 - p), so a pass sees the
    features at their eval-mode scale on average: without the scaling every EPIG pass would see the head's
    logits shrunk by (1 - p), and the comparison with full passes above uses the same function, so misses it."""
    torch.manual_seed(0)
    model = TinyNet(num_classes=3)
    p = model.head[0].p
    masks = scoring.shared_masks(model, 400, 5, "cpu")
    values = set(np.unique(masks.numpy()).round(5).tolist())
    assert values == {0.0, round(1 / (1 - p), 5)}
    assert masks.mean().item() == pytest.approx(1.0, abs=0.05)  # 400 x F draws: the mean keeps its expectation
    assert (masks == 0).float().mean().item() == pytest.approx(p, abs=0.05)
