"""WADO-RS (PS3.18 10.4): instances, metadata, frames, rendered, thumbnails and bulk data.

Every route needs the `reader` role and is audited. Instances go out as
`multipart/related; type="application/dicom"`, streamed one instance at a time:
`transfer-syntax=*` gives each original file byte for byte; the default (and
1.2.840.10008.1.2.1) is explicit VR little endian, made as C-GET makes it
(`serve.retrieve.native_dataset`); another syntax only for instances stored in it.

A frame is one chunk of a Zarr shard, so a frame request is an index lookup, one
read of the shard's index and one of the chunk. The chunk's bytes are sent as
they are when they are a valid stream of the syntax asked for: a frame kept as its
original bitstream, in its own syntax; the archive's own JPEG-LS chunk of a
single-sample frame as JPEG-LS lossless when its sample precision is what a DICOM
decoder expects (see `jpegls_chunk_ok`); the archive's HTJ2K chunk of a
single-sample frame as HTJ2K lossless; an uncompressed chunk as the frame's octets
when they are its native little-endian bytes. Otherwise the frame is decoded and
re-encoded: octets, JPEG-LS lossless or HTJ2K lossless; anything else is 406.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from pacs_engine.archive import Archive
from pacs_engine.archive.format import ArchiveError
from pacs_engine.archive.pixel_store import ArraySpec, decompress
from pacs_engine.archive.prepare import frame_hashes_like
from pacs_engine.codecs import BitstreamCodec, CodecError, Htj2kCoder, JpegLsCoder
from pacs_engine.codecs.jpegls import encode_jpegls, jpegls_precision
from pacs_engine.codecs.native import PixelLayout, to_bytes
from pacs_engine.errors import PacsEngineError
from pacs_engine.index.rows import PixelRef, Row
from pacs_engine.serve.retrieve import native_dataset, split_meta
from pacs_engine.serve.web import multipart
from pacs_engine.serve.web.render import (
    JPEG,
    PNG,
    RENDERED_TYPES,
    RenderError,
    Rendering,
    render,
)
from pacs_engine.serve.web.request import (
    ANY,
    MediaRange,
    accepted,
    audit,
    context,
    require,
    url_uid,
)

#: Binary elements longer than this go out as BulkDataURIs in metadata.
BULK_DATA_THRESHOLD = 1024
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
#: Word sizes of binary VRs, to make a big endian value little endian.
WORD_BYTES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
DICOM, DICOM_JSON, OCTETS = (
    "application/dicom",
    "application/dicom+json",
    "application/octet-stream",
)
JPEG_LS, HTJ2K, RLE = "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.5"
#: Frame media types of each transfer syntax (PS3.18 Table 8.7.3-2).
FRAME_MEDIA: dict[str, str] = {
    ExplicitVRLittleEndian: OCTETS,
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    RLE: "image/dicom-rle",
}
#: The transfer syntax of each frame media type when the request names none.
MEDIA_DEFAULT: dict[str, str] = {
    OCTETS: ExplicitVRLittleEndian,
    "image/jpeg": "1.2.840.10008.1.2.4.70",
    "image/jls": JPEG_LS,
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/jphc": HTJ2K,
    "image/dicom-rle": RLE,
}
#: Ways a frame is made: its chunk as is, or decoded (and re-encoded).
CHUNK, DECODE = "chunk", "decode"


# --- requests -----------------------------------------------------------------------


def checked_uid(value: str, what: str) -> str:
    """`value` if it has a UID's form; 400 otherwise (before it is used for anything)."""
    if not url_uid(value):
        raise HTTPException(400, f"the {what} UID in the path is not a UID")
    return value


def refuse(
    request: Request, action: str, status: int, message: str, study: str | None
) -> HTTPException:
    """Audit a refusal and make the exception that answers it."""
    audit(request, action, "refused", study=study, detail=f"{status}: {message}")
    return HTTPException(status, message)


