"""WADO-RS (serve/web/wado.py) over real HTTP: dicomweb-client and httpx against the app.

The archive holds corpus files of several transfer syntaxes (native, implicit VR,
JPEG baseline, JPEG-LS, JPEG 2000, RLE, multi-frame, colour, an SR without pixels),
rewritten under new UIDs into one study. What the server sends is compared with
what pydicom makes of the same files: the original bytes, every frame decoded, the
DICOM JSON; rendered frames with dcmtk's dcmj2pnm; metadata with Orthanc's DICOMweb
plugin.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import imagecodecs
import numpy as np
import pydicom
import pytest
from conftest import benchmark_module, require_corpus
from dicomweb_client.api import DICOMwebClient
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import UID, ExplicitVRLittleEndian
from starlette.requests import Request
from web_helpers import serving_app

from pacs_engine import Archive
from pacs_engine.archive.pixel_store import PixelStore
from pacs_engine.serve.audit import AuditLog, read_records
from pacs_engine.serve.config import ServeConfig
from pacs_engine.serve.context import ServeContext
from pacs_engine.serve.retrieve import NotSendable
from pacs_engine.serve.web import wado
from pacs_engine.serve.web.app import make_app
from pacs_engine.serve.web.request import Principal

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
TOKEN, UPLOADER_TOKEN = "reader-token", "uploader-token"
ICON = bytes(range(256)) * 10
WORDS = bytes(range(256)) * 8  # an OW value, as a big endian data set holds it
BIG_ENDIAN = "1.2.840.10008.1.2.2"
STUDY = "1.2.826.0.1.3680043.8.498.14.1"
JPEG_LS, HTJ2K = "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.201"
#: Corpus files (several syntaxes); each becomes series n of the one study.
SOURCES = [
    "pydicom/test_files/CT_small.dcm",
    "pydicom/test_files/MR_small_implicit.dcm",
    "pydicom/test_files/MR_small_bigendian.dcm",
    "pydicom-data/emri_small.dcm",
    "pydicom/test_files/SC_rgb_small_odd.dcm",
    "pylibjpeg-data/JPEGBaseline/JPEGBaseline_1s_1f_u_08_08.dcm",
    "pydicom/test_files/SC_rgb_dcmtk_+eb+cy+np.dcm",
    "pydicom/test_files/MR_small_jpeg_ls_lossless.dcm",
    "pydicom-data/emri_small_jpeg_ls_lossless.dcm",
    "pydicom/test_files/MR_small_jp2klossless.dcm",
    "pydicom/test_files/JPEG2000.dcm",
    "pydicom-data/emri_small_RLE.dcm",
    "pydicom/test_files/SC_rgb_rle.dcm",
    "pydicom/test_files/test-SR.dcm",
    "pydicom-data/RG3_J2KR.dcm",  # MONOCHROME1, written decompressed (dcmj2pnm reads it so)
]
#: Sources written with their pixels decompressed (native), by file name.
DECOMPRESSED = {"RG3_J2KR.dcm"}


@dataclass
class Source:
    """One archived test file: its bytes, pydicom's reading, its UIDs."""

    name: str
    data: bytes
    dataset: pydicom.Dataset
    series: str
    sop: str

    @property
    def url(self) -> str:
        return f"/studies/{STUDY}/series/{self.series}/instances/{self.sop}"

    @property
    def frames(self) -> int:
        return int(self.dataset.get("NumberOfFrames") or 1)

    @property
    def has_pixels(self) -> bool:
        return "PixelData" in self.dataset

    @property
    def syntax(self) -> str:
        return str(self.dataset.file_meta.TransferSyntaxUID)

    def pixels(self) -> np.ndarray:
        """pydicom's decoded frames, shaped (frames, rows, columns[, samples])."""
        arr = self.dataset.pixel_array
        return arr.reshape(self.frames, *arr.shape[-3 + (self.dataset.SamplesPerPixel == 1) :])


