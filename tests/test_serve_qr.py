"""Query/Retrieve SCP (serve/qr.py) against real peers: dcmtk findscu, getscu, movescu, storescp.

The archive is made from files the tests write (pydicom's sample files under new
patients, studies and UIDs, native and JPEG-LS, Latin-1 and UTF-8 names); the server
is a pynetdicom AE in this process with the handlers bound, on 127.0.0.1. What
findscu returns is compared with what the same matching, done by hand on the files
pydicom reads, selects.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from conftest import pydicom_test_files
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.dsutils import encode

from pacs_engine import Archive
from pacs_engine.serve import qr
from pacs_engine.serve.audit import AuditLog, read_records
from pacs_engine.serve.config import Peer, ServeConfig
from pacs_engine.serve.context import ServeContext
from pacs_engine.serve.dimse import DimseServer, file_meta
from pacs_engine.serve.qr import (
    QR_FIND_CLASSES,
    QR_GET_CLASSES,
    QR_MOVE_CLASSES,
    QR_SERVICES,
)
from pacs_engine.serve.retrieve import NotSendable, Tally, send_encoded, split_meta
from pacs_engine.serve.spool import Spool

TIMEOUT = 60
UID_ROOT = "1.2.826.0.1.3680043.8.498.77"
JPEG_LS = "1.2.840.10008.1.2.4.80"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
STUDY_ROOT_FIND, PATIENT_ROOT_FIND = QR_FIND_CLASSES[1], QR_FIND_CLASSES[0]


def sample(name: str) -> Path:
    (path,) = [p for p in pydicom_test_files() if p.name == name]
    return path


@dataclass(frozen=True)
class Spec:
    """One instance the tests write: its patient, study, series and source file."""

    source: str
    patient: tuple[str, str, str]  # PatientID, PatientName, SpecificCharacterSet
    study: int
    date: str
    time: str
    series: int
    instance: int


PATIENTS = {
    "doe_john": ("PID001", "DOE^JOHN", "ISO_IR 100"),
    "doe_jane": ("PID002", "DOE^JANE", "ISO_IR 100"),
    "mueller": ("PID003", "Müller^Jürgen", "ISO_IR 100"),
    "yamada": ("PID004", "山田^太郎", "ISO_IR 192"),
}
SPECS = [
    Spec("CT_small.dcm", PATIENTS["doe_john"], 1, "20200105", "101500", 1, 1),
    Spec("CT_small.dcm", PATIENTS["doe_john"], 1, "20200105", "101500", 1, 2),
    Spec("MR_small.dcm", PATIENTS["doe_john"], 1, "20200105", "101500", 2, 1),
    Spec("MR_small_jpeg_ls_lossless.dcm", PATIENTS["doe_john"], 2, "20210310", "083000", 3, 1),
    Spec("MR_small_jpeg_ls_lossless.dcm", PATIENTS["doe_john"], 2, "20210310", "083000", 3, 2),
    Spec("MR_small.dcm", PATIENTS["doe_jane"], 3, "20200620", "230000", 4, 1),
    Spec("MR_small.dcm", PATIENTS["doe_jane"], 3, "20200620", "230000", 5, 1),
    Spec("MR_small.dcm", PATIENTS["doe_jane"], 3, "20200620", "230000", 5, 2),
    Spec("CT_small.dcm", PATIENTS["mueller"], 4, "20191231", "120000", 6, 1),
    Spec("MR_small.dcm", PATIENTS["yamada"], 5, "20220101", "000100", 7, 1),
]


def study_uid(n: int) -> str:
    return f"{UID_ROOT}.1.{n}"


def series_uid(n: int) -> str:
    return f"{UID_ROOT}.2.{n}"


def sop_uid(spec: Spec) -> str:
    return f"{UID_ROOT}.3.{spec.series}.{spec.instance}"


def write_files(folder: Path) -> list[Path]:
    """The test's instances as files; returns their paths."""
    folder.mkdir()
    paths = []
    for spec in SPECS:
        ds = pydicom.dcmread(sample(spec.source))
        pid, name, charset = spec.patient
        ds.SpecificCharacterSet = charset
        ds.PatientID, ds.PatientName = pid, name
        ds.StudyInstanceUID = study_uid(spec.study)
        ds.SeriesInstanceUID = series_uid(spec.series)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid(spec)
        ds.StudyDate, ds.StudyTime = spec.date, spec.time
        ds.SeriesNumber, ds.InstanceNumber = spec.series, spec.instance
        ds.AccessionNumber = f"ACC{spec.study}"
        path = folder / f"{spec.series}_{spec.instance}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    port: int
    ctx: ServeContext
    files: list[Path]
    root: Path

    def audit(self) -> list[dict[str, Any]]:
        return list(read_records(self.ctx.archive.path))


#: The calling AE titles of the tests' requestors (dcmtk's defaults and the pynetdicom SCU).
REQUESTORS = ("FINDSCU", "GETSCU", "MOVESCU", "TESTSCU")