@dataclass(frozen=True)
class Target:
    """What a path names: a study, series or instance, checked."""

    study: str
    series: str | None = None
    instance: str | None = None

    @classmethod
    def of(cls, request: Request) -> Target:
        """The UIDs of the request's path, each checked for a UID's form."""
        params = request.path_params
        series, instance = params.get("series"), params.get("instance")
        return cls(
            checked_uid(params["study"], "study"),
            checked_uid(series, "series") if series is not None else None,
            checked_uid(instance, "instance") if instance is not None else None,
        )

    @property
    def level(self) -> str:
        """study, series or instance."""
        return "instance" if self.instance else "series" if self.series else "study"

    def rows(self, archive: Archive) -> list[Row]:
        """The archived instances the path names (empty when there are none)."""
        if self.instance is not None:
            row = archive.index.get(self.instance)
            if row is None or not self.holds(row):
                return []
            return [row]
        filters: dict[str, Any] = {"StudyInstanceUID": [self.study]}
        if self.series is not None:
            filters["SeriesInstanceUID"] = [self.series]
        return cast(list[Row], archive.query("instance", strict=False, **filters))

    def holds(self, row: Row) -> bool:
        """Whether the row belongs to this path's study (and series)."""
        return row.get("StudyInstanceUID") == self.study and (
            self.series is None or row.get("SeriesInstanceUID") == self.series
        )


def found(request: Request, action: str) -> tuple[Archive, Target, list[Row]]:
    """The caller's role checked, the path's UIDs checked, and the instances it names (404)."""
    require(request, "reader", action)
    try:
        target = Target.of(request)
    except HTTPException as error:
        raise refuse(request, action, error.status_code, str(error.detail), None) from None
    archive = context(request).archive
    rows = target.rows(archive)
    if not rows:
        raise refuse(request, action, 404, f"no such {target.level} in the archive", target.study)
    return archive, target, rows


def instance_url(request: Request, row: Row) -> str:
    """The instance's WADO-RS URL."""
    base = str(request.base_url).rstrip("/")
    return (
        f"{base}/studies/{row['StudyInstanceUID']}/series/{row['SeriesInstanceUID']}"
        f"/instances/{row['SOPInstanceUID']}"
    )


# --- instances -----------------------------------------------------------------------


def instance_syntax(ranges: Sequence[MediaRange], rows: list[Row]) -> str:
    """The transfer syntax to send `rows` in ("*": as archived); 406 when none fits."""
    for media in ranges:
        if media.part_type not in (DICOM, ANY, "application/*"):
            continue
        syntax = media.syntax or ExplicitVRLittleEndian
        if syntax in ("*", ExplicitVRLittleEndian):
            return syntax
        if all(stored_syntax(row) == syntax for row in rows):
            return syntax
    raise HTTPException(
        406,
        "instances are sent as application/dicom with transfer-syntax=* (as archived), "
        f"{ExplicitVRLittleEndian} or the syntax they are stored in",
    )


def stored_syntax(row: Row) -> str:
    """The transfer syntax of the file `export` gives for a row."""
    if row.get("transcoded"):
        return ExplicitVRLittleEndian
    return str(row.get("transfer_syntax_uid") or "")


def instance_file(archive: Archive, row: Row, syntax: str) -> bytes:
    """One instance as a Part 10 file in `syntax` ("*": the archived file, byte for byte)."""
    data = archive.export_bytes(row["SOPInstanceUID"])
    if syntax == "*":
        return data
    start, stored = split_meta(data, row)
    if stored == syntax:
        return data
    body = native_dataset(archive, row, data, start, stored, UID(syntax))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(row.get("SOPClassUID") or "")
    meta.MediaStorageSOPInstanceUID = UID(row["SOPInstanceUID"])
    meta.TransferSyntaxUID = UID(syntax)
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue() + body