@dataclass
class Server:
    base: str
    root: Path
    sources: list[Source]

    def client(self) -> DICOMwebClient:
        return DICOMwebClient(url=self.base, headers={"Authorization": f"Bearer {TOKEN}"})

    def get(self, path: str, accept: str | None = None, token: str = TOKEN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if accept is not None:
            headers["Accept"] = accept
        return httpx.get(f"{self.base}{path}", headers=headers, timeout=60)

    def source(self, name: str) -> Source:
        (found,) = [s for s in self.sources if s.name == name]
        return found

    def last_audit(self) -> dict[str, Any]:
        return list(read_records(self.root))[-1]


def write_sources(folder: Path) -> list[Source]:
    """The corpus files under new UIDs, one series each, written as pydicom writes them."""
    corpus = require_corpus()
    folder.mkdir()
    sources = []
    for n, relative in enumerate(SOURCES, 1):
        dataset = pydicom.dcmread(corpus / relative)
        series, sop = f"{STUDY}.{n}", f"{STUDY}.{n}.1"
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID = (
            STUDY,
            series,
            sop,
        )
        dataset.file_meta.MediaStorageSOPInstanceUID = sop
        if "PixelData" not in dataset:  # a binary element inside a sequence: nested bulk data
            icon = pydicom.Dataset()
            icon.Rows, icon.Columns, icon.BitsAllocated = 40, 64, 8
            icon.add_new("PixelData", "OB", ICON)
            dataset.IconImageSequence = [icon]
        if dataset.file_meta.TransferSyntaxUID == BIG_ENDIAN:  # big endian words: bulk data
            dataset.add_new("RedPaletteColorLookupTableData", "OW", WORDS)
        if Path(relative).name in DECOMPRESSED:
            dataset.decompress(generate_instance_uid=False)
        path = folder / f"{n}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        data = path.read_bytes()
        sources.append(
            Source(Path(relative).name, data, pydicom.dcmread(BytesIO(data)), series, sop)
        )
    return sources


@pytest.fixture(scope="module")
def authenticator() -> Any:
    """The test's stand-in for the real authenticator: fixed bearer tokens (one place)."""
    principals = {
        TOKEN: Principal("tester", frozenset({"reader"})),
        UPLOADER_TOKEN: Principal("uploader", frozenset({"uploader"})),
    }

    def authenticate(request: Request) -> Principal | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return principals.get(token) if scheme == "Bearer" else None

    return authenticate


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, authenticator: Any) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("wado")
    sources = write_sources(root / "src")
    archive = Archive.create(root / "archive")
    report = archive.ingest([root / "src"], workers=0)
    assert report.archived == len(SOURCES), report
    context = ServeContext(archive, ServeConfig(), AuditLog(root / "archive", sync_seconds=0.0))
    app = make_app(context, authenticator, routes=wado.routes())
    try:
        with serving_app(app) as base:
            yield Server(base, root / "archive", sources)
    finally:
        archive.close()


def parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related response."""
    assert response.status_code == 200, response.text
    kind = response.headers["content-type"]
    assert kind.startswith("multipart/related"), kind
    boundary = re.search(r"boundary=\"?([^\";]+)", kind).group(1).encode()  # type: ignore[union-attr]
    body = response.content
    assert body.endswith(b"--" + boundary + b"--\r\n")
    found = []
    for chunk in body.split(b"--" + boundary)[1:-1]:
        head, _, data = chunk.partition(b"\r\n\r\n")
        assert data.endswith(b"\r\n")
        (line,) = [h for h in head.decode().split("\r\n") if h.lower().startswith("content-type:")]
        found.append((line.split(":", 1)[1].strip(), data[:-2]))
    return found


def decode_frame(source: Source, data: bytes, syntax: str) -> np.ndarray:
    """One frame's bytes as pydicom decodes them with the source's pixel module in `syntax`."""
    dataset = pydicom.Dataset()
    for keyword in (
        "Rows",
        "Columns",
        "SamplesPerPixel",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "PhotometricInterpretation",
        "PlanarConfiguration",
    ):
        if keyword in source.dataset:
            setattr(dataset, keyword, source.dataset[keyword].value)
    dataset.NumberOfFrames = 1
    dataset.file_meta = pydicom.dataset.FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = syntax
    if syntax == ExplicitVRLittleEndian:
        if source.syntax != ExplicitVRLittleEndian and dataset.get("SamplesPerPixel", 1) > 1:
            dataset.PlanarConfiguration = 0  # decoded colour goes out by pixel, as RGB
            dataset.PhotometricInterpretation = "RGB"
        dataset.add_new("PixelData", "OW" if dataset.BitsAllocated > 8 else "OB", bytes(data))
    else:
        dataset.add_new("PixelData", "OB", encapsulate([bytes(data)]))
    arr = dataset.pixel_array
    return arr


def pixel_sources(server: Server) -> list[Source]:
    return [s for s in server.sources if s.has_pixels]


# --- instances ------------------------------------------------------------------------


def test_any_syntax_gives_the_original_files_byte_for_byte(server: Server) -> None:
    for source in server.sources:
        ((kind, data),) = parts(
            server.get(source.url, 'multipart/related; type="application/dicom"; transfer-syntax=*')
        )
        assert kind == "application/dicom"
        assert data == source.data, source.name
    client = server.client()
    jpeg_ls = server.source("MR_small_jpeg_ls_lossless.dcm")
    ds = client.retrieve_instance(
        STUDY, jpeg_ls.series, jpeg_ls.sop, media_types=(("application/dicom", "*"),)
    )
    assert ds.file_meta.TransferSyntaxUID == JPEG_LS
    study = client.retrieve_study(STUDY, media_types=(("application/dicom", "*"),))
    assert sorted(d.SOPInstanceUID for d in study) == sorted(s.sop for s in server.sources)


def test_study_and_series_stream_every_instance(server: Server) -> None:
    got = parts(
        server.get(
            f"/studies/{STUDY}", 'multipart/related; type="application/dicom"; transfer-syntax=*'
        )
    )
    assert sorted(data for _, data in got) == sorted(s.data for s in server.sources)
    source = server.source("emri_small.dcm")
    got = parts(
        server.get(
            f"/studies/{STUDY}/series/{source.series}",
            'multipart/related; type="application/dicom"; transfer-syntax=*',
        )
    )
    assert [data for _, data in got] == [source.data]


def test_default_is_explicit_vr_little_endian_with_the_same_pixels(server: Server) -> None:
    for source in server.sources:
        ((kind, data),) = parts(
            server.get(source.url, 'multipart/related; type="application/dicom"')
        )
        assert kind == f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
        dataset = pydicom.dcmread(BytesIO(data))
        assert dataset.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert dataset.SOPInstanceUID == source.sop
        if source.has_pixels:
            expected = source.pixels()
            assert np.array_equal(dataset.pixel_array.reshape(expected.shape), expected), (
                source.name
            )
        else:
            assert dataset.to_json_dict() == source.dataset.to_json_dict()


def test_an_instance_in_its_stored_compressed_syntax(server: Server) -> None:
    source = server.source("MR_small_jp2klossless.dcm")
    ((_, data),) = parts(
        server.get(
            source.url,
            f'multipart/related; type="application/dicom"; transfer-syntax={source.syntax}',
        )
    )
    assert data == source.data
    refused = server.get(
        source.url,
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',
    )
    assert refused.status_code == 406
    assert "transfer-syntax" in refused.text


# --- frames ---------------------------------------------------------------------------


def test_frames_in_the_stored_syntax_are_the_original_bitstreams(server: Server) -> None:
    client = server.client()
    for source in pixel_sources(server):
        numbers = [1, source.frames] if source.frames > 1 else [1]
        got = client.retrieve_instance_frames(STUDY, source.series, source.sop, numbers)
        expected = source.pixels()
        for number, data in zip(numbers, got, strict=True):
            if not UID(source.syntax).is_compressed:
                decoded = decode_frame(source, data, ExplicitVRLittleEndian)
            else:
                originals = list(
                    generate_frames(source.dataset.PixelData, number_of_frames=source.frames)
                )
                assert data == originals[number - 1], source.name  # sent without decoding
                decoded = decode_frame(source, data, source.syntax)
                assert server.last_audit()["detail"].endswith("(chunk)")
            assert np.array_equal(decoded.reshape(expected[0].shape), expected[number - 1]), (
                source.name
            )


def test_frames_as_octets_equal_pydicoms_pixels(server: Server) -> None:
    client = server.client()
    for source in pixel_sources(server):
        numbers = list(range(1, source.frames + 1, 3))
        got = client.retrieve_instance_frames(
            STUDY,
            source.series,
            source.sop,
            numbers,
            media_types=(("application/octet-stream", ExplicitVRLittleEndian),),
        )
        expected = source.pixels()
        for number, data in zip(numbers, got, strict=True):
            decoded = decode_frame(source, data, ExplicitVRLittleEndian)
            assert np.array_equal(decoded.reshape(expected[0].shape), expected[number - 1]), (
                source.name
            )


@pytest.mark.parametrize("syntax", [JPEG_LS, HTJ2K])
def test_frames_reencoded_to_jpegls_and_htj2k_decode_to_the_pixels(
    server: Server, syntax: str
) -> None:
    media = {JPEG_LS: "image/jls", HTJ2K: "image/jphc"}[syntax]
    ways = set()
    for source in pixel_sources(server):
        if source.dataset.SamplesPerPixel != 1:
            continue
        response = server.get(f"{source.url}/frames/1", f'multipart/related; type="{media}"')
        ((kind, data),) = parts(response)
        assert kind == f"{media}; transfer-syntax={syntax}"
        assert response.headers["content-type"].startswith(f'multipart/related; type="{media}"')
        ways.add(server.last_audit()["detail"].rsplit(" ", 1)[1])
        decoded = decode_frame(source, data, syntax)
        assert np.array_equal(decoded.reshape(source.pixels()[0].shape), source.pixels()[0]), (
            source.name
        )
    # JPEG-LS: some frames went out as the archive's own chunks (its default codec for
    # these), some were encoded for the request; no array here is in the archive's HTJ2K.
    assert ways == ({"(chunk)", "(decode)"} if syntax == JPEG_LS else {"(decode)"}), ways


def test_several_frames_in_the_order_asked(server: Server) -> None:
    source = server.source("emri_small_RLE.dcm")
    got = parts(server.get(f"{source.url}/frames/3,1,2"))
    originals = list(generate_frames(source.dataset.PixelData, number_of_frames=source.frames))
    assert [data for _, data in got] == [originals[2], originals[0], originals[1]]
    assert {kind for kind, _ in got} == {"image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5"}


# --- metadata and bulk data ------------------------------------------------------------


def without_bulk(metadata: dict[str, Any]) -> dict[str, Any]:
    """DICOM JSON with each bulk value (BulkDataURI, InlineBinary) reduced to its VR."""
    out = {}
    for tag, value in metadata.items():
        if "BulkDataURI" in value or "InlineBinary" in value:
            out[tag] = {"vr": value["vr"], "bulk": True}
        elif value.get("vr") == "SQ":
            out[tag] = {
                "vr": "SQ",
                "Value": [without_bulk(item) for item in value.get("Value", [])],
            }
        else:
            out[tag] = value
    return out


def test_metadata_is_pydicoms_json_with_bulk_data_uris(server: Server) -> None:
    client = server.client()
    for source in server.sources:
        metadata = client.retrieve_instance_metadata(STUDY, source.series, source.sop)
        expected = source.dataset.to_json_dict(wado.BULK_DATA_THRESHOLD, lambda e: "bulk")
        assert without_bulk(metadata) == without_bulk(expected), source.name
        if source.has_pixels:
            uri = metadata["7FE00010"]["BulkDataURI"]
            # dicomweb-client sends a Host header without the port, which the URI then lacks.
            assert uri.endswith(f"127.0.0.1{source.url}/bulkdata/7FE00010")
            ((kind, data),) = parts(server.get(f"{source.url}/bulkdata/7FE00010"))
            assert kind == "application/octet-stream"
            expected_pixels = source.pixels()
            if source.syntax == ExplicitVRLittleEndian:
                assert data == source.dataset.PixelData[: len(data)]
            frame_bytes = len(data) // source.frames
            first = decode_frame(source, data[:frame_bytes], ExplicitVRLittleEndian)
            assert np.array_equal(first.reshape(expected_pixels[0].shape), expected_pixels[0])
    study = client.retrieve_study_metadata(STUDY)
    assert sorted(m["00080018"]["Value"][0] for m in study) == sorted(s.sop for s in server.sources)


def test_a_binary_element_inside_a_sequence_is_bulk_data(server: Server) -> None:
    source = server.source("test-SR.dcm")  # written with an icon image (see write_sources)
    metadata = json.loads(server.get(f"{source.url}/metadata").content)[0]
    (item,) = metadata["00880200"]["Value"]
    uri = item["7FE00010"]["BulkDataURI"]
    assert uri == f"{server.base}{source.url}/bulkdata/00880200/1/7FE00010"
    ((kind, data),) = parts(server.get(uri[len(server.base) :]))
    assert (kind, data) == ("application/octet-stream", ICON)
    missing = server.get(f"{source.url}/bulkdata/00880200/2/7FE00010")
    assert missing.status_code == 404


def test_bulk_data_of_a_big_endian_instance_is_little_endian(server: Server) -> None:
    source = server.source("MR_small_bigendian.dcm")
    metadata = server.client().retrieve_instance_metadata(STUDY, source.series, source.sop)
    assert metadata["00281201"]["BulkDataURI"].endswith(f"{source.url}/bulkdata/00281201")
    ((_, data),) = parts(server.get(f"{source.url}/bulkdata/00281201"))
    assert data == np.frombuffer(WORDS, ">u2").astype("<u2").tobytes()
    ((_, pixels),) = parts(server.get(f"{source.url}/bulkdata/7FE00010"))
    assert pixels == source.pixels().astype("<i2").tobytes()


def test_failures_past_the_checks_are_a_500_quoting_nothing_and_audited(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each kind of error its path can meet, with a value a data set could hold in its text.
    source = server.source("MR_small_bigendian.dcm")
    leak = "DOE^JANE"

    def fails(error: Exception) -> Any:
        def raising(*args: object, **kwargs: object) -> None:
            raise error

        return raising

    url = source.url
    cases = [
        ("instance_file", NotSendable(f"no {leak}"), url, None, "retrieve", "send the instance"),
        ("little_endian_value", ValueError(f"odd {leak}"), f"{url}/bulkdata/00281201", None,
         "bulkdata", "read the bulk data"),
        ("render", RuntimeError(f"wide {leak}"), f"{url}/frames/1/rendered", "image/png",
         "rendered", "render the rendered"),
    ]  # fmt: skip
    for name, error, path, accept, action, says in cases:
        before = len(list(read_records(server.root)))
        with monkeypatch.context() as patch:
            patch.setattr(wado, name, fails(error))
            response = server.get(path, accept)
        assert response.status_code == 500, (name, response.text)
        assert f"cannot {says}" in response.text and leak not in response.text, name
        (record,) = list(read_records(server.root))[before:]
        assert (record["action"], record["outcome"]) == (f"wado {action}", "failed"), name


def test_pixels_that_are_not_the_archived_ones_are_a_500_not_sent(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A damaged chunk that still decodes (a flipped bit in an uncompressed, LZ4 or kept
    JPEG chunk) decodes to other pixels: the decoded paths compare them with the frame
    hashes recorded at ingest (they sent them)."""
    source = server.source("MR_small_bigendian.dcm")
    read_frames = PixelStore.read_frames

    def damaged(store: PixelStore, *args: Any, **kwargs: Any) -> np.ndarray:
        frames = read_frames(store, *args, **kwargs).copy()
        frames.flat[0] ^= 1
        return frames

    monkeypatch.setattr(PixelStore, "read_frames", damaged)
    for path, accept, action in [
        (f"{source.url}/frames/1/rendered", "image/png", "rendered"),
        (f"{source.url}/bulkdata/7FE00010", None, "bulkdata"),
    ]:
        before = len(list(read_records(server.root)))
        response = server.get(path, accept)
        assert response.status_code == 500, (path, response.status_code)
        (record,) = list(read_records(server.root))[before:]
        assert (record["action"], record["outcome"]) == (f"wado {action}", "failed"), path


