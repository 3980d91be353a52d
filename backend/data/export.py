"""Export a variant as an ImageFolder zip: ``train/<class>/<n>.png`` (+ ``test/`` if given) and metadata.

``metadata.jsonl`` has one JSON object per image: ``file``, ``label`` (class name), ``split``, ``origin``
("real"/"synthetic") and ``provenance`` (null for real images). PNGs are already compressed, so entries
are stored, not deflated. ``iter_zip`` streams it (downloads); ``export_zip`` writes it to a file.
"""

from __future__ import annotations

import io
import json
import os
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from backend.data.variants import Variant


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class _Sink(io.RawIOBase):
    """A write-only, unseekable stream: zipfile then writes data descriptors and never seeks back."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self._chunks = b"".join(self._chunks), []
        return out


def iter_zip(
    variant: Variant,
    classes: list[str],
    *,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    progress: Callable[..., None] | None = None,
) -> Iterator[bytes]:
    """The zip of ``variant`` (and the optional ``test`` = (images, labels)) as a stream of byte chunks.

    Memory stays at one image whatever the variant's size, and the first bytes leave before the last
    image is encoded (a download starts at once).
    """
    parts = [("train", variant.images, variant.labels, variant.origin, variant.provenance)]
    if test is not None:
        n = len(test[1])
        parts.append(("test", test[0], np.asarray(test[1]), np.full(n, "real", dtype=object), [None] * n))
    total = sum(len(p[2]) for p in parts)
    done = 0
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as zf:
        lines = []
        for split, images, labels, origin, provenance in parts:
            seen = np.zeros(len(classes), np.int64)
            for i in range(len(labels)):
                c = int(labels[i])
                name = f"{split}/{classes[c]}/{seen[c]:05d}.png"
                seen[c] += 1
                zf.writestr(name, _png(images[i]))
                record = {"file": name, "label": classes[c], "split": split, "origin": str(origin[i])}
                lines.append(json.dumps(record | {"provenance": provenance[i]}))
                done += 1
                if progress is not None and done % 1000 == 0:
                    progress(done / total, f"exported {done:,}/{total:,} images")
                yield sink.take()
        zf.writestr("metadata.jsonl", "\n".join(lines) + "\n", compress_type=zipfile.ZIP_DEFLATED)
    yield sink.take()


def export_zip(
    variant: Variant,
    classes: list[str],
    out_path: str | Path,
    *,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    progress: Callable[..., None] | None = None,
) -> Path:
    """Write :func:`iter_zip` to ``out_path`` (through a temporary sibling, renamed into place)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            for chunk in iter_zip(variant, classes, test=test, progress=progress):
                fh.write(chunk)
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_path
