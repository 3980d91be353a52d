"""Extract an untrusted zip archive into one directory without ever writing outside it.

Whole-archive limits (entry count, total declared uncompressed size) refuse the archive with a
``ValueError`` before anything is written. Per-entry problems skip that entry with a reason and carry on:
``..`` components, absolute or drive paths, symlinks and other special files, encrypted entries,
suspicious compression ratios (only checked above ``ratio_min_bytes``: small flat images legitimately
compress 100:1 and cannot hurt), corrupt data, duplicates, and macOS resource-fork clutter. Bytes are
counted while streaming, so an entry that lies about its size in the header is cut off, not trusted.

File names without the UTF-8 flag (bit 11) are read as UTF-8 when their raw bytes are valid UTF-8 (what
most modern zip tools write without setting the flag), else as cp437 (the zip standard), so a name never
crashes extraction.
"""

from __future__ import annotations

import os
import stat
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

UTF8_FLAG = 0x800
ENCRYPTED_FLAG = 0x1
CHUNK = 1 << 20


@dataclass(frozen=True)
class ZipLimits:
    """Caps applied to one archive."""

    max_entries: int = 250_000
    max_total_bytes: int = 8 << 30  # total declared uncompressed size
    max_ratio: float = 100.0  # uncompressed / compressed, per entry
    ratio_min_bytes: int = 1 << 20  # entries smaller than this are exempt from the ratio check


@dataclass
class ExtractResult:
    """What was written (paths relative to the destination, POSIX style) and what was refused, with why."""

    extracted: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def entry_name(info: zipfile.ZipInfo) -> str:
    """The entry's name, decoded as described in the module docstring."""
    if info.flag_bits & UTF8_FLAG:
        return info.filename
    try:
        raw = info.orig_filename.encode("cp437")  # zipfile decoded it as cp437: this recovers the bytes
    except UnicodeEncodeError:
        return info.filename
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp437")


def _safe_relative(name: str) -> tuple[PurePosixPath | None, str]:
    """(relative path, "") when ``name`` is safe to create under the destination, else (None, reason)."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return None, "absolute path"
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        return None, "path contains '..'"
    if not parts:
        return None, "empty name"
    if any(ord(ch) < 32 or ch == "\x7f" for ch in posix):
        return None, "control character in name"
    if parts[0] == "__MACOSX" or parts[-1].startswith("._") or parts[-1] == ".DS_Store":
        return None, "macOS metadata"
    return PurePosixPath(*parts), ""


def extract_zip(zip_path: str | Path, dest: str | Path, limits: ZipLimits = ZipLimits()) -> ExtractResult:
    """Safely extract ``zip_path`` into ``dest`` (created if needed). See the module docstring for the rules."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"not a readable zip archive: {exc}") from exc
    result = ExtractResult()
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_entries:
            raise ValueError(f"zip has {len(infos):,} entries, more than the limit of {limits.max_entries:,}")
        declared = sum(i.file_size for i in infos)
        if declared > limits.max_total_bytes:
            raise ValueError(
                f"zip would expand to {declared:,} bytes, more than the limit of {limits.max_total_bytes:,}"
            )
        budget = limits.max_total_bytes
        seen: set[str] = set()
        for info in infos:
            name = entry_name(info)
            rel, reason = _safe_relative(name)
            mode = info.external_attr >> 16
            if rel is None:
                pass
            elif info.is_dir():
                (root / rel).mkdir(parents=True, exist_ok=True)
                continue
            elif stat.S_IFMT(mode) and not stat.S_ISREG(mode):  # no type bits (DOS, writestr): a file
                reason = "symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
            elif info.flag_bits & ENCRYPTED_FLAG:
                reason = "encrypted entry"
            elif info.file_size >= limits.ratio_min_bytes and (
                info.file_size > limits.max_ratio * max(info.compress_size, 1)
            ):
                ratio = info.file_size / max(info.compress_size, 1)
                reason = f"compression ratio {ratio:,.0f}:1 exceeds {limits.max_ratio:,.0f}:1"
            elif str(rel) in seen:
                reason = "duplicate entry"
            if reason:
                result.skipped.append((name, reason))
                continue
            assert rel is not None
            target = (root / rel).resolve()
            if not target.is_relative_to(root) or target == root:
                result.skipped.append((name, "escapes the destination"))
                continue
            try:
                written = _stream_entry(archive, info, target, min(info.file_size, budget))
            except (zipfile.BadZipFile, OSError, NotImplementedError, EOFError, ValueError) as exc:
                result.skipped.append((name, f"corrupt entry ({type(exc).__name__})"))
                continue
            budget -= written
            seen.add(str(rel))
            result.extracted.append(str(rel))
    return result


def _stream_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, cap: int) -> int:
    """Copy one entry to ``target`` via a temp file, refusing more than ``cap`` bytes; returns bytes written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.parent.resolve() != target.parent or target.is_symlink():
        raise OSError("destination path contains a link")
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    written = 0
    try:
        with archive.open(info) as src, open(tmp, "wb") as out:
            while chunk := src.read(CHUNK):
                written += len(chunk)
                if written > cap:
                    raise ValueError("entry is larger than its header declares")
                out.write(chunk)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return written