# --- rendered ---------------------------------------------------------------------------


def dcmtk_render(server: Server, source: Source, window: tuple[float, float] | None) -> np.ndarray:
    """dcmj2pnm's 8-bit PNG of the source's first frame, with `window` or its own VOI."""
    path = server.root.parent / f"{source.sop}.dcm"
    path.write_bytes(source.data)
    out = path.with_suffix(".png")
    voi = ["+Ww", str(window[0]), str(window[1])] if window else ["+Wi", "1"]
    subprocess.run(["dcmj2pnm", "+on", *voi, str(path), str(out)], check=True, capture_output=True)
    return imagecodecs.png_decode(out.read_bytes())


def test_rendered_png_equals_dcmtks_rendering(server: Server) -> None:
    for name, window in [
        ("CT_small.dcm", (40.0, 400.0)),
        ("MR_small_implicit.dcm", None),  # the data set's own window
        ("emri_small.dcm", (500.0, 1000.0)),
        ("RG3_J2KR.dcm", None),  # MONOCHROME1: inverted
    ]:
        source = server.source(name)
        query = f"?window={window[0]},{window[1]},linear" if window else ""
        response = server.get(f"{source.url}/frames/1/rendered{query}", "image/png")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        ours = imagecodecs.png_decode(response.content)
        theirs = dcmtk_render(server, source, window)
        assert ours.shape == theirs.shape
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1, name


