"""Fixtures for the training tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_intra_op_thread() -> Iterator[None]:
    """Run each training test on one intra-op thread, restoring the setting afterwards.

    The test batches are tiny, so extra threads buy nothing; on a busy shared CI host, OpenMP threads
    waiting on each other made these tests several times slower than single-threaded ones.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
