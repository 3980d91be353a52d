"""Sources: ImageFolder scanning and splitting, digits, and CIFAR-10's offline failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.data.sources import find_dataset_root, load_cifar10, load_digits, scan_imagefolder, stratified_split
from tests.data.conftest import write_folder


def test_class_folders_get_seeded_stratified_split(tmp_path: Path) -> None:
    write_folder(tmp_path / "ds", {"a": 10, "b": 5})
    listing = scan_imagefolder(tmp_path / "ds", test_fraction=0.2, seed=3)
    assert listing.classes == ["a", "b"] and listing.split == "seeded"
    assert np.bincount(listing.test_y).tolist() == [2, 1]
    assert np.bincount(listing.train_y).tolist() == [8, 4]
    again = scan_imagefolder(tmp_path / "ds", test_fraction=0.2, seed=3)
    assert again.test_files == listing.test_files
    other = scan_imagefolder(tmp_path / "ds", test_fraction=0.2, seed=4)
    assert other.test_files != listing.test_files
    assert not set(listing.test_files) & set(listing.train_files)


def test_train_test_tree_used_as_given(tmp_path: Path) -> None:
    write_folder(tmp_path, {"x": 3, "y": 2}, split=True, test_counts={"x": 1, "y": 1})
    listing = scan_imagefolder(tmp_path)
    assert listing.split == "folders"
    assert len(listing.train_files) == 5 and len(listing.test_files) == 2


def test_one_class_folder_refused(tmp_path: Path) -> None:
    write_folder(tmp_path, {"only": 4})
    with pytest.raises(ValueError, match="at least 2 class folders, found only"):
        scan_imagefolder(tmp_path)


def test_mismatched_train_test_classes_refused(tmp_path: Path) -> None:
    write_folder(tmp_path, {"x": 2, "y": 2}, split=True, test_counts={"x": 1, "z": 1})
    with pytest.raises(ValueError, match="unmatched"):
        scan_imagefolder(tmp_path)


def test_non_images_reported_and_wrapper_dir_descended(tmp_path: Path) -> None:
    write_folder(tmp_path / "wrap" / "ds", {"a": 3, "b": 3})
    (tmp_path / "wrap" / "ds" / "a" / "notes.txt").write_text("hello")
    listing = scan_imagefolder(tmp_path / "wrap")
    assert listing.root == tmp_path / "wrap" / "ds"
    assert listing.skipped == [("a/notes.txt", "not an image file")]
    assert find_dataset_root(tmp_path / "wrap") == tmp_path / "wrap" / "ds"


def test_bad_test_fraction_and_image_size(tmp_path: Path) -> None:
    write_folder(tmp_path, {"a": 3, "b": 3})
    with pytest.raises(ValueError, match="test_fraction"):
        scan_imagefolder(tmp_path, test_fraction=1.5)
    with pytest.raises(ValueError, match="image_size"):
        scan_imagefolder(tmp_path, image_size=(2, 2))


def test_stratified_split_keeps_a_train_sample_per_class() -> None:
    labels = np.array([0, 0, 1])
    tr, te = stratified_split(labels, 0.9, 0)
    assert set(labels[tr]) == {0, 1}


def test_digits_offline_demo() -> None:
    ds = load_digits()
    assert ds.train_x.shape[1:] == (32, 32, 3) and ds.train_x.dtype == np.uint8
    assert len(ds.train_x) + len(ds.test_x) == 1797
    assert ds.classes == [str(i) for i in range(10)]
    assert abs(len(ds.test_x) / 1797 - 0.2) < 0.01
    assert np.array_equal(ds.train_x[..., 0], ds.train_x[..., 2])  # gray as RGB
    assert np.array_equal(load_digits().test_y, ds.test_y)


def test_cifar10_offline_fails_fast_naming_imagefolder(tmp_path: Path) -> None:
    # The machine is offline: a bounded socket timeout turns the download into a quick, clear error.
    with pytest.raises(ValueError, match="could not download CIFAR-10 \\(offline\\?\\).*imagefolder"):
        load_cifar10(tmp_path / "cifar", download=True)


def test_cifar10_without_download_names_the_alternative(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="download is off.*imagefolder"):
        load_cifar10(tmp_path / "cifar", download=False)