def test_rendered_viewport_quality_and_thumbnail(server: Server) -> None:
    source = server.source("CT_small.dcm")  # 128 x 128
    png = server.get(f"{source.url}/rendered?viewport=32,64", "image/png")
    assert imagecodecs.png_decode(png.content).shape == (32, 32)
    client = server.client()
    png = client.retrieve_instance_rendered(
        STUDY, source.series, source.sop, media_types=("image/png",), params={"viewport": "64,64"}
    )
    assert imagecodecs.png_decode(png).shape == (64, 64)
    multi = server.source("emri_small.dcm")
    jpeg = client.retrieve_instance_frames_rendered(
        STUDY, multi.series, multi.sop, [3], media_types=("image/jpeg",)
    )
    assert imagecodecs.jpeg8_decode(jpeg).shape == multi.pixels()[2].shape
    jpeg = server.get(f"{source.url}/rendered?quality=50", "image/jpeg")
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert imagecodecs.jpeg8_decode(jpeg.content).shape == (128, 128)
    colour = server.source("SC_rgb_rle.dcm")
    rgb = imagecodecs.png_decode(server.get(f"{colour.url}/rendered", "image/png").content)
    assert colour.pixels().dtype == np.uint8
    assert np.array_equal(rgb, colour.pixels()[0])  # RGB kept as it is
    thumb = server.get(f"{server.source('emri_small.dcm').url}/frames/2/thumbnail", "image/png")
    assert imagecodecs.png_decode(thumb.content).shape == (128, 128)
    assert server.get(f"{source.url}/rendered?quality=0", "image/jpeg").status_code == 400
    assert server.get(f"{source.url}/rendered?window=1,0", "image/png").status_code == 400
    assert server.get(f"{source.url}/rendered", "application/pdf").status_code == 406


