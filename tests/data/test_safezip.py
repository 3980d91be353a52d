"""Safe zip extraction: traversal, links, ratio bombs, limits and non-UTF-8 names."""

from __future__ import annotations

import stat
import struct
import zipfile
from pathlib import Path

import pytest

from backend.data.safezip import ZipLimits, extract_zip


def _zip(path: Path, entries: list[tuple[str, bytes]], **kw) -> Path:
    with zipfile.ZipFile(path, "w", **kw) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def _files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_plain_archive_extracts(tmp_path: Path) -> None:
    z = _zip(tmp_path / "a.zip", [("data/cat/1.png", b"x"), ("data/dog/2.png", b"yy")])
    res = extract_zip(z, tmp_path / "out")
    assert sorted(res.extracted) == ["data/cat/1.png", "data/dog/2.png"]
    assert res.skipped == []
    assert (tmp_path / "out/data/dog/2.png").read_bytes() == b"yy"


def test_traversal_and_absolute_entries_refused(tmp_path: Path) -> None:
    entries = [("../evil.txt", b"x"), ("a/../../evil2.txt", b"x"), ("/etc/evil3", b"x"), ("C:/evil4", b"x")]
    entries += [("..\\evil5", b"x"), ("ok/fine.txt", b"ok")]
    res = extract_zip(_zip(tmp_path / "t.zip", entries), tmp_path / "out")
    assert res.extracted == ["ok/fine.txt"]
    reasons = dict(res.skipped)
    assert reasons["../evil.txt"] == "path contains '..'"
    assert reasons["/etc/evil3"] == "absolute path"
    assert len(res.skipped) == 5
    assert _files_under(tmp_path) == {"t.zip", "out/ok/fine.txt"}  # nothing landed outside out/


def test_symlink_entry_refused(tmp_path: Path) -> None:
    z = tmp_path / "l.zip"
    with zipfile.ZipFile(z, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
        zf.writestr("real.txt", b"r")
    res = extract_zip(z, tmp_path / "out")
    assert res.extracted == ["real.txt"]
    assert res.skipped == [("link", "symbolic link")]
    assert not (tmp_path / "out/link").exists()


def test_ten_thousand_to_one_ratio_refused(tmp_path: Path) -> None:
    zeros = bytes(20 << 20)  # 20 MiB of zeros -> a few hundred bytes of bzip2
    z = _zip(tmp_path / "bomb.zip", [("bomb.bin", zeros), ("ok.txt", b"fine")], compression=zipfile.ZIP_BZIP2)
    info = zipfile.ZipFile(z).getinfo("bomb.bin")
    assert info.file_size / info.compress_size > 10_000
    res = extract_zip(z, tmp_path / "out")
    assert res.extracted == ["ok.txt"]
    assert res.skipped[0][0] == "bomb.bin" and "compression ratio" in res.skipped[0][1]
    assert not (tmp_path / "out/bomb.bin").exists()


def test_total_size_and_entry_count_caps(tmp_path: Path) -> None:
    z = _zip(tmp_path / "many.zip", [(f"f{i}.txt", b"abc") for i in range(20)])
    with pytest.raises(ValueError, match="entries"):
        extract_zip(z, tmp_path / "o1", ZipLimits(max_entries=10))
    with pytest.raises(ValueError, match="expand to 60 bytes"):
        extract_zip(z, tmp_path / "o2", ZipLimits(max_total_bytes=50))
    assert not any((tmp_path / "o2").iterdir())


def test_entry_lying_about_its_size_is_cut_off(tmp_path: Path) -> None:
    z = _zip(tmp_path / "lie.zip", [("big.txt", b"a" * 1000)], compression=zipfile.ZIP_DEFLATED)
    raw = bytearray(z.read_bytes())
    # Shrink the declared uncompressed size in the central directory (offset 24 of its header) to 10.
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 24 : cd + 28] = struct.pack("<I", 10)
    z.write_bytes(bytes(raw))
    res = extract_zip(z, tmp_path / "out")
    assert res.extracted == []
    assert res.skipped[0][0] == "big.txt" and "corrupt" in res.skipped[0][1]
    assert _files_under(tmp_path / "out") == set()


def _raw_name_zip(path: Path, raw_name: bytes, data: bytes = b"img") -> Path:
    """A zip whose entry name is ``raw_name`` verbatim, with the UTF-8 flag (bit 11) unset."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("PLACEHOLDER" + "_" * (len(raw_name) - 11), data)
    blob = path.read_bytes().replace(("PLACEHOLDER" + "_" * (len(raw_name) - 11)).encode(), raw_name)
    path.write_bytes(blob)
    return path


def test_cp437_name_without_utf8_flag(tmp_path: Path) -> None:
    z = _raw_name_zip(tmp_path / "n.zip", b"caf\x82_name.png")  # 0x82 is e-acute in cp437, invalid UTF-8
    res = extract_zip(z, tmp_path / "out")
    assert res.extracted == ["café_name.png"]
    assert (tmp_path / "out/café_name.png").read_bytes() == b"img"


def test_utf8_name_without_flag_is_read_as_utf8(tmp_path: Path) -> None:
    z = _raw_name_zip(tmp_path / "u.zip", "猫_cat_image.png".encode())
    res = extract_zip(z, tmp_path / "out")
    assert res.extracted == ["猫_cat_image.png"]


def test_macos_clutter_and_non_zip(tmp_path: Path) -> None:
    z = _zip(tmp_path / "m.zip", [("__MACOSX/._a.png", b"x"), ("a.png", b"y")])
    res = extract_zip(z, tmp_path / "out")
    assert res.extracted == ["a.png"] and res.skipped == [("__MACOSX/._a.png", "macOS metadata")]
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable zip"):
        extract_zip(bad, tmp_path / "out2")