async def instances(request: Request) -> Response:
    """The study's, series' or instance's instances as multipart/related application/dicom."""
    action = "wado retrieve"
    archive, target, rows = found(request, action)
    try:
        syntax = instance_syntax(accepted(request.headers.get("accept")), rows)
    except HTTPException as error:
        raise refuse(request, action, 406, str(error.detail), target.study) from None
    boundary = multipart.new_boundary()
    kind = multipart.content_type(DICOM, boundary, syntax if syntax != "*" else None)
    detail = f"{target.level} {len(rows)} instance(s) as {syntax}"
    if len(rows) == 1:  # made before answering, so that a failure is a clean 500
        try:
            data = await run_in_threadpool(instance_file, archive, rows[0], syntax)
        except PacsEngineError as error:
            audit(request, action, "failed", target.study, f"{detail}: {error}")
            raise HTTPException(500, "cannot send the instance") from None
        audit(request, action, "success", target.study, detail)
        return Response(multipart.body(boundary, [(part_type(syntax), data)]), media_type=kind)

    def parts() -> Iterator[tuple[str, bytes]]:
        for row in rows:
            try:
                yield part_type(syntax), instance_file(archive, row, syntax)
            except PacsEngineError as error:  # the status is sent: the body stops short
                audit(request, action, "failed", target.study, f"{detail}: {error}")
                raise

    audit(request, action, "success", target.study, detail)
    return StreamingResponse(multipart.stream(boundary, parts()), media_type=kind)


def part_type(syntax: str) -> str:
    """The Content-Type of one instance part."""
    return DICOM if syntax == "*" else f"{DICOM}; transfer-syntax={syntax}"


# --- metadata and bulk data ---------------------------------------------------------


def element_paths(dataset: Dataset, prefix: str = "") -> dict[int, str]:
    """Each binary element's path (tags and 1-based item numbers), by the element's id."""
    paths: dict[int, str] = {}
    for element in dataset:
        path = f"{prefix}{element.tag:08X}"
        if element.VR == "SQ":
            for number, item in enumerate(element.value, 1):
                paths.update(element_paths(item, f"{path}/{number}/"))
        elif element.VR in BULK_VRS:
            paths[id(element)] = path
    return paths


def pixel_tag(row: Row) -> str:
    """The pixel data element's tag as 8 hex digits (Pixel Data, Float or Double Float)."""
    return f"{Tag(row.get('pixel_keyword') or 'PixelData'):08X}"


def instance_metadata(archive: Archive, row: Row, url: str) -> dict[str, Any]:
    """The instance's DICOM JSON, its bulk data (pixels included) as BulkDataURIs."""
    dataset = archive.header_dataset(row)
    paths = element_paths(dataset)
    bulk = f"{url}/bulkdata"

    def uri(element: DataElement) -> str:
        return f"{bulk}/{paths[id(element)]}"

    metadata = dataset.to_json_dict(BULK_DATA_THRESHOLD, uri)
    if row.get("pixels"):
        tag = pixel_tag(row)
        metadata[tag] = {"vr": row.get("pixel_vr") or "OW", "BulkDataURI": f"{bulk}/{tag}"}
    return metadata


async def metadata(request: Request) -> Response:
    """The DICOM JSON of the study's, series' or instance's instances."""
    action = "wado metadata"
    archive, target, rows = found(request, action)
    ranges = accepted(request.headers.get("accept"))
    if not any(r.type in (DICOM_JSON, "application/json", "application/*", ANY) for r in ranges):
        raise refuse(request, action, 406, f"metadata is sent as {DICOM_JSON}", target.study)

    def build() -> list[dict[str, Any]]:
        return [instance_metadata(archive, row, instance_url(request, row)) for row in rows]

    try:
        answer = await run_in_threadpool(build)
    except (PacsEngineError, ValueError, TypeError) as error:  # pydicom's JSON of odd values
        audit(request, action, "failed", target.study, f"{target.level}: {error}")
        raise HTTPException(500, "cannot make the metadata of an instance") from None
    audit(request, action, "success", target.study, f"{target.level} {len(rows)} instance(s)")
    return JSONResponse(answer, media_type=DICOM_JSON)