# --- bad input ------------------------------------------------------------------------


def test_bad_frame_numbers_and_frames_of_what_has_none(server: Server) -> None:
    source = server.source("emri_small.dcm")
    asked = [("0", 400), ("11", 404), ("1,x", 400), ("-1", 400), ("1,,2", 400), ("2,1,2", 400)]
    for frames, status in asked:
        response = server.get(f"{source.url}/frames/{frames}")
        assert response.status_code == status, (frames, response.text)
        assert "frame" in response.text
        assert server.last_audit()["outcome"] == "refused"
    sr = server.source("test-SR.dcm")
    response = server.get(f"{sr.url}/frames/1")
    assert response.status_code == 404
    assert "no pixel data" in response.text


def test_unsupported_accept_is_406(server: Server) -> None:
    native = server.source("CT_small.dcm")
    assert (
        server.get(f"{native.url}/frames/1", 'multipart/related; type="image/jp2"').status_code
        == 406
    )
    assert server.get(native.url, "text/html").status_code == 406
    assert server.get(f"{native.url}/metadata", "text/html").status_code == 406
    # A later acceptable range is taken when the first cannot be.
    response = server.get(
        f"{native.url}/frames/1",
        'multipart/related; type="image/jp2", multipart/related; type="application/octet-stream"',
    )
    assert parts(response)[0][0].startswith("application/octet-stream")
    # Best quality first, whatever the order.
    response = server.get(
        f"{native.url}/frames/1",
        'multipart/related; type="image/jls"; q=0.5, multipart/related; type="image/jphc"',
    )
    assert parts(response)[0][0] == f"image/jphc; transfer-syntax={HTJ2K}"