def start(ctx: ServeContext) -> DimseServer:
    """`pacs-engine serve`'s DIMSE server with its Q/R services on 127.0.0.1 (a free port).

    The requestors are admitted with the query and retrieve rights (the server's
    rights check is tested in test_serve_dimse.py).
    """
    rights = frozenset({"query", "retrieve"})
    ctx.config = ctx.config.with_peers(*(Peer(title, rights) for title in REQUESTORS))  # type: ignore[arg-type]
    server = DimseServer(ctx, Spool(ctx.archive.path), QR_SERVICES)
    server.start(0)
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("qr")
    files = write_files(root / "src")
    archive = Archive.create(root / "archive")
    report = archive.ingest([root / "src"], workers=0)
    assert report.archived == len(SPECS)
    store_port, down_port = free_port(), free_port()
    config = ServeConfig(ae_title="PACS_ENGINE").with_peers(
        Peer("STORESCP", frozenset({"retrieve"}), "127.0.0.1", store_port),
        Peer("DOWN", frozenset({"retrieve"}), "127.0.0.1", down_port),
        Peer("PICKY", frozenset(), "127.0.0.1", free_port()),
    )
    ctx = ServeContext(archive, config, AuditLog(archive.path, sync_seconds=0))
    scp = start(ctx)
    try:
        yield Server(scp.address[1], ctx, files, root)
    finally:
        scp.stop()
        ctx.audit.close()
        archive.close()


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd
    )


# --- matching by hand, on what pydicom reads from the files -----------------------------


def by_hand(condition: str, value: Any, vr: str) -> bool:
    """PS3.4 C.2.2.2 matching of one value, written out independently of the index."""
    if condition in ("", "*"):
        return True
    if value is None or value == "":
        return False
    text = str(value)
    if vr == "UI":
        return text in condition.split("\\")
    if vr in ("DA", "TM") and "-" in condition:
        lo, hi = condition.split("-")
        return (not lo or text >= lo) and (not hi or text[: len(hi)] <= hi)
    pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in condition)
    flags = re.IGNORECASE if vr == "PN" else 0
    return re.fullmatch(pattern, text, flags) is not None


def source_datasets(server: Server) -> list[Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in server.files]


def expected(server: Server, keys: dict[str, str], unique: str) -> set[str]:
    """The values of `unique` over the files matching every key.

    A study matches ModalitiesInStudy when one of its files has that Modality.
    """
    out = set()
    keys = {("Modality" if k == "ModalitiesInStudy" else k): v for k, v in keys.items()}
    for ds in source_datasets(server):
        if all(
            by_hand(cond, ds.get(k), pydicom.datadict.dictionary_VR(k)) for k, cond in keys.items()
        ):
            out.add(str(ds.get(unique)))
    return out