def element_at(dataset: Dataset, path: str) -> DataElement:
    """The element a bulk data path names; KeyError when there is none."""
    *steps, last = path.split("/")
    if len(steps) % 2:
        raise KeyError(path)
    for tag, number in zip(steps[::2], steps[1::2], strict=True):
        items = dataset[_tag(tag)].value
        if not number.isdigit() or not 1 <= int(number) <= len(items):
            raise KeyError(path)
        dataset = items[int(number) - 1]
    return dataset[_tag(last)]


def _tag(text: str) -> int:
    """An 8-hex-digit tag; KeyError otherwise."""
    if not re.fullmatch(r"[0-9A-Fa-f]{8}", text):
        raise KeyError(text)
    return int(text, 16)


def little_endian_value(element: DataElement, little: bool) -> bytes:
    """A binary element's value bytes, little endian."""
    value = bytes(element.value or b"")
    size = WORD_BYTES.get(element.VR)
    if little or size is None:
        return value
    return np.frombuffer(value, f">u{size}").astype(f"<u{size}").tobytes()


async def bulkdata(request: Request) -> Response:
    """One BulkDataURI's target: a binary element's value, or the pixel data as octets."""
    action = "wado bulkdata"
    archive, target, rows = found(request, action)
    (row,) = rows
    path = request.path_params["path"]
    if not any(r.part_type in (OCTETS, ANY) for r in accepted(request.headers.get("accept"))):
        raise refuse(request, action, 406, f"bulk data is sent as {OCTETS}", target.study)

    def value() -> bytes | None:
        if row.get("pixels") and path == pixel_tag(row):
            frames = archive.checked_frames_of(row)
            return b"".join(frame_octets(frame, row) for frame in frames)
        dataset = archive.header_dataset(row)
        try:
            element = element_at(dataset, path)
        except (KeyError, IndexError, TypeError):
            return None
        if element.VR not in BULK_VRS:
            return None
        return little_endian_value(element, bool(row.get("little_endian", True)))

    try:
        data = await run_in_threadpool(value)
    except (PacsEngineError, CodecError, ValueError) as error:  # ValueError: an odd length
        audit(request, action, "failed", target.study, f"{path}: {error}")
        raise HTTPException(500, "cannot read the bulk data") from None
    if data is None:
        raise refuse(request, action, 404, "no binary element at that bulk data path", target.study)
    audit(request, action, "success", target.study, f"{target.instance} {path}")
    boundary = multipart.new_boundary()
    return Response(
        multipart.body(boundary, [(OCTETS, data)]),
        media_type=multipart.content_type(OCTETS, boundary),
    )


# --- frames --------------------------------------------------------------------------


@dataclass(frozen=True)
class FramePlan:
    """How the frames of one instance are sent: their syntax, media type and way made."""

    syntax: str
    media: str
    how: str  # CHUNK or DECODE

    @property
    def part_type(self) -> str:
        """The Content-Type of each frame part."""
        return f"{self.media}; transfer-syntax={self.syntax}"


def kept_syntax(spec: ArraySpec) -> str | None:
    """The syntax of the chunks when they are original bitstreams, else None."""
    return spec.codec.transfer_syntax_uid if isinstance(spec.codec, BitstreamCodec) else None


def raw_octets(spec: ArraySpec, row: Row) -> bool:
    """Whether a chunk's bytes are the frame's octets (explicit VR little endian) as they are."""
    if spec.codec is not None or spec.compressors or spec.tile is not None:
        return False
    layout = layout_of(row)
    return (
        layout.bits_allocated == 8 * spec.dtype.itemsize
        and not layout.ybr422
        and (layout.samples == 1 or layout.planar_configuration == 0)
    )