def test_bad_and_unknown_uids_leak_nothing(server: Server) -> None:
    source = server.sources[0]
    secrets = {str(s.dataset.get("PatientName", "")) for s in server.sources} | {
        str(s.dataset.get("PatientID", "")) for s in server.sources
    }
    secrets.discard("")
    for path, statuses in [
        ("/studies/1.2.x", {404}),  # a UID of a legacy archive's form, not held
        ("/studies/1.2.3;x", {400}),
        ("/studies/.1.2", {400}),
        ("/studies/1.2.3..%2F..%2Fetc", {400, 404}),
        (f"/studies/{STUDY}/series/{'1' * 65}/metadata", {404}),
        (f"/studies/{STUDY}/series/{'1' * 201}/metadata", {400}),
        ("/studies/1.2.3.4", {404}),
        (f"/studies/1.2.3/series/{source.series}/instances/{source.sop}", {404}),
        (
            f"/studies/{STUDY}/series/{source.series}/instances/{source.sop}/bulkdata/00100010",
            {404},
        ),
    ]:
        response = server.get(path)
        assert response.status_code in statuses, (path, response.status_code, response.text)
        assert not any(secret in response.text for secret in secrets)


def test_credentials_and_role_are_needed(server: Server) -> None:
    source = server.sources[0]
    assert server.get(f"{source.url}/metadata", token="").status_code == 401
    response = server.get(f"{source.url}/metadata", token=UPLOADER_TOKEN)
    assert response.status_code == 403
    record = server.last_audit()
    assert (record["outcome"], record["actor"]) == ("forbidden", "uploader")
    server.get(f"{source.url}/metadata")
    record = server.last_audit()
    assert (record["action"], record["outcome"], record["study"]) == (
        "wado metadata",
        "success",
        STUDY,
    )


# --- Orthanc's DICOMweb plugin -----------------------------------------------------------


