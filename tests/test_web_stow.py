"""STOW-RS over real HTTP on loopback: dicomweb-client and raw bodies into the spool and archive."""

from __future__ import annotations

import asyncio
import io
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from conftest import require_corpus
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from starlette.requests import Request
from web_helpers import serving_app

from pacs_engine.archive import Archive, IngestReport
from pacs_engine.ingest import make_executor
from pacs_engine.scanning import scan
from pacs_engine.serve.audit import AuditLog, read_records, verify_chain
from pacs_engine.serve.config import ServeConfig
from pacs_engine.serve.context import ServeContext
from pacs_engine.serve.spool import Drain, Spool
from pacs_engine.serve.web import stow
from pacs_engine.serve.web.app import make_app
from pacs_engine.serve.web.request import Principal

#: Corpus files in several transfer syntaxes (native, deflate, JPEG, JPEG-LS, JPEG 2000, RLE).
SENT = (
    "DICOMHTJ2K/dicomp10/MR4_UNC",
    "dcm_qa_ts/2.dcm",
    "pydicom/test_files/image_dfl.dcm",
    "dcm_qa/Orientation/axmb/AxAsc36mb2a/jpg1.dcm",
    "dcm_qa_ts/7.dcm",
    "dcm_qa/Orientation/axmb/AxInt36mb/jp2k1.dcm",
    "dcm_qa_ts/4.dcm",
)
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
BOUNDARY = "stow-test-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
#: The body limit of the test server: small, so that a body over it is cheap to send.
LIMIT = 16_000_000
TOKENS = {
    "upload-token": Principal("uploader1", frozenset({"uploader"})),
    "read-token": Principal("reader1", frozenset({"reader"})),
}
UPLOADER = {"Authorization": "Bearer upload-token"}


def authenticator(request: Request) -> Principal | None:
    """The test's stand-in for the real authenticator: fixed bearer tokens."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return TOKENS.get(token) if scheme == "Bearer" else None


@dataclass
class Web:
    """A served STOW-RS app over a fresh archive, whose spool is drained on demand."""

    root: Path
    url: str
    archive: Archive
    spool: Spool
    drain: Drain
    reports: list[IngestReport]

    def records(self) -> list[dict]:
        return [r for r in read_records(self.root) if r["action"] == "stow"]

    def spooled(self) -> list[Path]:
        """Every file in the spool's folders, temporaries included."""
        return sorted(p for p in (self.root / "spool").glob("*/*") if p.is_file())


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    root = tmp_path / "archive"
    archive = Archive.create(root)
    audit = AuditLog(root, sync_seconds=0.0)
    spool = Spool(root)
    reports: list[IngestReport] = []
    drain = Drain(archive, spool, make_executor(0), on_report=reports.append)
    context = ServeContext(archive, ServeConfig(), audit)
    app = make_app(context, authenticator, spool=spool, routes=stow.routes(LIMIT))
    try:
        with serving_app(app) as url:
            yield Web(root, url, archive, spool, drain, reports)
    finally:
        audit.close()
        archive.close()


def instance(
    study: str,
    sop: str | None = None,
    syntax: str = ExplicitVRLittleEndian,
    series: str | None = None,
) -> bytes:
    """A small CT instance of `study`, as a PS3.10 file."""
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE
    if sop is not None:
        ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series or generate_uid()
    ds.PatientID = "STOW-TEST"
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    pixels = bytes(range(32))
    ds.PixelData = pixels if syntax == ExplicitVRLittleEndian else encapsulate([pixels])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop or generate_uid()
    ds.file_meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def body(*parts: bytes, boundary: str = BOUNDARY, close: bool = True) -> bytes:
    """A multipart/related body of application/dicom parts."""
    pieces = [
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p for p in parts
    ]
    end = f"\r\n--{boundary}--\r\n".encode() if close else b""
    return b"\r\n".join(pieces) + end