def layout_of(row: Row) -> PixelLayout:
    """The frames' layout as octets: the data set's own when its pixels are stored native,
    else that of the decoded pixels (colour by pixel, RGB), as `Archive.native_bytes` has it.
    """
    layout = PixelLayout.from_attributes(row, row.get("pixel_keyword") or "PixelData")
    if row.get("pixel_storage") == "native" and not row.get("transcoded"):
        return layout
    if layout.samples == 1:
        return layout
    return dataclasses.replace(layout, planar_configuration=0, photometric="RGB")


def frame_octets(frame: np.ndarray, row: Row) -> bytes:
    """A decoded frame's octets, explicit VR little endian."""
    return to_bytes(frame[np.newaxis], layout_of(row), True, None)


def can_make(syntax: str, spec: ArraySpec, row: Row) -> str | None:
    """How frames of this array can be sent in `syntax` (CHUNK, DECODE), or None."""
    if syntax == kept_syntax(spec):
        return CHUNK
    if syntax == ExplicitVRLittleEndian:
        return CHUNK if raw_octets(spec, row) else DECODE
    single = spec.samples == 1 and spec.tile is None
    # JPEG-LS codes 2 to 16 bits a sample (CharLS refuses 1-bit frames).
    deep = layout_of(row).bits_stored >= 2
    if syntax == JPEG_LS and spec.samples == 1 and spec.dtype.itemsize <= 2 and deep:
        return CHUNK if isinstance(spec.codec, JpegLsCoder) and single else DECODE
    if syntax == HTJ2K and spec.samples == 1 and spec.dtype.itemsize <= 2:
        return CHUNK if isinstance(spec.codec, Htj2kCoder) and single else DECODE
    return None


def frame_plan(ranges: Sequence[MediaRange], spec: ArraySpec, row: Row) -> FramePlan:
    """The first acceptable way to send the frames; 406 when there is none."""
    kept = kept_syntax(spec)
    # Frames go out only in syntaxes with a frame media type (PS3.18 Table 8.7.3-2): not a
    # stored bitstream of another (deflated frames, a retired JPEG process), sent as octets.
    sendable = kept if kept in FRAME_MEDIA else None
    for media in ranges:
        part, asked = media.part_type, media.syntax
        if part in (ANY, "image/*"):
            if asked and asked != "*":
                candidates = [asked]
            else:  # the server's pick: the stored bitstream, else octets
                candidates = [sendable] if sendable else []
                candidates += [ExplicitVRLittleEndian] if part == ANY else []
        elif part in MEDIA_DEFAULT:
            if asked and asked != "*":
                candidates = [asked] if FRAME_MEDIA.get(asked) == part else []
            elif sendable and FRAME_MEDIA[sendable] == part:
                candidates = [sendable]
            else:
                candidates = [MEDIA_DEFAULT[part]]
        else:
            continue
        for syntax in candidates:
            how = can_make(syntax, spec, row) if syntax in FRAME_MEDIA else None
            if how is not None:
                return FramePlan(syntax, FRAME_MEDIA[syntax], how)
    raise HTTPException(
        406,
        "these frames are sent as application/octet-stream, image/jls, image/jphc"
        + (f" or {FRAME_MEDIA[sendable]} (transfer-syntax={sendable})" if sendable else ""),
    )


def frame_numbers(text: str, count: int) -> list[int]:
    """The 1-based frame numbers of a path's list; 400 when malformed or when one is listed
    twice (PS3.18: "non duplicate frame numbers"; each would be read and sent again), 404
    out of range."""
    numbers = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise HTTPException(400, "frame numbers are whole numbers from 1, comma-separated")
        numbers.append(int(item))
    if len(set(numbers)) != len(numbers):
        twice = next(n for n in numbers if numbers.count(n) > 1)
        raise HTTPException(400, f"frame {twice} is listed more than once")
    beyond = [n for n in numbers if n > count]
    if beyond:
        raise HTTPException(404, f"frame {beyond[0]} is beyond the instance's {count} frame(s)")
    return numbers