def test_metadata_agrees_with_orthancs_dicomweb_plugin(server: Server) -> None:
    extra = {"Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    with benchmark_module("orthanc").running_orthanc(extra=extra) as orthanc:
        for source in server.sources:
            conn = orthanc.connection(timeout=60)
            try:
                conn.request("POST", "/instances", body=source.data)
                response = conn.getresponse()
                assert response.status == 200, response.read()
                response.read()
            finally:
                conn.close()
        for source in server.sources:
            (theirs,) = orthanc.get(f"/dicom-web{source.url}/metadata")
            (ours,) = json.loads(server.get(f"{source.url}/metadata").content)
            ours, theirs = without_bulk(ours), without_bulk(theirs)
            if UID(source.syntax).is_compressed:
                # Orthanc's plugin leaves encapsulated Pixel Data out of metadata (measured).
                assert "7FE00010" not in theirs
                assert ours.pop("7FE00010") == {"vr": source.dataset["PixelData"].VR, "bulk": True}
            assert ours == theirs, source.name


def test_an_uncompressed_archive_sends_octets_from_its_chunks(
    server: Server, tmp_path: Path, authenticator: Any
) -> None:
    chosen = [server.source("CT_small.dcm"), server.source("emri_small.dcm")]
    (tmp_path / "src").mkdir()
    for source in chosen:
        (tmp_path / "src" / f"{source.sop}.dcm").write_bytes(source.data)
    archive = Archive.create(tmp_path / "archive", codec="raw")
    archive.ingest([tmp_path / "src"], workers=0)
    context = ServeContext(archive, ServeConfig(), AuditLog(tmp_path / "archive", sync_seconds=0))
    app = make_app(context, authenticator, routes=wado.routes())
    try:
        with serving_app(app) as base:
            for source in chosen:
                response = httpx.get(
                    f"{base}{source.url}/frames/{source.frames}",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
                ((kind, data),) = parts(response)
                assert kind == f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"
                size = len(source.dataset.PixelData) // source.frames
                assert data == source.dataset.PixelData[-size:]
                assert list(read_records(tmp_path / "archive"))[-1]["detail"].endswith("(chunk)")
    finally:
        archive.close()


def test_frames_kept_in_a_syntax_without_a_frame_media_type_go_out_as_octets(
    tmp_path: Path, authenticator: Any
) -> None:
    # Deflated Image Frame Compression has no frame media type: with the default Accept
    # (*/*, dicomweb-client's) the stored bitstream cannot be sent, octets can (this was an
    # unaudited 500: a KeyError). Its 1-bit frames cannot be JPEG-LS: a 406, not a 500.
    corpus = require_corpus()
    (tmp_path / "src").mkdir()
    names = [
        "pydicom-data/liver_deflate.dcm",
        "pylibjpeg-data/JPEGLossless/JPEGLossless_1s_1f_u_16_12.dcm",
    ]
    for relative in names:
        shutil.copy(corpus / relative, tmp_path / "src" / Path(relative).name)
    archive = Archive.create(tmp_path / "archive")
    assert archive.ingest([tmp_path / "src"], workers=0).archived == 2
    rows = {Path(r["source_path"]).name: r for r in archive.index}
    context = ServeContext(archive, ServeConfig(), AuditLog(archive.path, sync_seconds=0.0))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with serving_app(make_app(context, authenticator, routes=wado.routes())) as base:
            for name, row in rows.items():
                url = (
                    f"{base}/studies/{row['StudyInstanceUID']}/series/{row['SeriesInstanceUID']}"
                    f"/instances/{row['SOPInstanceUID']}/frames/1"
                )
                response = httpx.get(url, headers={**headers, "Accept": "*/*"}, timeout=60)
                ((kind, data),) = parts(response)
                if name == "liver_deflate.dcm":
                    assert kind == "application/octet-stream; transfer-syntax=" + str(
                        ExplicitVRLittleEndian
                    )
                    bits = archive.frames(row["SOPInstanceUID"])[0].ravel()
                    assert data == np.packbits(bits, bitorder="little").tobytes()
                    jls = 'multipart/related; type="image/jls"'
                    refused = httpx.get(url, headers={**headers, "Accept": jls}, timeout=60)
                    assert refused.status_code == 406
                else:  # JPEG lossless: its own bitstream, as image/jpeg
                    assert kind == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.57"
                    dataset = pydicom.dcmread(tmp_path / "src" / name)
                    assert data == next(generate_frames(dataset.PixelData, number_of_frames=1))
        records = list(read_records(archive.path))
        assert [r["outcome"] for r in records] == ["success", "refused", "success"]
    finally:
        context.audit.close()
        archive.close()
