"""Choosing an archive codec per series from a sample frame."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

from pacs_engine.codecs._base import CodecError, FrameCodec
from pacs_engine.codecs.registry import ARCHIVE_CANDIDATES


def default_codec() -> FrameCodec:
    """The archive's default lossless codec: the first candidate, JPEG-LS at minimal precision."""
    return ARCHIVE_CANDIDATES[0]()


def fast_candidates(samples_per_pixel: int = 1) -> tuple[FrameCodec, ...]:
    """Codecs that encode at >= 50 MB/s per core on this kind of image (see docs/codecs.md)."""
    colour = samples_per_pixel != 1
    return tuple(cls() for cls in ARCHIVE_CANDIDATES if cls.candidate_colour or not colour)


def central_crop(frame: np.ndarray, max_pixels: int) -> np.ndarray:
    """The centred part of `frame` with at most about `max_pixels` pixels, same aspect ratio."""
    rows, cols = frame.shape[:2]
    scale = min(1.0, (max_pixels / max(rows * cols, 1)) ** 0.5)
    h, w = max(1, int(rows * scale)), max(1, int(cols * scale))
    top, left = (rows - h) // 2, (cols - w) // 2
    return frame[top : top + h, left : left + w]


def choose_codec(
    sample: np.ndarray,
    candidates: Sequence[FrameCodec] | None = None,
    margin: float = 0.02,
    max_pixels: int = 512 * 512,
    encoded: list[bytes] | None = None,
) -> FrameCodec:
    """The candidate that compresses `sample` (one frame of the series) best.

    The first candidate (JPEG-LS, a DICOM transfer syntax that can be served as is) is kept
    unless another one beats it by more than `margin`; candidates that cannot encode the
    sample (dtype, bit depth) are skipped. Frames larger than `max_pixels` are judged on
    their centre, so choosing costs at most three small encodes even for a one-image series.
    When the whole sample was judged, the chosen codec's encoding of it is appended to
    `encoded`: the sample's frame need not be encoded again.
    """
    import numpy as np

    frame = central_crop(sample, max_pixels)
    whole = frame.shape == sample.shape
    frame = np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("="))
    if candidates is None:
        candidates = fast_candidates(frame.shape[2] if frame.ndim == 3 else 1)
    best: FrameCodec | None = None
    best_size = 0.0
    best_bytes = b""
    for i, codec in enumerate(candidates):
        try:
            trial = codec.encode_frame(frame)
        except CodecError:
            continue
        size = float(len(trial))
        if best is None or size * (1.0 + (margin if i else 0.0)) < best_size:
            best, best_size, best_bytes = codec, size, trial
    if best is None:
        raise CodecError(f"no candidate codec can encode a {frame.dtype} {frame.shape} frame")
    if encoded is not None and whole:
        encoded.append(best_bytes)
    return best