def findscu(server: Server, out: Path, model: str, level: str, *keys: str) -> list[Dataset]:
    """The responses findscu gets (extracted as files), in order."""
    out.mkdir()
    done = run(
        "findscu", model, "-aec", "PACS_ENGINE", "-X", "-od", out,
        "-k", f"QueryRetrieveLevel={level}", *[a for k in keys for a in ("-k", k)],
        "127.0.0.1", server.port,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


STUDY_QUERIES = [
    {"PatientName": "DOE*"},
    {"PatientName": "doe^j?ne"},
    {"StudyDate": "20200101-20201231"},
    {"StudyDate": "-20200105"},
    {"StudyDate": "20210101-", "StudyTime": "0800-0900"},
    {"StudyInstanceUID": f"{study_uid(1)}\\{study_uid(4)}\\{UID_ROOT}.9"},
    {"AccessionNumber": "ACC3"},
    {"ModalitiesInStudy": "CT", "PatientID": "PID00?"},
    {},
]


@pytest.mark.parametrize("keys", STUDY_QUERIES, ids=lambda k: ",".join(k) or "universal")
def test_study_find_returns_what_matching_by_hand_selects(
    server: Server, tmp_path: Path, keys: dict[str, str]
) -> None:
    asked = [f"{k}={v}" for k, v in keys.items()]
    returned = [
        "StudyInstanceUID", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
        "ModalitiesInStudy", "StudyDescription", "PatientBirthDate", "InstitutionName",
        "SOPClassesInStudy", "NumberOfPatientRelatedStudies",
    ]  # fmt: skip
    returned = [k for k in returned if k not in keys]  # a later -k would override the value
    responses = findscu(server, tmp_path / "rsp", "-S", "STUDY", *asked, *returned)
    found = {str(r.StudyInstanceUID) for r in responses}
    assert found == expected(server, keys, "StudyInstanceUID")
    datasets = source_datasets(server)
    for r in responses:
        mine = [d for d in datasets if d.StudyInstanceUID == r.StudyInstanceUID]
        assert r.QueryRetrieveLevel == "STUDY"
        assert r.NumberOfStudyRelatedInstances == len(mine)
        assert r.NumberOfStudyRelatedSeries == len({d.SeriesInstanceUID for d in mine})
        modalities = r.ModalitiesInStudy
        assert set([modalities] if isinstance(modalities, str) else modalities) == {
            d.Modality for d in mine
        }
        assert r.PatientBirthDate == mine[0].get("PatientBirthDate", "")
        classes = r.SOPClassesInStudy
        assert set([classes] if isinstance(classes, str) else classes) == {
            d.SOPClassUID for d in mine
        }
        patient = {d.StudyInstanceUID for d in datasets if d.PatientID == mine[0].PatientID}
        assert r.NumberOfPatientRelatedStudies == len(patient)
        # A key the index does not hold comes back, empty.
        assert "InstitutionName" in r and r.InstitutionName == ""
        for keyword in keys:
            assert keyword in r


def test_series_and_image_find(server: Server, tmp_path: Path) -> None:
    keys = {"StudyInstanceUID": f"{study_uid(1)}\\{study_uid(3)}", "Modality": "M?"}
    responses = findscu(
        server, tmp_path / "s", "-S", "SERIES", *[f"{k}={v}" for k, v in keys.items()],
        "SeriesInstanceUID", "NumberOfSeriesRelatedInstances", "SeriesNumber",
    )  # fmt: skip
    assert {str(r.SeriesInstanceUID) for r in responses} == expected(
        server, keys, "SeriesInstanceUID"
    )
    datasets = source_datasets(server)
    for r in responses:
        assert r.QueryRetrieveLevel == "SERIES" and r.StudyInstanceUID  # the unique key above
        count = sum(d.SeriesInstanceUID == r.SeriesInstanceUID for d in datasets)
        assert r.NumberOfSeriesRelatedInstances == count
    keys = {"StudyInstanceUID": study_uid(1), "SeriesInstanceUID": series_uid(1)}
    images = findscu(
        server, tmp_path / "i", "-S", "IMAGE", *[f"{k}={v}" for k, v in keys.items()],
        "SOPInstanceUID", "InstanceNumber", "Rows",
    )  # fmt: skip
    assert {str(r.SOPInstanceUID) for r in images} == expected(server, keys, "SOPInstanceUID")
    assert all(r.Rows == 128 and r.QueryRetrieveLevel == "IMAGE" for r in images)


def test_patient_root_patient_level_with_counts(server: Server, tmp_path: Path) -> None:
    responses = findscu(
        server, tmp_path / "p", "-P", "PATIENT", "PatientID=PID00*", "PatientName",
        "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances",
    )  # fmt: skip
    datasets = source_datasets(server)
    assert {r.PatientID for r in responses} == {d.PatientID for d in datasets}
    for r in responses:
        mine = [d for d in datasets if d.PatientID == r.PatientID]
        assert r.NumberOfPatientRelatedStudies == len({d.StudyInstanceUID for d in mine})
        assert r.NumberOfPatientRelatedInstances == len(mine)
        assert str(r.PatientName) == str(mine[0].PatientName)  # decoded as declared


@pytest.mark.parametrize(("charset", "codec"), [("ISO_IR 100", "latin-1"), ("ISO_IR 192", "utf-8")])
def test_a_request_in_another_character_set_matches_and_the_answer_declares_its_own(
    server: Server, tmp_path: Path, charset: str, codec: str
) -> None:
    """The name was archived from a Latin-1 file; requests in Latin-1 and UTF-8 find it."""
    query = Dataset()
    query.SpecificCharacterSet = charset
    query.QueryRetrieveLevel = "STUDY"
    query.PatientName = "Müller*"
    query.StudyInstanceUID = ""
    query_file = tmp_path / "q.dcm"
    pydicom.dcmwrite(query_file, query, implicit_vr=False, little_endian=True)
    assert "Müller".encode(codec) in query_file.read_bytes()
    out = tmp_path / "rsp"
    out.mkdir()
    done = run(
        "findscu", "-S", "-aec", "PACS_ENGINE", "-X", "-od", out, "127.0.0.1", server.port,
        query_file,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (response,) = [pydicom.dcmread(p) for p in out.glob("rsp*.dcm")]
    assert response.StudyInstanceUID == study_uid(4)
    assert response.SpecificCharacterSet == charset  # it holds the returned name
    assert str(response.PatientName) == "Müller^Jürgen"
    assert "Jürgen".encode(codec) in (out / "rsp0001.dcm").read_bytes()
    # A name Latin-1 cannot hold comes back in UTF-8, declared so.
    responses = findscu(server, tmp_path / "y", "-S", "STUDY", "PatientID=PID004", "PatientName")
    (yamada,) = responses
    assert yamada.SpecificCharacterSet == "ISO_IR 192"
    assert str(yamada.PatientName) == "山田^太郎"


# --- pynetdicom as the SCU: statuses, cancel, audit --------------------------------------


@contextmanager
def serving_own(archive: Archive, *contexts: str) -> Iterator[Any]:
    """An association with a Q/R server of its own on `archive` (closed, with the
    archive, at the end)."""
    ctx = ServeContext(archive, ServeConfig(), AuditLog(archive.path, sync_seconds=0))
    scp = start(ctx)
    try:
        assoc = scu_association(scp.address[1], *contexts)
        try:
            yield assoc
        finally:
            assoc.release()
    finally:
        scp.stop()
        ctx.audit.close()
        archive.close()


def scu_association(port: int, *contexts: str) -> Any:
    ae = AE(ae_title="TESTSCU")
    for uid in contexts:
        ae.add_requested_context(uid)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS_ENGINE")
    assert assoc.is_established
    return assoc


def test_a_bad_identifier_gets_a_failure_status_and_an_audit_record(server: Server) -> None:
    assoc = scu_association(server.port, STUDY_ROOT_FIND)
    try:
        bad = Dataset()
        bad.QueryRetrieveLevel = "PATIENT"  # no PATIENT level in the Study Root model
        bad.PatientName = "DOE*"
        statuses = [s for s, _ in assoc.send_c_find(bad, STUDY_ROOT_FIND)]
        below = Dataset()
        below.QueryRetrieveLevel = "STUDY"
        below.SOPInstanceUID = sop_uid(SPECS[0])  # an IMAGE key in a STUDY query
        statuses += [s for s, _ in assoc.send_c_find(below, STUDY_ROOT_FIND)]
    finally:
        assoc.release()
    assert [s.Status for s in statuses] == [0xA900, 0xA900]
    assert "PATIENT" in statuses[0].ErrorComment and "SOPInstanceUID" in statuses[1].ErrorComment
    refused = [r for r in server.audit() if r["action"] == "c-find" and "A900" in r["outcome"]]
    assert len(refused) >= 2 and refused[-1]["actor"] == "TESTSCU"
    assert all("DOE" not in str(r) for r in server.audit())  # no patient data in the trail


def test_a_find_with_more_matches_than_the_most_is_refused_before_any(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its matches are read before the first is sent: a universal IMAGE query of a large
    # archive held every row in memory.
    studies = len({s.study for s in SPECS})
    monkeypatch.setattr(qr, "MAX_MATCHES", studies - 1)
    assoc = scu_association(server.port, STUDY_ROOT_FIND)
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        answers = list(assoc.send_c_find(query, STUDY_ROOT_FIND))
        monkeypatch.setattr(qr, "MAX_MATCHES", studies)
        allowed = list(assoc.send_c_find(query, STUDY_ROOT_FIND))
    finally:
        assoc.release()
    ((final, _),) = answers  # no match sent
    assert final.Status == 0xA700
    assert final.ErrorComment == f"more than {studies - 1} matches: narrow the query"
    assert [s.Status for s, _ in allowed] == [0xFF00] * studies + [0x0000]
    refused = [r for r in server.audit() if r["action"] == "c-find"][-2]
    assert refused["outcome"] == "failed 0xA700"


def test_c_cancel_stops_a_large_find(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = 5_000  # an index only: C-FIND reads nothing else
    # Each answer made slower (2 ms), so that the find cannot finish before the cancel
    # arrives however fast loopback is (its answers would all fit in the socket buffers).
    made = qr.response

    def slow_response(*args: Any) -> Any:
        time.sleep(0.002)
        return made(*args)

    monkeypatch.setattr(qr, "response", slow_response)
    archive = Archive.create(tmp_path / "big")
    archive.index.commit(
        [
            {
                "StudyInstanceUID": f"{UID_ROOT}.5.{i // 100}",
                "SeriesInstanceUID": f"{UID_ROOT}.6.{i // 10}",
                "SOPInstanceUID": f"{UID_ROOT}.7.{i}",
                "PatientID": "BIG",
            }
            for i in range(rows)
        ]
    )
    with serving_own(archive, STUDY_ROOT_FIND) as assoc:
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.SOPInstanceUID = ""
        responses = assoc.send_c_find(query, STUDY_ROOT_FIND, msg_id=7)
        status, _ = next(responses)
        assert status.Status == 0xFF00
        cx = assoc._get_valid_context(STUDY_ROOT_FIND, "", "scu")
        assoc.send_c_cancel(7, cx.context_id)
        rest = [s.Status for s, _ in responses]
    assert rest[-1] == 0xFE00
    assert len(rest) < rows // 2  # the matches after the cancel were not sent
    (record,) = [r for r in read_records(tmp_path / "big") if r["action"] == "c-find"]
    assert record["outcome"] == "cancelled"


# --- C-GET and C-MOVE: the bytes that arrive ------------------------------------------


def dataset_bytes(data: bytes) -> bytes:
    """A Part 10 file's data set: what follows the file meta group (by its group length)."""
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00"
    return data[144 + int.from_bytes(data[140:144], "little") :]


def received(folder: Path) -> dict[str, bytes]:
    """SOP Instance UID -> the file dcmtk wrote."""
    out = {}
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            out[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = data
    return out


def getscu(server: Server, out: Path, level: str, *keys: str, options: tuple = ()) -> str:
    out.mkdir()
    done = run(
        "getscu", "-S", "-aec", "PACS_ENGINE", "+B", *options, "-od", out,
        "-k", f"QueryRetrieveLevel={level}", *[a for k in keys for a in ("-k", k)],
        "127.0.0.1", server.port, "-v",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_getscu_of_a_study_receives_the_original_bytes(server: Server, tmp_path: Path) -> None:
    log = getscu(server, tmp_path / "g", "STUDY", f"StudyInstanceUID={study_uid(1)}")
    files = received(tmp_path / "g")
    wanted = {sop_uid(s) for s in SPECS if s.study == 1}
    assert set(files) == wanted
    for uid, data in files.items():
        assert dataset_bytes(data) == dataset_bytes(server.ctx.archive.export_bytes(uid))
    assert re.search(r"Completed Suboperations\s*:\s*3", log), log
    last = [r for r in server.audit() if r["action"] == "c-get"][-1]
    assert last["outcome"] == "success" and last["study"] == [study_uid(1)]
    assert set(last["series"]) == {series_uid(s.series) for s in SPECS if s.study == 1}
    assert "sent_as_stored=3" in last["detail"]


def test_getscu_preferring_jpeg_ls_receives_the_compressed_original(
    server: Server, tmp_path: Path
) -> None:
    getscu(server, tmp_path / "g", "SERIES", f"StudyInstanceUID={study_uid(2)}",
           f"SeriesInstanceUID={series_uid(3)}", options=("+xt",))  # fmt: skip
    files = received(tmp_path / "g")
    assert len(files) == 2
    for uid, data in files.items():
        assert pydicom.dcmread(BytesIO(data)).file_meta.TransferSyntaxUID == JPEG_LS
        assert dataset_bytes(data) == dataset_bytes(server.ctx.archive.export_bytes(uid))


def test_a_receiver_without_the_stored_syntax_gets_it_transcoded(
    server: Server, tmp_path: Path
) -> None:
    getscu(server, tmp_path / "g", "SERIES", f"StudyInstanceUID={study_uid(2)}",
           f"SeriesInstanceUID={series_uid(3)}", options=("+xe",))  # fmt: skip
    files = received(tmp_path / "g")
    assert len(files) == 2
    for path in (tmp_path / "g").iterdir():
        got = pydicom.dcmread(path)
        assert got.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        original = pydicom.dcmread(
            server.files[[sop_uid(s) for s in SPECS].index(got.SOPInstanceUID)]
        )
        assert original.file_meta.TransferSyntaxUID == JPEG_LS
        assert np.array_equal(got.pixel_array, original.pixel_array)
        assert got.PatientName == original.PatientName
    last = [r for r in server.audit() if r["action"] == "c-get"][-1]
    assert "transcoded=2" in last["detail"]


@pytest.fixture
def storescp(server: Server, tmp_path: Path) -> Iterator[Path]:
    """dcmtk storescp on the STORESCP peer's port, accepting every syntax, bit-preserving."""
    out = tmp_path / "moved"
    out.mkdir()
    port = server.ctx.config.peers["STORESCP"].port
    proc = subprocess.Popen(
        ["storescp", "+xa", "+B", "-aet", "STORESCP", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", int(port)), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    try:
        yield out
    finally:
        proc.terminate()
        proc.wait(timeout=TIMEOUT)


def movescu(server: Server, destination: str, level: str, *keys: str) -> str:
    done = run(
        "movescu", "-S", "-aec", "PACS_ENGINE", "-aem", destination, "-d",
        "-k", f"QueryRetrieveLevel={level}", *[a for k in keys for a in ("-k", k)],
        "127.0.0.1", server.port,
    )  # fmt: skip
    return done.stdout + done.stderr


def test_movescu_to_storescp_delivers_the_study(server: Server, storescp: Path) -> None:
    log = movescu(server, "STORESCP", "STUDY", f"StudyInstanceUID={study_uid(1)}\\{study_uid(2)}")
    files = received(storescp)
    wanted = {sop_uid(s) for s in SPECS if s.study in (1, 2)}
    assert set(files) == wanted, log
    for uid, data in files.items():
        assert dataset_bytes(data) == dataset_bytes(server.ctx.archive.export_bytes(uid))
    assert re.search(r"Completed Suboperations\s*:\s*5", log), log
    last = [r for r in server.audit() if r["action"] == "c-move"][-1]
    assert last["outcome"] == "success" and set(last["study"]) == {study_uid(1), study_uid(2)}
    assert set(last["series"]) == {series_uid(s.series) for s in SPECS if s.study in (1, 2)}


def test_move_to_an_unknown_destination_is_refused(server: Server) -> None:
    log = movescu(server, "NOBODY", "STUDY", f"StudyInstanceUID={study_uid(1)}")
    assert re.search(r"0xa801", log, re.IGNORECASE), log
    last = [r for r in server.audit() if r["action"] == "c-move"][-1]
    assert last["outcome"] == "refused 0xA801"


def test_move_to_a_destination_that_is_down_fails_every_sub_operation(server: Server) -> None:
    log = movescu(server, "DOWN", "STUDY", f"StudyInstanceUID={study_uid(3)}")
    assert re.search(r"0xa702", log, re.IGNORECASE), log
    assoc = scu_association(server.port, QR_MOVE_CLASSES[1])
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid(3)
        ((final, identifier),) = list(assoc.send_c_move(query, "DOWN", QR_MOVE_CLASSES[1]))
    finally:
        assoc.release()
    assert final.Status == 0xA702
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (0, 3)
    assert set(identifier.FailedSOPInstanceUIDList) == {sop_uid(s) for s in SPECS if s.study == 3}
    records = [r for r in server.audit() if r["action"] == "c-move"][-2:]
    for record in records:
        assert record["outcome"] == "failure"
        assert "failed=3" in record["detail"] and record["study"] == [study_uid(3)]


@contextmanager
def picky_destination(server: Server, store: Callable[[Any], int]) -> Iterator[None]:
    """The PICKY peer listening, its C-STORE answered by `store`."""
    picky = AE(ae_title="PICKY")
    picky.supported_contexts = StoragePresentationContexts
    port = server.ctx.config.peers["PICKY"].port
    assert port is not None
    scp = picky.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, store)]
    )
    try:
        yield
    finally:
        scp.shutdown()


def move_study(server: Server, study: int, msg_id: int = 1) -> tuple[Dataset, Dataset | None]:
    """The final (status, identifier) of a C-MOVE of test study `study` to PICKY."""
    assoc = scu_association(server.port, QR_MOVE_CLASSES[1])
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid(study)
        *_, final = assoc.send_c_move(query, "PICKY", QR_MOVE_CLASSES[1], msg_id=msg_id)
    finally:
        assoc.release()
    return final


def test_move_statuses_when_the_destination_refuses_some_or_all(server: Server) -> None:
    """A destination that fails every CT C-STORE: 0xB000 when some fail, 0xA702 when all do."""

    def store(event: Any) -> int:
        return 0xA700 if event.request.AffectedSOPClassUID == CT_IMAGE_STORAGE else 0x0000

    with picky_destination(server, store):
        # study 1: two CT and one MR; study 4: one CT
        (some, some_failed), (every, every_failed) = [move_study(server, s) for s in (1, 4)]
    assert some.Status == 0xB000
    assert (some.NumberOfCompletedSuboperations, some.NumberOfFailedSuboperations) == (1, 2)
    ct = {sop_uid(s) for s in SPECS if s.study == 1 and s.source == "CT_small.dcm"}
    assert set(some_failed.FailedSOPInstanceUIDList) == ct
    assert every.Status == 0xA702
    assert (every.NumberOfCompletedSuboperations, every.NumberOfFailedSuboperations) == (0, 1)
    assert every_failed.FailedSOPInstanceUIDList == sop_uid(SPECS[8])
    outcomes = [r["outcome"] for r in server.audit() if r["action"] == "c-move"][-2:]
    assert outcomes == ["warning", "failure"]


def test_a_refused_move_is_answered_as_refused_without_reaching_its_destination(
    server: Server,
) -> None:
    # The destination is down: reached first, it turned the refusal into 0xA801.
    assoc = scu_association(server.port, QR_MOVE_CLASSES[1])
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"  # no StudyInstanceUID
        ((final, _),) = list(assoc.send_c_move(query, "DOWN", QR_MOVE_CLASSES[1]))
    finally:
        assoc.release()
    assert final.Status == 0xA900 and "StudyInstanceUID" in final.ErrorComment
    last = [r for r in server.audit() if r["action"] == "c-move"][-1]
    assert last["outcome"] == "refused 0xA900"


def test_a_moves_sub_operations_name_the_ae_that_asked_for_it(server: Server) -> None:
    seen: list[tuple[str, int]] = []

    def store(event: Any) -> int:
        request = event.request
        seen.append((request.MoveOriginatorApplicationEntityTitle, request.MoveOriginatorMessageID))
        return 0x0000

    with picky_destination(server, store):
        final, _ = move_study(server, 1, msg_id=7)  # three instances
    assert final.Status == 0x0000
    assert seen == [("TESTSCU", 7)] * 3  # PS3.7 C-STORE-RQ: the AE that invoked the C-MOVE


def test_an_instance_for_a_receiver_whose_association_ended_fails_at_once(server: Server) -> None:
    # Once a C-MOVE destination has aborted, each instance left failed only after a DIMSE
    # timeout (30 s) spent waiting for an answer on the dead association.
    class Ended:
        is_established = False  # and no DIMSE service: nothing may be sent on it

    row = server.ctx.archive.query("instance", StudyInstanceUID=study_uid(1))[0]
    with pytest.raises(NotSendable, match="association has ended"):
        send_encoded(Ended(), server.ctx.archive, row, Tally(), 1)


def get_association(server: Server, store: Callable[[Any], int]) -> Any:
    """A C-GET requester's association (as TESTSCU), receiving CT and MR with `store`."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(QR_GET_CLASSES[1])
    roles = []
    for uid in (CT_IMAGE_STORAGE, MR_IMAGE_STORAGE):
        ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        roles.append(build_role(uid, scp_role=True))
    assoc = ae.associate(
        "127.0.0.1", server.port, ae_title="PACS_ENGINE", ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, store)],
    )  # fmt: skip
    assert assoc.is_established
    return assoc


def test_a_get_the_requester_aborts_is_audited_with_what_was_sent(server: Server) -> None:
    got: list[str] = []

    def store(event: Any) -> int:
        got.append(str(event.request.AffectedSOPInstanceUID))
        if len(got) == 1:
            event.assoc.abort()
        return 0x0000

    before = len([r for r in server.audit() if r["action"] == "c-get"])
    assoc = get_association(server, store)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid(1)  # three instances
    list(assoc.send_c_get(query, QR_GET_CLASSES[1]))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = [r for r in server.audit() if r["action"] == "c-get"][before:]
        if records:
            break
        time.sleep(0.05)
    ((record,),) = [records]
    assert record["outcome"] == "aborted" and record["study"] == [study_uid(1)]
    assert "instances=3" in record["detail"]


def test_a_retrieve_without_its_unique_key_is_refused(server: Server) -> None:
    assoc = scu_association(server.port, QR_GET_CLASSES[1])
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study_uid(1)  # no SeriesInstanceUID
        *_, (final, _) = assoc.send_c_get(query, QR_GET_CLASSES[1])
    finally:
        assoc.release()
    assert final.Status == 0xA900 and "SeriesInstanceUID" in final.ErrorComment
    last = [r for r in server.audit() if r["action"] == "c-get"][-1]
    assert last["outcome"] == "refused 0xA900" and last["actor"] == "TESTSCU"


@pytest.mark.parametrize(
    ("level", "key", "value"),
    [
        ("STUDY", "StudyInstanceUID", "*"),
        ("STUDY", "StudyInstanceUID", None),  # a real UID, then "*" in the same list
        ("SERIES", "SeriesInstanceUID", "1.2.?"),
    ],
)
def test_a_retrieve_refuses_wildcards_in_its_unique_keys(
    server: Server, level: str, key: str, value: str | None
) -> None:
    # Matched as a query, "*" would send a peer allowed to retrieve every instance.
    assoc = scu_association(server.port, QR_GET_CLASSES[1])
    try:
        query = Dataset()
        query.QueryRetrieveLevel = level
        query.StudyInstanceUID = study_uid(1)
        setattr(query, key, [study_uid(1), "*"] if value is None else value)
        *pending, (final, _) = assoc.send_c_get(query, QR_GET_CLASSES[1])
    finally:
        assoc.release()
    assert final.Status == 0xA900 and key in final.ErrorComment
    assert "wildcard" in final.ErrorComment
    assert not pending  # nothing was sent
    last = [r for r in server.audit() if r["action"] == "c-get"][-1]
    assert last["outcome"] == "refused 0xA900"


def test_a_wildcard_in_an_upper_levels_key_is_left_out_of_a_retrieve(
    server: Server, tmp_path: Path
) -> None:
    # The level's own key names the instances: an upper level's "*" narrows nothing.
    getscu(
        server, tmp_path / "g", "SERIES", "StudyInstanceUID=*", f"SeriesInstanceUID={series_uid(1)}"
    )
    assert set(received(tmp_path / "g")) == {sop_uid(s) for s in SPECS if s.series == 1}


def test_c_cancel_stops_a_get(server: Server) -> None:
    """The SCU cancels on receiving the first instance: the rest of the study is not sent."""
    stored: list[str] = []

    def store(event: Any) -> int:
        stored.append(str(event.request.AffectedSOPInstanceUID))
        if len(stored) == 1:
            event.assoc.send_c_cancel(9, query_model=QR_GET_CLASSES[1])
        return 0x0000

    assoc = get_association(server, store)
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid(1)  # three instances
        *_, (final, _) = assoc.send_c_get(query, QR_GET_CLASSES[1], msg_id=9)
    finally:
        assoc.release()
    assert final.Status == 0xFE00
    assert len(stored) == 1 and final.NumberOfCompletedSuboperations == 1
    assert final.NumberOfRemainingSuboperations == 2
    last = [r for r in server.audit() if r["action"] == "c-get"][-1]
    assert last["outcome"] == "cancelled"


def test_native_instances_in_other_syntaxes_arrive_as_explicit_little_endian(
    tmp_path: Path,
) -> None:
    """Big endian pixels are decoded from the archive; implicit VR data sets re-encoded."""
    implicit = pydicom.dcmread(sample("CT_small.dcm"))
    implicit.SOPInstanceUID = implicit.file_meta.MediaStorageSOPInstanceUID = f"{UID_ROOT}.8.1"
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit.save_as(tmp_path / "implicit.dcm", enforce_file_format=True)
    sources = [sample("MR_small_bigendian.dcm"), sample("rtplan.dcm"), tmp_path / "implicit.dcm"]
    archive = Archive.create(tmp_path / "a")
    assert archive.ingest(sources, workers=0).archived == 3
    ctx = ServeContext(archive, ServeConfig(), AuditLog(archive.path, sync_seconds=0))
    scp = start(ctx)
    port = scp.address[1]
    try:
        for number, source in enumerate(sources):
            original = pydicom.dcmread(source)
            assert original.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian
            out = tmp_path / f"got{number}"
            keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
            getscu(
                Server(port, ctx, [], tmp_path), out, "IMAGE",
                *[f"{k}={original[k].value}" for k in keys],
            )  # fmt: skip
            (path,) = out.iterdir()
            got = pydicom.dcmread(path)
            assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            if "PixelData" in original:
                assert np.array_equal(got.pixel_array, original.pixel_array)
                del got.PixelData, original.PixelData
            assert got == original
    finally:
        scp.stop()
        ctx.audit.close()
        archive.close()
    details = [r["detail"] for r in read_records(tmp_path / "a") if r["action"] == "c-get"]
    assert details == ["instances=1 completed=1 transcoded=1"] * 3


def test_image_type_matches_whole_or_any_value_and_the_new_keys_come_back(
    server: Server, tmp_path: Path
) -> None:
    """findscu at IMAGE level: several ImageType values are one pattern for the whole value
    (ORIGINAL\\PRIMARY* takes ORIGINAL\\PRIMARY\\AXIAL), one value matches when any of the
    file's does; ImageType, ConvolutionKernel and Manufacturer come back as the files hold
    them; at SERIES level Manufacturer and ManufacturerModelName match and come back."""
    datasets = source_datasets(server)
    returned = ("SOPInstanceUID", "ConvolutionKernel", "Manufacturer")  # and ImageType, matched
    for n, (condition, take) in enumerate(
        [
            (
                "ORIGINAL\\PRIMARY*",
                lambda joined, values: fnmatchcase(joined, "ORIGINAL\\PRIMARY*"),
            ),
            ("PRIMARY", lambda joined, values: "PRIMARY" in values),
            ("DERIVED\\*", lambda joined, values: joined.startswith("DERIVED\\")),
            ("ORIGINAL\\PRIMARY", lambda joined, values: joined == "ORIGINAL\\PRIMARY"),
        ]
    ):
        responses = findscu(
            server, tmp_path / f"i{n}", "-S", "IMAGE", f"ImageType={condition}", *returned
        )
        want = {
            str(ds.SOPInstanceUID)
            for ds in datasets
            if take("\\".join(ds.ImageType), list(ds.ImageType))
        }
        assert {str(r.SOPInstanceUID) for r in responses} == want, condition
        by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
        for r in responses:
            source = by_uid[str(r.SOPInstanceUID)]
            assert list(r.ImageType) == list(source.ImageType)
            assert r.Manufacturer == source.Manufacturer
            assert r.ConvolutionKernel == source.get("ConvolutionKernel", "")
    assert (
        0
        < len({str(ds.SOPInstanceUID) for ds in datasets if "PRIMARY" in ds.ImageType})
        < (len(datasets))
    )
    manufacturer = str(datasets[0].Manufacturer)
    series = findscu(
        server, tmp_path / "s", "-S", "SERIES", f"Manufacturer={manufacturer[:4]}*",
        "SeriesInstanceUID", "ManufacturerModelName",
    )  # fmt: skip
    assert {str(r.SeriesInstanceUID) for r in series} == {
        str(ds.SeriesInstanceUID) for ds in datasets if ds.Manufacturer.startswith(manufacturer[:4])
    }
    models = {str(ds.SeriesInstanceUID): ds.ManufacturerModelName for ds in datasets}
    assert all(r.ManufacturerModelName == models[str(r.SeriesInstanceUID)] for r in series)


def test_times_match_at_the_precision_they_are_given_in(server: Server, tmp_path: Path) -> None:
    """StudyTime 101500 is found by 1015 (10:15, any second), by 101500.000 and by a range
    whose bounds have fewer digits; a value of another minute is not. (The studies' times:
    1 101500, 2 083000, 3 230000, 4 120000, 5 000100.)"""
    cases = {
        "1015": {1},
        "101500.000": {1},
        "1015-1015": {1},
        "-1015": {1, 2, 5},
        "101500.5-": {3, 4},
        "10-12": {1, 4},
    }
    for n, (value, studies) in enumerate(cases.items()):
        responses = findscu(server, tmp_path / str(n), "-S", "STUDY", f"StudyTime={value}")
        found = {str(r.StudyInstanceUID) for r in responses}
        assert found == {study_uid(s) for s in studies}, value
    assert findscu(server, tmp_path / "other", "-S", "STUDY", "StudyTime=1016") == []


def test_an_empty_value_in_a_uid_list_is_no_uid_and_no_failure(server: Server) -> None:
    """A list with an empty value ('uid\\') was an empty index key: 0xC311, unaudited."""
    assoc = scu_association(server.port, STUDY_ROOT_FIND)
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = [study_uid(1), "", "1." * 300 + "1"]  # 601 bytes: no key
        answers = list(assoc.send_c_find(query, STUDY_ROOT_FIND))
    finally:
        assoc.release()
    assert [s.Status for s, _ in answers] == [0xFF00, 0x0000]
    assert answers[0][1].StudyInstanceUID == study_uid(1)
    last = [r for r in server.audit() if r["action"] == "c-find"][-1]
    assert last["actor"] == "TESTSCU" and last["outcome"] == "success"


@pytest.mark.parametrize(
    ("charset", "patient", "name"),
    [("ISO_IR 13", "PID004", "山田^太郎"), ("ISO 2022 IR 6", "PID003", "Müller^Jürgen")],
)
def test_an_answer_is_not_declared_in_a_set_that_cannot_hold_it(
    server: Server, charset: str, patient: str, name: str
) -> None:
    """ISO_IR 13 (JIS X 0201) holds no kanji and ISO 2022 IR 6 is ASCII, though pydicom
    encodes them as Shift JIS and Latin-1: such an answer comes in UTF-8, declared so."""
    assoc = scu_association(server.port, STUDY_ROOT_FIND)
    try:
        query = Dataset()
        query.SpecificCharacterSet = charset
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = patient
        query.PatientName = ""
        answers = [a for _, a in assoc.send_c_find(query, STUDY_ROOT_FIND) if a is not None]
    finally:
        assoc.release()
    (answer,) = answers
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    assert str(answer.PatientName) == name


def test_a_study_without_a_patient_id_gets_no_counts_of_other_patients(tmp_path: Path) -> None:
    """An empty Patient ID was queried as universal matching: the archive's every study.
    At PATIENT level, studies without an ID were one patient, and a patient's counts were
    those of the studies the query matched."""
    folder = tmp_path / "src"
    folder.mkdir()
    for n, pid in enumerate(("", "", "PID9", "PID9")):
        ds = pydicom.dcmread(sample("CT_small.dcm"))
        ds.PatientID, ds.PatientName = pid, f"NOID^{n}"
        ds.StudyInstanceUID = f"{UID_ROOT}.8.{n}"
        ds.SeriesInstanceUID = f"{UID_ROOT}.8.{n}.1"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{UID_ROOT}.8.{n}.1.1"
        ds.save_as(folder / f"{n}.dcm", enforce_file_format=True)
    archive = Archive.create(tmp_path / "archive")
    assert archive.ingest([folder], workers=0).archived == 4
    with serving_own(archive, STUDY_ROOT_FIND, PATIENT_ROOT_FIND) as assoc:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        query.PatientID = ""
        query.NumberOfPatientRelatedStudies = None
        query.NumberOfPatientRelatedInstances = None
        answers = [a for _, a in assoc.send_c_find(query, STUDY_ROOT_FIND) if a is not None]
        query.QueryRetrieveLevel = "PATIENT"
        del query.StudyInstanceUID
        query.PatientName = ""
        found = [a for _, a in assoc.send_c_find(query, PATIENT_ROOT_FIND) if a is not None]
        query.PatientName = "NOID^3"  # one of PID9's two studies
        (named,) = [a for _, a in assoc.send_c_find(query, PATIENT_ROOT_FIND) if a]
    counts = {
        a.StudyInstanceUID: (a.NumberOfPatientRelatedStudies, a.NumberOfPatientRelatedInstances)
        for a in answers
    }
    assert counts == {
        f"{UID_ROOT}.8.0": (None, None),  # asked, and unknown: empty
        f"{UID_ROOT}.8.1": (None, None),
        f"{UID_ROOT}.8.2": (2, 2),
        f"{UID_ROOT}.8.3": (2, 2),
    }
    patients = sorted(
        (str(a.PatientName), a.PatientID, a.NumberOfPatientRelatedStudies) for a in found
    )
    assert patients == [("NOID^0", "", 1), ("NOID^1", "", 1), ("NOID^3", "PID9", 2)]
    assert (named.PatientID, named.NumberOfPatientRelatedStudies) == ("PID9", 2)


def test_the_file_meta_ends_where_its_group_length_says() -> None:
    # A sender put group 0002 elements in the data set itself, one naming JPEG Baseline:
    # read as the file's, they had native bytes sent on a JPEG context as if stored so.
    meta = file_meta(CT_IMAGE_STORAGE, "1.2.3.4", str(ExplicitVRLittleEndian), "SCU")
    inside = Dataset()
    inside.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"
    inside.SOPInstanceUID = "1.2.3.4"
    stored = b"\0" * 128 + b"DICM" + meta
    data = stored + encode(inside, False, True)
    assert split_meta(data, {"transfer_syntax_uid": str(ExplicitVRLittleEndian)}) == (
        len(stored),
        str(ExplicitVRLittleEndian),
    )
    assert split_meta(data, {}) == (len(stored), str(ExplicitVRLittleEndian))  # the meta's