def post(web: Web, data: bytes, path: str = "/studies", **headers: str | bytes) -> httpx.Response:
    sent = {**UPLOADER, "Content-Type": MULTIPART, **headers}
    return httpx.post(web.url + path, content=data, headers=sent, timeout=60)


def failures(response: httpx.Response) -> list[tuple[str | None, int]]:
    """(SOP Instance UID, FailureReason) of each FailedSOPSequence item."""
    answer = Dataset.from_json(response.json())
    return [
        (item.get("ReferencedSOPInstanceUID"), item.FailureReason)
        for item in answer.FailedSOPSequence
    ]


# --- what is stored ---------------------------------------------------------------------


def test_dicomweb_client_stores_corpus_files_archived_as_sent(web: Web) -> None:
    corpus = require_corpus()
    datasets = [pydicom.dcmread(corpus / name) for name in SENT]
    sent = {}
    for ds in datasets:  # the bytes dicomweb-client sends for each data set
        out = io.BytesIO()
        pydicom.dcmwrite(out, ds)
        sent[str(ds.SOPInstanceUID)] = out.getvalue()
    client = DICOMwebClient(url=web.url, headers=UPLOADER)
    answer = client.store_instances(datasets)
    assert answer.FailedSOPSequence == []
    stored = {item.ReferencedSOPInstanceUID: item for item in answer.ReferencedSOPSequence}
    assert set(stored) == set(sent)
    for ds in datasets:
        item = stored[ds.SOPInstanceUID]
        assert item.ReferencedSOPClassUID == ds.SOPClassUID
        assert item.RetrieveURL == (
            f"{web.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}"
        )
    assert len(web.spool.waiting_files()) == len(SENT)
    web.drain.drain()
    (report,) = web.reports
    assert (report.inputs, report.archived, report.quarantined) == (len(SENT), len(SENT), 0)
    for uid, data in sent.items():
        assert web.archive.export_bytes(uid) == data
    (record,) = web.records()
    assert (record["actor"], record["outcome"]) == ("uploader1", "success")
    assert set(record["instances"]) == set(sent)
    assert set(record["study"]) == {str(ds.StudyInstanceUID) for ds in datasets}
    assert set(record["series"]) == {str(ds.SeriesInstanceUID) for ds in datasets}
    assert verify_chain(web.root) == []


