"""Rendered frames for WADO-RS (PS3.18 8.3.5): 8-bit PNG or JPEG, windowed and scaled.

Grayscale frames go through the modality LUT (Rescale Slope/Intercept), then a VOI
window (the request's `window=center,width,function`, else the data set's first
Window Center/Width, else the frame's range), then MONOCHROME1 is inverted; colour
frames stay colour (YBR_FULL converted to RGB), 16-bit colour scaled to 8 bits.
A `viewport=width,height` scales the frame to fit it, keeping its aspect ratio.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import imagecodecs
import numpy as np
from pydicom.pixels import convert_color_space

from pacs_engine.codecs._bitstream import YBR_FULL_FAMILY
from pacs_engine.errors import PacsEngineError

#: Rendered media types and their encoders.
PNG, JPEG = "image/png", "image/jpeg"
RENDERED_TYPES = (JPEG, PNG)
#: VOI LUT functions (PS3.3 C.11.2.1.2): `linear` is the default.
FUNCTIONS = ("linear", "linear-exact")
DEFAULT_QUALITY = 90
#: The edge a thumbnail fits in when the request gives no viewport.
THUMBNAIL_EDGE = 128
#: The largest viewport edge a request may ask for (a bound on the memory it costs).
MAX_VIEWPORT = 8192


class RenderError(PacsEngineError, ValueError):
    """A rendering parameter that cannot be honoured: says which and why (HTTP 400)."""


@dataclass(frozen=True)
class Rendering:
    """What a rendered request asks for, parsed from its query parameters."""

    window: tuple[float, float, str] | None = None
    viewport: tuple[int, int] | None = None
    quality: int = DEFAULT_QUALITY

    @classmethod
    def from_query(cls, params: Mapping[str, str], thumbnail: bool = False) -> Rendering:
        """The rendering a request's `window`, `viewport` and `quality` parameters ask for."""
        window = None
        if "window" in params:
            parts = params["window"].split(",")
            if len(parts) not in (2, 3):
                raise RenderError("window is center,width[,function]")
            center, width = _number(parts[0], "window center"), _number(parts[1], "window width")
            function = parts[2] if len(parts) == 3 else "linear"
            if function not in FUNCTIONS:
                raise RenderError(f"window function must be one of {', '.join(FUNCTIONS)}")
            if width < (1 if function == "linear" else 0) or width <= 0:
                raise RenderError("window width must be positive (at least 1 for linear)")
            window = (center, width, function)
        viewport = (THUMBNAIL_EDGE, THUMBNAIL_EDGE) if thumbnail else None
        if "viewport" in params:
            parts = params["viewport"].split(",")
            if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
                raise RenderError("viewport is width,height in pixels")
            width, height = int(parts[0]), int(parts[1])
            if not (0 < width <= MAX_VIEWPORT and 0 < height <= MAX_VIEWPORT):
                raise RenderError(f"viewport edges are 1 to {MAX_VIEWPORT} pixels")
            viewport = (width, height)
        quality = DEFAULT_QUALITY
        if "quality" in params:
            text = params["quality"]
            if not text.isdigit() or not 1 <= int(text) <= 100:
                raise RenderError("quality is a whole number from 1 to 100")
            quality = int(text)
        return cls(window, viewport, quality)


def _number(text: str, name: str) -> float:
    """A finite decimal number, or RenderError naming the parameter."""
    try:
        value = float(text)
    except ValueError:
        raise RenderError(f"{name} is not a number") from None
    if not np.isfinite(value):
        raise RenderError(f"{name} is not a finite number")
    return value


def _first(value: Any) -> float | None:
    """The first value of a (possibly multi-valued) attribute, or None."""
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    return float(value) if value not in (None, "") else None


def to_8bit(frame: np.ndarray, attributes: Mapping[str, Any], rendering: Rendering) -> np.ndarray:
    """The frame as 8-bit grayscale (rows, columns) or RGB (rows, columns, 3)."""
    photometric = str(attributes.get("PhotometricInterpretation") or "MONOCHROME2")
    if frame.ndim == 3:
        if photometric in YBR_FULL_FAMILY and attributes.get("color_conversion") == "none":
            frame = convert_color_space(frame, "YBR_FULL", "RGB")
        if frame.dtype.itemsize > 1:  # 16-bit colour: keep the top 8 of its stored bits
            bits = int(attributes.get("BitsStored") or 8 * frame.dtype.itemsize)
            frame = np.right_shift(frame, max(bits - 8, 0))
        return np.clip(frame, 0, 255).astype(np.uint8)
    slope = _first(attributes.get("RescaleSlope"))
    intercept = _first(attributes.get("RescaleIntercept"))
    values = frame.astype(np.float32)
    if slope is not None or intercept is not None:
        values = values * np.float32(slope if slope is not None else 1.0) + np.float32(
            intercept or 0.0
        )
    window = rendering.window
    if window is None:
        center = _first(attributes.get("WindowCenter"))
        width = _first(attributes.get("WindowWidth"))
        if center is not None and width is not None and width >= 1:
            window = (center, width, "linear")
        else:  # no VOI in the data set: the frame's own range
            low, high = float(values.min()), float(values.max())
            window = ((low + high) / 2, max(high - low, 1.0), "linear-exact")
    center, width, function = window
    if function == "linear":  # PS3.3 C.11.2.1.2.1
        scaled = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
    else:  # linear-exact, C.11.2.1.3.2
        scaled = ((values - center) / width + 0.5) * 255
    out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return out


def fit(image: np.ndarray, viewport: tuple[int, int] | None) -> np.ndarray:
    """The image scaled (nearest neighbour) to fit `viewport`, its aspect ratio kept."""
    if viewport is None:
        return image
    rows, columns = image.shape[:2]
    scale = min(viewport[0] / columns, viewport[1] / rows)
    height, width = max(1, round(rows * scale)), max(1, round(columns * scale))
    if (height, width) == (rows, columns):
        return image
    picked_rows = np.minimum(((np.arange(height) + 0.5) * rows / height).astype(int), rows - 1)
    picked_columns = np.minimum(
        ((np.arange(width) + 0.5) * columns / width).astype(int), columns - 1
    )
    return np.ascontiguousarray(image[picked_rows][:, picked_columns])


def render(
    frame: np.ndarray, attributes: Mapping[str, Any], rendering: Rendering, media_type: str
) -> bytes:
    """The frame rendered and encoded as `media_type` (PNG or JPEG)."""
    image = fit(to_8bit(frame, attributes, rendering), rendering.viewport)
    if media_type == PNG:
        return bytes(imagecodecs.png_encode(image))
    return bytes(imagecodecs.jpeg8_encode(image, level=rendering.quality))
