"""Evidence on real CIFAR-10 that the selection picks the minority class (see evidence_setup.py).

Candidates are half real cats the imbalance removed, half other classes; random picking gets ~50%
cats. The figures for every acquisition function come from ``benchmarks/bench_select.py --evidence``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.selection.evidence_setup import load_evidence_data, run_evidence


@pytest.fixture(scope="module")
def evidence_data(cifar10_root: Path):
    return load_evidence_data(cifar10_root)


@pytest.mark.parametrize("acquisition", ["target_prob", "validity_then_bald"])
def test_selection_picks_real_minority_images(evidence_data, acquisition: str) -> None:
    share, per_round = run_evidence(evidence_data, acquisition)
    print(f"{acquisition}: {100 * share:.1f}% of 150 picks are real cats (rounds: {per_round})")
    assert share >= 0.70, (acquisition, share, per_round)