def test_raw_files_posted_to_their_study_are_archived_byte_for_byte(web: Web) -> None:
    corpus = require_corpus()
    files = [(corpus / name).read_bytes() for name in ("dcm_qa_ts/7.dcm", "dcm_qa_ts/4.dcm")]
    study = str(scan(files[0]).attributes["StudyInstanceUID"])
    assert {str(scan(f).attributes["StudyInstanceUID"]) for f in files} == {study}
    response = post(web, body(*files), f"/studies/{study}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    answer = Dataset.from_json(response.json())
    assert answer.RetrieveURL == f"{web.url}/studies/{study}"
    assert len(answer.ReferencedSOPSequence) == 2
    web.drain.drain()
    for data in files:
        assert web.archive.export_bytes(str(scan(data).attributes["SOPInstanceUID"])) == data


def test_a_body_without_a_type_parameter_or_part_headers_is_taken(web: Web) -> None:
    study = generate_uid()
    data = f"--{BOUNDARY}\r\n\r\n".encode() + instance(study, generate_uid())
    data += f"\r\n--{BOUNDARY}--".encode()
    content_type = f"multipart/related; boundary={BOUNDARY}"
    assert post(web, data, **{"Content-Type": content_type}).status_code == 200
    assert len(web.spool.waiting_files()) == 1


# --- what is refused, part by part ------------------------------------------------------


def test_parts_that_cannot_be_taken_fail_with_their_reason(web: Web) -> None:
    study, good = generate_uid(), generate_uid()
    no_sop = instance(study)
    mpeg2 = generate_uid()
    parts = (
        instance(study, good),
        b"this is not DICOM at all" * 10,
        no_sop,
        instance(study, mpeg2, syntax="1.2.840.10008.1.2.4.100"),
    )
    response = post(web, body(*parts))
    assert response.status_code == 202, response.text
    assert failures(response) == [(None, 0xC000), (None, 0xC000), (mpeg2, 0xC122)]
    answer = Dataset.from_json(response.json())
    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [good]
    assert [
        scan(p.read_bytes()).attributes["SOPInstanceUID"] for p in web.spool.waiting_files()
    ] == [good]
    refused = [r for r in web.records() if r["outcome"] == "refused"]
    assert [r["detail"].split(" ", 1)[0] for r in refused] == ["0xC000", "0xC000", "0xC122"]
    assert "part 2: cannot be parsed" in refused[0]["detail"]
    assert "part 3: the dataset has no SOP Instance UID" in refused[1]["detail"]
    assert refused[2]["instances"] == [mpeg2] and refused[2]["study"] == study
    summary = web.records()[-1]
    assert (summary["outcome"], summary["detail"]) == ("partial", "stored=1 failed=3")
    assert all("STOW-TEST" not in str(r) for r in read_records(web.root))  # no Patient ID
    assert verify_chain(web.root) == []


def test_instances_of_another_study_than_the_urls_are_refused(web: Web) -> None:
    study, other = generate_uid(), generate_uid()
    sop = generate_uid()
    response = post(web, body(instance(other, sop)), f"/studies/{study}")
    assert response.status_code == 409
    assert failures(response) == [(sop, 0xC000)]
    assert web.spooled() == []
    refused, summary = web.records()
    assert "Study Instance UID is not the URL's" in refused["detail"]
    assert summary["outcome"] == "failure"


def test_instances_whose_uids_the_archive_cannot_index_are_refused(web: Web) -> None:
    # Acknowledged, they were quarantined by the drain: a stored answer and a RetrieveURL
    # (one holding "../") that never resolved.
    study, good = generate_uid(), generate_uid()
    climbing, slashed, long = generate_uid(), "1.2/3", "1." + "2" * 250
    parts = (
        instance(study, climbing, series="../evil"),
        instance(study, slashed),
        instance(study, long),
        instance(study, good),
    )
    response = post(web, body(*parts))
    assert response.status_code == 202, response.text
    assert failures(response) == [(climbing, 0xC000), (slashed, 0xC000), (long, 0xC000)]
    answer = Dataset.from_json(response.json())
    (stored,) = answer.ReferencedSOPSequence
    assert stored.ReferencedSOPInstanceUID == good and good in stored.RetrieveURL
    assert [scan(p.read_bytes()).attributes["SOPInstanceUID"] for p in web.spooled()] == [good]
    refused = [r for r in web.records() if r["outcome"] == "refused"]
    assert all("the archive cannot index it" in r["detail"] for r in refused)
    assert "SeriesInstanceUID '../evil' holds a path separator" in refused[0]["detail"]


def test_media_types_are_case_insensitive_and_q_0_is_not_acceptable(web: Web) -> None:
    data = body(instance(generate_uid(), generate_uid()))
    mixed = f'Multipart/Related; type="Application/DICOM"; boundary={BOUNDARY}'
    assert post(web, data, **{"Content-Type": mixed}).status_code == 200
    refused = post(web, data, Accept="application/dicom+json;q=0")
    assert refused.status_code == 406
    assert post(web, data, Accept="application/dicom+json;q=0, */*;q=0.1").status_code == 200


# --- what is refused as a whole ---------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "status", "reason"),
    [
        ("application/dicom", 415, "only multipart/related"),
        ('multipart/related; type="application/dicom+json"; boundary=x', 415, "only"),
        ('multipart/related; type="application/dicom"', 400, "no usable boundary"),
        ('multipart/related; type="application/dicom"; boundary=other', 400, "does not occur"),
        # Sent as UTF-8 bytes (httpx sends str headers as ASCII only): RFC 2046 allows ASCII.
        ('multipart/related; type="application/dicom"; boundary=été'.encode(), 400, "boundary"),
    ],
)
def test_a_body_with_the_wrong_type_or_boundary_is_refused(
    web: Web, content_type: str | bytes, status: int, reason: str
) -> None:
    response = post(
        web, body(instance(generate_uid(), generate_uid())), **{"Content-Type": content_type}
    )
    assert response.status_code == status
    assert reason in response.text
    assert web.spooled() == []
    (record,) = web.records()
    assert record["outcome"] == "refused" and record["detail"].startswith(str(status))


