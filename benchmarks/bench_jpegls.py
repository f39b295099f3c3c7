"""The JPEG-LS encoder: the vendored CharLS against pyjpegls's build, same frames, same P.

Every integer frame of the codec benchmark's set (bench_codecs.corpus_images: the
corpus's CT, MR, CR/DX and US frames from lossless sources, de-duplicated) with at most
16 bits is encoded at the sample precision JpegLsCodec would use (the bits its values
need; signed frames as two's complement in that many bits) by both encoders. Both must
write the same bytes (checked on every frame); the table gives MB/s on one thread (raw
bytes / summed best-of-N time) by precision, and the speed-up, measured in the same run.

    .venv/bin/python -m pytest benchmarks/bench_jpegls.py -q -s -p no:cacheprovider
"""

from __future__ import annotations

from collections import defaultdict
from functools import partial

import numpy as np
import pytest

from benchmarks.bench_codecs import REPEATS, corpus_images
from benchmarks.conftest import NO_CORPUS
from benchmarks.read_compare import best_of
from pacs_engine.codecs._base import signed_precision, unsigned_precision, value_range
from pacs_engine.codecs.jpegls import encode_jpegls

#: Precision groups: CharLS's upstream fast path serves 8, 12 and 16 only.
GROUPS = {"P 2-8": range(2, 9), "P 9-11": range(9, 12), "P 12": (12,), "P 13-16": range(13, 17)}


def _as_encoded(frame: np.ndarray) -> tuple[np.ndarray, int]:
    """The unsigned samples and P that JpegLsCodec("minimal") hands to the encoder."""
    low, high = value_range(frame)
    if frame.dtype.kind == "i":
        bits = max(signed_precision(low, high), 2)
        return frame.astype(np.int32) & ((1 << bits) - 1), bits
    return frame, max(unsigned_precision(high), 2)


def test_native_jpegls_against_pyjpegls() -> None:
    """Same bytes from both encoders on every frame; MB/s of each by precision."""
    import jpeg_ls

    images = corpus_images()
    if not images:
        pytest.skip(NO_CORPUS)
    raw: dict[str, int] = defaultdict(int)
    seconds: dict[tuple[str, str], float] = defaultdict(float)
    frames: dict[str, int] = defaultdict(int)
    for image in images:
        values, bits = _as_encoded(image.frame)
        if bits > 16:
            continue
        group = next(name for name, span in GROUPS.items() if bits in span)
        rows, cols = values.shape[:2]
        samples = values.shape[2] if values.ndim == 3 else 1
        storage = np.ascontiguousarray(values, "u1" if bits <= 8 else "<u2")
        data = storage.tobytes()
        ours_s, ours = best_of(partial(encode_jpegls, storage, bits), REPEATS)
        theirs = partial(jpeg_ls.encode_buffer, data, rows, cols, samples, bits, 0, 2)
        theirs_s, theirs = best_of(theirs, REPEATS)
        assert ours == bytes(theirs), f"{image.series}: the streams differ at P = {bits}"
        raw[group] += storage.nbytes
        frames[group] += 1
        seconds[group, "native"] += ours_s
        seconds[group, "pyjpegls"] += theirs_s
    lines = [
        f"JPEG-LS encode, one thread, best of {REPEATS}: vendored CharLS vs pyjpegls, same bytes",
        f"{'precision':<10} {'frames':>7} {'native MB/s':>12} {'pyjpegls MB/s':>14}"
        f" {'speed-up':>9}",
    ]
    for group in [*GROUPS, "all"]:
        names = list(GROUPS) if group == "all" else [group]
        size = sum(raw[g] for g in names)
        if not size:
            continue
        native = size / sum(seconds[g, "native"] for g in names) / 1e6
        other = size / sum(seconds[g, "pyjpegls"] for g in names) / 1e6
        count = sum(frames[g] for g in names)
        lines.append(
            f"{group:<10} {count:>7} {native:>12.1f} {other:>14.1f} {native / other:>8.2f}x"
        )
    print("\n" + "\n".join(lines))
