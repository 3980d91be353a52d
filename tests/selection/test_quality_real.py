"""Quality panel sanity on real CIFAR-10 (see evidence_setup.py), in the round-0 classifier's features.

Against the 50 kept real cats: the 300 held-out real cats must score high precision and coverage,
uniform noise images near zero, and real airplanes (another class) low. Noise is judged on density,
coverage and recall: Kynkäänniemi's precision counts a sample inside *any* real k-NN ball, and with 50
real images a few outlier cats have balls wide enough to swallow the collapsed noise features
(measured: precision 0.42, density 0.10, coverage 0.06) -- the flaw density and coverage fix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.data.transforms import channel_stats
from backend.selection.loop import SelectionConfig
from backend.selection.quality import quality_panel
from backend.selection.scoring import extract_features
from tests.selection.evidence_setup import SETTINGS, cached_train, load_evidence_data


@pytest.fixture(scope="module")
def panels(cifar10_root: Path) -> dict[str, dict]:
    d = load_evidence_data(cifar10_root)
    mean, std = (v.tolist() for v in channel_stats(d.real_x))
    model = cached_train(
        d.real_x, d.real_y, seed=0, num_classes=5, mean=mean, std=std, config=SelectionConfig(**SETTINGS),
        should_stop=lambda: False,
    )  # fmt: skip

    def feats(x: np.ndarray) -> np.ndarray:
        return extract_features(model, x, mean, std)

    kept = feats(d.real_x[d.real_y == d.cat_label])
    n_other = (len(d.pool_x) - int(d.pool_is_cat.sum())) // 4
    airplanes = d.pool_x[int(d.pool_is_cat.sum()) : int(d.pool_is_cat.sum()) + n_other]  # OTHERS[0]
    noise = np.random.default_rng(0).integers(0, 256, size=(300, 32, 32, 3), dtype=np.uint8)
    out = {
        "held-out cats": quality_panel(kept, feats(d.pool_x[d.pool_is_cat])),
        "noise": quality_panel(kept, feats(noise)),
        "airplanes": quality_panel(kept, feats(airplanes)),
    }
    for name, p in out.items():
        print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in p.items()})
    return out


def test_quality_panel_separates_real_minority_noise_and_another_class(panels: dict[str, dict]) -> None:
    cats, noise, planes = panels["held-out cats"], panels["noise"], panels["airplanes"]
    # measured (2-core CPU): cats P .91 R .94 D .91 C 1.0 FD 0.86; noise P .42 R 0 D .10 C .06 FD 8.9;
    # airplanes P .20 R .84 D .11 C .42 FD 21.8
    assert cats["precision"] >= 0.8 and cats["coverage"] >= 0.8 and cats["density"] >= 0.6, cats
    # Noise density is machine-dependent (the round classifier's CPU kernels): 0.10 on the machine of the
    # first measurement, 0.40 on another (cats 0.88 there); coverage and recall stay near zero on both.
    assert noise["coverage"] <= 0.15 and noise["recall"] <= 0.05, (noise, cats, planes)
    assert noise["density"] <= 0.5 * cats["density"], (noise, cats, planes)
    assert planes["precision"] <= cats["precision"] - 0.5 and planes["density"] <= cats["density"] - 0.5, planes
    assert planes["coverage"] <= cats["coverage"] - 0.3, planes
    assert cats["frechet"] * 5 < min(planes["frechet"], noise["frechet"]), (cats, planes, noise)