@pytest.mark.parametrize("cut", ["in the last part", "before the closing boundary", "in headers"])
def test_a_truncated_body_stores_nothing(web: Web, cut: str) -> None:
    study = generate_uid()
    whole = body(instance(study, generate_uid()), instance(study, generate_uid()))
    if cut == "in the last part":
        data = whole[: len(whole) - 100]
    elif cut == "before the closing boundary":
        data = body(instance(study, generate_uid()), close=False)
    else:
        data = whole + f"\r\n--{BOUNDARY}\r\nContent-Type: appl".encode()
        data = data.replace(f"\r\n--{BOUNDARY}--\r\n".encode(), b"", 1)
    response = post(web, data)
    assert response.status_code == 400, response.text
    assert "nothing was stored" in response.text
    assert web.spooled() == []  # neither a spool file nor a temporary
    (record,) = web.records()
    assert record["outcome"] == "refused"


def test_a_body_over_the_limit_is_refused_413_with_nothing_stored(web: Web) -> None:
    study = generate_uid()
    parts = [instance(study, generate_uid()) for _ in range(2)]
    big = body(*parts, b"\0" * LIMIT)
    assert post(web, big).status_code == 413  # told by Content-Length

    def chunks() -> Iterator[bytes]:  # chunked: no length known before the body comes
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    response = httpx.post(
        web.url + "/studies",
        content=chunks(),
        headers={**UPLOADER, "Content-Type": MULTIPART},
        timeout=60,
    )
    assert response.status_code == 413
    assert web.spooled() == []
    assert [r["detail"].split(" ", 1)[0] for r in web.records()] == ["413", "413"]


def test_a_reader_may_not_store_and_the_refusal_is_audited(web: Web) -> None:
    data = body(instance(generate_uid(), generate_uid()))
    response = post(web, data, Authorization="Bearer read-token")
    assert response.status_code == 403
    assert post(web, data, Authorization="Bearer wrong").status_code == 401
    assert web.spooled() == []
    outcomes = [(r["actor"], r["outcome"]) for r in read_records(web.root)]
    assert outcomes == [("reader1", "forbidden"), ("anonymous", "unauthenticated")]


def test_an_answer_the_client_does_not_accept_is_refused_406(web: Web) -> None:
    data = body(instance(generate_uid(), generate_uid()))
    assert post(web, data, Accept="application/dicom+xml").status_code == 406
    assert web.spooled() == []
    accepted = post(web, data, Accept="application/dicom+xml, application/dicom+json;q=0.5")
    assert accepted.status_code == 200
    assert [r["outcome"] for r in web.records()] == ["refused", "success"]


def test_a_study_in_the_url_that_is_not_a_uid_is_refused(web: Web) -> None:
    for target in ("/studies/.1.2", "/studies/1.2.3;x", "/studies/" + "1" * 201):
        response = post(web, body(instance("1.2.3", generate_uid())), target)
        assert response.status_code == 400, target
    assert web.spooled() == []