def jpegls_chunk_ok(chunk: bytes, row: Row) -> bool:
    """Whether the archive's JPEG-LS chunk is what a DICOM JPEG-LS decoder reads right.

    The archive encodes with the smallest precision P that holds the frame; unsigned
    values decode the same at any P <= Bits Stored, but a signed frame's two's
    complement is read from Bits Stored, so it must be P = Bits Stored.
    """
    precision = jpegls_precision(chunk)
    bits = int(row.get("BitsStored") or 0)
    return precision == bits if row.get("PixelRepresentation") else precision <= bits


def encode_frame(frame: np.ndarray, syntax: str, row: Row) -> bytes:
    """A decoded frame encoded in `syntax` (octets, JPEG-LS or HTJ2K lossless)."""
    if syntax == ExplicitVRLittleEndian:
        return frame_octets(frame, row)
    if syntax == HTJ2K:
        return Htj2kCoder().encode_frame(frame)
    # encode_jpegls keeps a signed sample's two's complement in Bits Stored bits, as DICOM
    # JPEG-LS reads it.
    return encode_jpegls(frame, int(row.get("BitsStored") or 8 * frame.dtype.itemsize))


class FrameSource:
    """The frames of one instance, as a plan says to send them."""

    def __init__(
        self, archive: Archive, row: Row, pixels: PixelRef, spec: ArraySpec, plan: FramePlan
    ) -> None:
        self.archive, self.row, self.spec, self.plan = archive, row, spec, plan
        self.array, self.first = pixels["array"], pixels["first_frame"]

    def chunk(self, number: int) -> bytes:
        """Frame `number`'s (1-based) stored chunk, its compressors undone."""
        index = self.first + number - 1
        (data,) = self.archive.pixels.read_chunks(self.array, index, index + 1)
        return bytes(decompress(self.spec, data))

    def frame(self, number: int) -> bytes:
        """Frame `number` in the plan's syntax."""
        if self.plan.how == CHUNK:
            data = self.chunk(number)
            if (
                self.plan.syntax != JPEG_LS
                or kept_syntax(self.spec)
                or jpegls_chunk_ok(data, self.row)
            ):
                return data
        return encode_frame(self.decoded(number), self.plan.syntax, self.row)

    def decoded(self, number: int) -> np.ndarray:
        """Frame `number` decoded, checked against its hash recorded at ingest (ArchiveError:
        a damaged chunk that still decodes). A frame sent as its stored chunk is not
        decoded, so not checked: `verify` finds such damage."""
        frame = self.archive.pixels.read_frames(self.array, [self.first + number - 1])[0]
        recorded = (self.row.get("frame_hashes") or [])[number - 1 : number]
        if recorded and frame_hashes_like([frame], recorded) != recorded:
            raise ArchiveError(f"frame {number} does not decode to the archived pixels")
        return frame


def frame_source(request: Request, action: str) -> tuple[FrameSource, Target, list[int]]:
    """The instance's frames (404 for an instance without), and the numbers asked for."""
    archive, target, rows = found(request, action)
    row = rows[0]
    pixels = row.get("pixels")
    if not pixels:
        raise refuse(
            request, action, 404, "the instance has no pixel data (no frames)", target.study
        )
    try:
        spec = archive.pixels.spec(pixels["array"])
    except PacsEngineError as error:
        audit(request, action, "failed", target.study, str(error))
        raise HTTPException(500, "the instance's pixel array cannot be read") from None
    try:
        numbers = frame_numbers(request.path_params.get("frames", "1"), pixels["frames"])
        if action.endswith("frames"):
            plan = frame_plan(accepted(request.headers.get("accept")), spec, row)
        else:  # rendered: frames are decoded
            plan = FramePlan(ExplicitVRLittleEndian, OCTETS, DECODE)
    except HTTPException as error:
        raise refuse(request, action, error.status_code, str(error.detail), target.study) from None
    return FrameSource(archive, row, pixels, spec, plan), target, numbers


