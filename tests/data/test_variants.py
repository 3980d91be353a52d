"""Variants built from a small decoded dataset, and the oversample sizes on real CIFAR-10."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.data.cache import DecodedDataset, build_cache
from backend.data.imbalance import apply_imbalance
from backend.data.sources import load_digits
from backend.data.variants import build_variant, oversample_index, with_synthetic


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DecodedDataset:
    return build_cache(load_digits(), tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def imb(digits: DecodedDataset):
    return apply_imbalance(digits.train_y, digits.classes, {"minority": "3", "keep": 10, "seed": 0})


def test_imbalanced_and_full(digits: DecodedDataset, imb) -> None:
    v = build_variant("imbalanced", digits, imb)
    assert v.counts(10)[3] == 10 and len(v) == len(imb.kept_idx)
    assert np.array_equal(v.images[0], digits.train_x[imb.kept_idx[0]])
    assert not v.strong_aug_mask.any() and v.class_weights is None
    assert set(v.origin) == {"real"}
    assert len(build_variant("full", digits, None)) == len(digits.train_y)


def test_oversample_reaches_median(digits: DecodedDataset, imb) -> None:
    v = build_variant("oversample", digits, imb)
    counts = np.bincount(digits.train_y[imb.kept_idx], minlength=10)
    assert v.counts(10)[3] == int(np.median(counts))
    # Every kept minority image is repeated (almost) equally often.
    rep = oversample_index(digits.train_y, imb.kept_idx, [3])
    per_image = np.unique(rep, return_counts=True)[1]
    assert per_image.max() - per_image.min() <= 1


def test_oversample_aug_flags_only_repeats(digits: DecodedDataset, imb) -> None:
    v = build_variant("oversample_aug", digits, imb)
    n_kept = len(imb.kept_idx)
    assert not v.strong_aug_mask[:n_kept].any() and v.strong_aug_mask[n_kept:].all()
    assert (v.labels[v.strong_aug_mask] == 3).all()


def test_class_weights_inverse_frequency_mean_one(digits: DecodedDataset, imb) -> None:
    v = build_variant("class_weighted", digits, imb)
    w = v.class_weights
    assert w is not None and w.shape == (10,)
    assert w[3] == w.max() and np.isclose(w[v.labels].mean(), 1.0, atol=1e-5)
    counts = v.counts(10)
    assert np.isclose(w[3] * counts[3], w[0] * counts[0], rtol=1e-5)


def test_with_synthetic_appends_minority(digits: DecodedDataset, imb) -> None:
    base = build_variant("imbalanced", digits, imb)
    fake = np.zeros((4, 32, 32, 3), np.uint8)
    prov = [{"pool_image_id": i} for i in range(4)]
    v = with_synthetic(base, fake, prov, minority_label=3)
    assert len(v) == len(base) + 4 and (v.labels[-4:] == 3).all()
    assert list(v.origin[-4:]) == ["synthetic"] * 4 and v.provenance[-1] == {"pool_image_id": 3}
    with pytest.raises(ValueError, match="provenance"):
        with_synthetic(base, fake, prov[:2], minority_label=3)
    with pytest.raises(ValueError, match="synthetic images must be"):
        with_synthetic(base, np.zeros((1, 8, 8, 3), np.uint8), prov[:1], minority_label=3)


def test_unknown_variant_and_missing_spec(digits: DecodedDataset) -> None:
    with pytest.raises(ValueError, match="unknown variant 'smote'"):
        build_variant("smote", digits, None)
    with pytest.raises(ValueError, match="needs an imbalance spec"):
        build_variant("oversample", digits, None)


@pytest.mark.slow
def test_real_cifar10_oversample_aug(cifar_cache: DecodedDataset) -> None:
    imb = apply_imbalance(cifar_cache.train_y, cifar_cache.classes, {"minority": "cat", "keep": 50, "seed": 0})
    v = build_variant("oversample_aug", cifar_cache, imb)
    assert v.counts(10).tolist() == [5000] * 10
    assert int(v.strong_aug_mask.sum()) == 4950
    assert v.images.shape == (50_000, 32, 32, 3)


def test_export_import_round_trip(digits: DecodedDataset, imb, tmp_path: Path) -> None:
    import json
    import zipfile

    from backend.data.export import export_zip
    from backend.data.safezip import extract_zip
    from backend.data.sources import scan_imagefolder

    base = build_variant("imbalanced", digits, imb)
    v = with_synthetic(base, np.full((2, 32, 32, 3), 7, np.uint8), [{"seed": 1}, {"seed": 2}], 3)
    out = export_zip(v, digits.classes, tmp_path / "exp.zip", test=(digits.test_x, digits.test_y))
    with zipfile.ZipFile(out) as zf:
        meta = [json.loads(line) for line in zf.read("metadata.jsonl").decode().splitlines()]
    assert len(meta) == len(v) + len(digits.test_y)
    synth = [m for m in meta if m["origin"] == "synthetic"]
    assert [m["provenance"] for m in synth] == [{"seed": 1}, {"seed": 2}]
    assert all(m["label"] == "3" and m["file"].startswith("train/3/") for m in synth)
    extract_zip(out, tmp_path / "x")
    listing = scan_imagefolder(tmp_path / "x")
    assert len(listing.train_files) == len(v) and listing.classes == digits.classes