def test_a_client_that_hangs_up_mid_body_leaves_nothing(web: Web) -> None:
    study = generate_uid()
    whole = body(instance(study, generate_uid()), instance(study, generate_uid()))
    host, port = web.url.removeprefix("http://").split(":")
    head = (
        f"POST /studies HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer upload-token\r\n"
        f"Content-Type: {MULTIPART}\r\nContent-Length: {len(whole)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + whole[: len(whole) - 50])  # the first part whole, then gone
    deadline = time.monotonic() + 30
    while not web.records() and time.monotonic() < deadline:
        time.sleep(0.05)
    (record,) = web.records()
    assert record["outcome"] == "aborted"
    assert web.spooled() == []


def test_staged_instances_of_a_killed_server_are_deleted_at_the_next_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    staged = spool.stage(instance(generate_uid(), generate_uid()))
    assert staged.exists() and spool.waiting_files() == []  # staged: not to be ingested
    again = Spool(tmp_path)  # the next start
    assert not staged.exists() and again.waiting == 0
    admitted = again.stage(b"x")
    again.admit([admitted])
    assert [p.read_bytes() for p in again.waiting_files()] == [b"x"] and again.waiting == 1


# --- the multipart reader on its own ----------------------------------------------------


def parse(data: bytes, chunk: int, limit: int = LIMIT, part: int = LIMIT) -> list[stow.Part]:
    """The parts `stow.read_parts` finds in `data` arriving in chunks of `chunk` bytes."""

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), chunk):
            yield data[start : start + chunk]

    async def collect() -> list[stow.Part]:
        return [p async for p in stow.read_parts(chunks(), BOUNDARY, limit, part)]

    return asyncio.run(collect())


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_the_reader_finds_the_parts_however_the_body_is_chunked(chunk: int) -> None:
    # Contents that hold the start of a delimiter, and a boundary not at a line start.
    tricky = f"\r\n--{BOUNDARY[:-1]}X and --{BOUNDARY} inside".encode()
    contents = [tricky, b"", bytes(range(256)) * 40]
    data = (
        b"a preamble to ignore\r\n"
        + f"--{BOUNDARY}  \r\nContent-Type: application/dicom\r\nX-Other:  v \r\n\r\n".encode()
        + contents[0]
        + f"\r\n--{BOUNDARY}\r\n\r\n".encode()
        + contents[1]
        + f"\r\n--{BOUNDARY}\r\ncontent-type: Application/DICOM\r\n\r\n".encode()
        + contents[2]
        + f"\r\n--{BOUNDARY}--\r\nan epilogue to ignore".encode()
    )
    parts = parse(data, chunk)
    assert [bytes(p.data) for p in parts] == contents
    assert [p.number for p in parts] == [1, 2, 3]
    assert parts[0].headers == {"content-type": "application/dicom", "x-other": "v"}
    assert parts[1].headers == {}


@pytest.mark.parametrize(
    ("data", "error", "reason"),
    [
        (b"no boundary here", stow.MalformedBody, "does not occur"),
        (f"--{BOUNDARY}".encode(), stow.MalformedBody, "before part 1"),
        (f"--{BOUNDARY}junk\r\n\r\nx".encode(), stow.MalformedBody, "other text"),
        (
            f"--{BOUNDARY}\r\nno colon\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
            stow.MalformedBody,
            "without a name",
        ),
        (f"--{BOUNDARY}\r\n\r\n".encode() + b"x" * 50, stow.MalformedBody, "truncated"),
        (f"--{BOUNDARY}\r\n\r\n".encode() + b"x" * 500, stow.BodyTooLarge, "over 300 bytes"),
    ],
)
def test_the_reader_names_what_is_wrong(data: bytes, error: type, reason: str) -> None:
    with pytest.raises(error, match=reason):
        parse(data, 16, limit=300)


def test_a_part_over_the_instance_limit_is_refused_as_it_comes() -> None:
    # Held in memory whole: refused once past the limit of an instance, not of the body.
    part = f"--{BOUNDARY}\r\n\r\n".encode() + b"x" * 500 + f"\r\n--{BOUNDARY}--".encode()
    assert [len(p.data) for p in parse(part, 16, limit=10_000, part=500)] == [500]
    with pytest.raises(stow.BodyTooLarge, match="part 1: over 499 bytes"):
        parse(part, 16, limit=10_000, part=499)