async def frames(request: Request) -> Response:
    """Frames of an instance as multipart/related, from the shard chunks where they can be."""
    action = "wado frames"
    source, target, numbers = frame_source(request, action)
    plan = source.plan
    boundary = multipart.new_boundary()
    kind = multipart.content_type(plan.media, boundary, plan.syntax)

    def parts() -> list[tuple[str, bytes]]:
        return [(plan.part_type, source.frame(n)) for n in numbers]

    try:
        if plan.how == CHUNK and len(numbers) == 1:  # the hot path: two small reads, no hop
            made = parts()
        else:
            made = await run_in_threadpool(parts)
    except (PacsEngineError, CodecError, ValueError) as error:
        audit(request, action, "failed", target.study, f"{target.instance}: {error}")
        raise HTTPException(500, "cannot read the frames") from None
    audit(
        request,
        action,
        "success",
        target.study,
        f"{target.instance} frames {','.join(map(str, numbers))} as {plan.syntax} ({plan.how})",
    )
    return Response(multipart.body(boundary, made), media_type=kind)


# --- rendered ------------------------------------------------------------------------


def rendered_type(ranges: Sequence[MediaRange]) -> str | None:
    """The rendered media type to answer with, or None when none is acceptable."""
    for media in ranges:
        if media.type in RENDERED_TYPES:
            return media.type
        if media.type in (ANY, "image/*"):
            return JPEG
    return None


def rendered_route(thumbnail: bool, whole_instance: bool) -> Callable[[Request], Any]:
    """The endpoint of a rendered or thumbnail resource (of an instance or its frames)."""
    name = "thumbnail" if thumbnail else "rendered"
    action = f"wado {name}"

    async def endpoint(request: Request) -> Response:
        source, target, numbers = frame_source(request, action)
        media = rendered_type(accepted(request.headers.get("accept")))
        if media is None:
            raise refuse(request, action, 406, f"{name} images are {JPEG} or {PNG}", target.study)
        if len(numbers) != 1 and not whole_instance:
            raise refuse(request, action, 400, f"a {name} frame is one frame", target.study)
        try:
            rendering = Rendering.from_query(request.query_params, thumbnail)
        except RenderError as error:
            raise refuse(request, action, 400, str(error), target.study) from None

        def make() -> bytes:
            return render(source.decoded(numbers[0]), source.row, rendering, media)

        try:
            data = await run_in_threadpool(make)
        # RuntimeError: imagecodecs' encoders' own errors (an image too wide for a JPEG).
        except (PacsEngineError, CodecError, ValueError, RuntimeError) as error:
            audit(request, action, "failed", target.study, f"{target.instance}: {error}")
            raise HTTPException(500, f"cannot render the {name}") from None
        audit(request, action, "success", target.study, f"{target.instance} frame {numbers[0]}")
        return Response(data, media_type=media)

    return endpoint


def routes() -> list[BaseRoute]:
    """The WADO-RS routes."""
    study = "/studies/{study}"
    series = f"{study}/series/{{series}}"
    instance = f"{series}/instances/{{instance}}"
    frame = f"{instance}/frames/{{frames}}"
    get = ["GET"]
    return [
        Route(study, instances, methods=get),
        Route(series, instances, methods=get),
        Route(instance, instances, methods=get),
        Route(f"{study}/metadata", metadata, methods=get),
        Route(f"{series}/metadata", metadata, methods=get),
        Route(f"{instance}/metadata", metadata, methods=get),
        Route(f"{instance}/bulkdata/{{path:path}}", bulkdata, methods=get),
        Route(frame, frames, methods=get),
        Route(f"{instance}/rendered", rendered_route(False, True), methods=get),
        Route(f"{instance}/thumbnail", rendered_route(True, True), methods=get),
        Route(f"{frame}/rendered", rendered_route(False, False), methods=get),
        Route(f"{frame}/thumbnail", rendered_route(True, False), methods=get),
    ]
