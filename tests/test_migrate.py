"""`pacs-engine migrate` against a real legacy PACS: Orthanc from Debian, on 127.0.0.1.

Orthanc is loaded through its REST API with three studies of the corpus (CT of
1995-09-03, CR of 2001-01-01, MR of 2003-05-05; 11 instances) and knows our AE title
as a C-MOVE destination. Each test migrates into an archive of its own; the archived
data sets are compared byte for byte with the files Orthanc stores.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import benchmark_module
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)
from serve_helpers import serving, stop

import pacs_engine
from pacs_engine.archive import Archive
from pacs_engine.scanning import scan
from pacs_engine.serve.audit import AuditLog, read_records
from pacs_engine.serve.config import ServeConfig
from pacs_engine.serve.context import ServeContext
from pacs_engine.serve.dimse import DimseServer
from pacs_engine.serve.migrate import (
    Filters,
    Legacy,
    Migration,
    MigrationError,
    parse_filters,
    parse_rate_limit,
    parse_source,
    read_journal,
)
from pacs_engine.serve.spool import Spool

_orthanc = benchmark_module("orthanc")
Orthanc, free_port, running_orthanc = _orthanc.Orthanc, _orthanc.free_port, _orthanc.running_orthanc

CORPUS = Path(os.environ.get("PACS_ENGINE_CORPUS", "/work/shared/corpus"))
DIRS = CORPUS / "pydicom/test_files/dicomdirtests"
RUN_SECONDS = 120
AE_TITLE = "PACS_ENGINE"

CT_STUDY = "1.3.6.1.4.1.5962.1.1.0.0.0.1196530851.28319.0.1"
CR_STUDY = "1.3.6.1.4.1.5962.1.1.0.0.0.1196527414.5534.0.1"
MR_STUDY = "1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.133"
CT2N_STUDY = "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.1"  # 2001-01-01, as the CR
STUDY_SIZES = {CT_STUDY: 4, CR_STUDY: 3, MR_STUDY: 4}


def corpus_files() -> list[Path]:
    """The 11 files of the three studies."""
    return [
        *(DIRS / "77654033" / name for name in ("CR1/6154", "CR2/6247", "CR3/6278")),
        *sorted((DIRS / "77654033/CT2").iterdir()),
        *(DIRS / "98892003" / name for name in ("MR1/4919", "MR2/4950", "MR2/4981", "MR2/5011")),
    ]


@dataclass
class Pacs:
    """The running Orthanc and the port it C-MOVEs to (our Storage SCP's)."""

    orthanc: Orthanc
    move_port: int

    @property
    def source(self) -> str:
        return f"ORTHANC@127.0.0.1:{self.orthanc.dicom_port}"

    def request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        conn = self.orthanc.connection(timeout=30)
        try:
            conn.request(method, path, body=body)
            response = conn.getresponse()
            data = response.read()
            assert response.status == 200, f"{method} {path}: HTTP {response.status}"
            return data
        finally:
            conn.close()

    def instances(self) -> dict[str, tuple[str, str]]:
        """{SOP Instance UID: (Orthanc id, Study Instance UID)} of what Orthanc holds."""
        found = {}
        for orthanc_id in self.orthanc.get("/instances"):
            tags = self.orthanc.get(f"/instances/{orthanc_id}/simplified-tags")
            found[tags["SOPInstanceUID"]] = (orthanc_id, tags["StudyInstanceUID"])
        return found

    def file(self, orthanc_id: str) -> bytes:
        """The DICOM file Orthanc stores for an instance."""
        return self.request("GET", f"/instances/{orthanc_id}/file")


def load(legacy: Pacs) -> None:
    for path in corpus_files():
        legacy.request("POST", "/instances", path.read_bytes())
    assert len(legacy.orthanc.get("/instances")) == sum(STUDY_SIZES.values())


def orthanc_for(move_port: int, **extra: object) -> Iterator[Orthanc]:
    """Orthanc that knows our AE title at 127.0.0.1:`move_port` (C-MOVE destination)."""
    modalities = {"pacs": [AE_TITLE, "127.0.0.1", move_port]}
    return running_orthanc(extra={"DicomModalities": modalities, **extra})


@pytest.fixture(scope="module")
def pacs() -> Iterator[Pacs]:
    """One loaded Orthanc for the module's tests (each migrates into its own archive)."""
    move_port = free_port()
    with orthanc_for(move_port) as orthanc:
        legacy = Pacs(orthanc, move_port)
        load(legacy)
        yield legacy


def migrate_command(legacy: Pacs, archive: Path, *args: str) -> list[str]:
    """The command line migrating from `legacy` (Orthanc) into `archive`."""
    return [*migrate_command_to(legacy.source, archive), "--port", str(legacy.move_port), *args]


def migrate_command_to(source: str, archive: Path) -> list[str]:
    """The command line migrating from `source` into `archive`, ingesting in-process."""
    return [
        sys.executable,
        "-m",
        "pacs_engine.cli",
        "migrate",
        "--from",
        source,
        "--archive",
        str(archive),
        "--listen",
        "127.0.0.1",
        "--workers",
        "0",
    ]


def migrate(legacy: Pacs, archive: Path, *args: str) -> subprocess.CompletedProcess:
    """Run `pacs-engine migrate`, bounded in time."""
    return subprocess.run(
        migrate_command(legacy, archive, *args),
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS,
        check=False,
    )


def dataset_bytes(data: bytes) -> bytes:
    """A Part 10 file's data set: what follows its file meta group."""
    return data[scan(data).dataset_offset :]


def archived(archive: Path) -> dict[str, str]:
    """{SOP Instance UID: Study Instance UID} of what the archive holds."""
    with Archive(archive) as opened:
        return {row["SOPInstanceUID"]: row["StudyInstanceUID"] for row in opened.query()}


def assert_same_as_orthanc(legacy: Pacs, archive: Path, studies: set[str]) -> None:
    """Every instance of `studies` is archived, its data set byte-identical to Orthanc's file."""
    expected = {sop: oid for sop, (oid, study) in legacy.instances().items() if study in studies}
    assert set(archived(archive)) == set(expected)
    with Archive(archive) as opened:
        for sop, orthanc_id in expected.items():
            ours, theirs = opened.export_bytes(sop), legacy.file(orthanc_id)
            assert dataset_bytes(ours) == dataset_bytes(theirs), sop


def report_line(output: str, start: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith(start)]
    assert lines, f"no line starting {start!r} in {output!r}"
    return lines[-1]


# --- the command against Orthanc -------------------------------------------------------


@pytest.mark.parametrize("method", ["move", "get"])
def test_migrate_copies_every_study_byte_identical(pacs: Pacs, tmp_path: Path, method: str) -> None:
    run = migrate(pacs, tmp_path / "archive", "--method", method, "--parallel", "2")
    assert run.returncode == 0, run.stderr
    assert report_line(run.stdout, "studies found") == (
        "studies found: 3, complete: 3 (0 in an earlier run), incomplete: 0, failed: 0"
    )
    assert report_line(run.stdout, "instances received").startswith("instances received: 11 ")
    assert report_line(run.stdout, "inputs") == (
        "inputs: 11 = archived 11 + duplicates 0 + conflicts 0 + quarantined 0"
    )
    assert "resume" not in run.stdout
    assert_same_as_orthanc(pacs, tmp_path / "archive", set(STUDY_SIZES))
    journal = next((tmp_path / "archive" / "migrations").glob("*.json"))
    studies = read_journal(journal)
    assert {uid: (s.expected, s.received) for uid, s in studies.items()} == {
        uid: (size, size) for uid, size in STUDY_SIZES.items()
    }
    assert {s.state for s in studies.values()} == {"complete"}
    # Every instance came in through the Storage SCP's handler, audited as the PACS's store.
    stores = [r for r in read_records(tmp_path / "archive") if r["action"] == "store"]
    assert len(stores) == 11
    assert {r["actor"] for r in stores} == {"ORTHANC"}
    assert {r["outcome"] for r in stores} == {"success"}


def test_c_get_brings_each_instance_in_its_stored_transfer_syntax(tmp_path: Path) -> None:
    # One MR study in seven transfer syntaxes, JPEG 2000 among them: a presentation
    # context per syntax lets Orthanc send each as stored; with one context per class it
    # transcodes to the syntax it accepted (no longer the original bytes), and fails on
    # JPEG 2000, which it cannot transcode.
    files = sorted((CORPUS / "dcm_qa_ts").glob("*.dcm"))
    move_port = free_port()
    with orthanc_for(move_port) as orthanc:
        legacy = Pacs(orthanc, move_port)
        for path in files:
            legacy.request("POST", "/instances", path.read_bytes())
        studies = {study for _, study in legacy.instances().values()}
        assert len(studies) == 1 and len(legacy.instances()) == len(files) == 9
        run = migrate(legacy, tmp_path / "archive", "--method", "get")
        assert run.returncode == 0, run.stdout
        assert_same_as_orthanc(legacy, tmp_path / "archive", studies)


@pytest.mark.parametrize(
    ("filters", "studies"),
    [
        (["Modality=CT"], {CT_STUDY}),
        (["StudyDate=20000101-20021231"], {CR_STUDY}),
        (["StudyDate=19950903-20030505", "Modality=MR"], {MR_STUDY}),
        (["StudyDate=20030506-"], set()),
    ],
)
def test_filters_select_exactly_the_matching_studies(
    pacs: Pacs, tmp_path: Path, filters: list[str], studies: set[str]
) -> None:
    args = [arg for text in filters for arg in ("--filter", text)]
    run = migrate(pacs, tmp_path / "archive", *args)
    assert run.returncode == 0, run.stderr
    assert report_line(run.stdout, "studies found").startswith(f"studies found: {len(studies)},")
    assert set(archived(tmp_path / "archive").values()) == studies
    if studies:
        assert_same_as_orthanc(pacs, tmp_path / "archive", studies)


def test_a_capped_listing_is_split_into_date_windows(pacs: Pacs, tmp_path: Path) -> None:
    # Two answers are taken as a cap: the first query (3 studies) and every window with
    # two are split, down to windows of one study each.
    run = migrate(pacs, tmp_path / "archive", "--max-results", "2")
    assert run.returncode == 0, run.stderr
    assert report_line(run.stdout, "studies found").startswith("studies found: 3, complete: 3")
    assert Counter(archived(tmp_path / "archive").values()) == STUDY_SIZES
    # A cap of one answer is reached by a day of one study, then by its one modality:
    # that is reported, not trusted.
    dates = "StudyDate=20010101-20011231"
    run = migrate(pacs, tmp_path / "other", "--max-results", "1", "--filter", dates)
    assert run.returncode == 1
    problems = [line for line in run.stdout.splitlines() if line.startswith("listing: ")]
    assert problems == [
        "listing: 20010101 CR: the answer is capped even for one day; studies may be missing "
        "(narrow it with --filter)"
    ]
    assert "run the same command again to resume" in run.stdout


def test_a_pacs_that_caps_its_answers_cannot_truncate_the_listing(tmp_path: Path) -> None:
    # Orthanc's LimitFindResults: one study answered, then Cancel (0xFE00). A fourth study,
    # a CT of the CR's day, makes that day capped too: it is split by modality.
    move_port = free_port()
    with orthanc_for(move_port, LimitFindResults=1) as orthanc:
        legacy = Pacs(orthanc, move_port)
        load(legacy)
        for path in sorted((DIRS / "98892001/CT2N").iterdir()):
            legacy.request("POST", "/instances", path.read_bytes())
        run = migrate(legacy, tmp_path / "archive")
        assert run.returncode == 0, run.stdout + run.stderr
        assert report_line(run.stdout, "studies found").startswith("studies found: 4, complete: 4")
        assert Counter(archived(tmp_path / "archive").values()) == {**STUDY_SIZES, CT2N_STUDY: 2}


def test_a_killed_migration_resumes_without_fetching_a_complete_study_again(
    pacs: Pacs, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    # One study every 10 s: the kill lands after the first study and before the third.
    proc = subprocess.Popen(
        migrate_command(pacs, archive, "--rate-limit", "6/min"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        done = poll_complete(archive, 1, seconds=60)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert len(done) in (1, 2)
    run = migrate(pacs, archive)
    assert run.returncode == 0, run.stderr
    assert report_line(run.stdout, "studies found").startswith(
        f"studies found: 3, complete: 3 ({len(done)} in an earlier run)"
    )
    assert_same_as_orthanc(pacs, archive, set(STUDY_SIZES))
    # Each instance of a study complete before the kill was received once, by the first run.
    stores = Counter(r["study"] for r in read_records(archive) if r["action"] == "store")
    for study in done:
        assert stores[study] == STUDY_SIZES[study]


def poll_complete(archive: Path, count: int, seconds: float) -> set[str]:
    """The studies the journal says are complete, once there are `count` (bounded in time)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for journal in (archive / "migrations").glob("*.json"):
            done = {uid for uid, s in read_journal(journal).items() if s.state == "complete"}
            if len(done) >= count:
                return done
        time.sleep(0.05)
    raise AssertionError(f"{count} complete studies not journalled in {seconds} s")


def test_a_study_short_of_instances_is_retried_then_reported_incomplete(tmp_path: Path) -> None:
    move_port = free_port()
    with orthanc_for(move_port) as orthanc:
        legacy = Pacs(orthanc, move_port)
        load(legacy)
        archive = tmp_path / "archive"
        # The listing (and its counts) is journalled first; then Orthanc loses one CT instance.
        journal_listing(legacy, archive)
        lost = next(oid for oid, study in legacy.instances().values() if study == CT_STUDY)
        legacy.request("DELETE", f"/instances/{lost}")
        run = migrate(legacy, archive, "--retries", "1")
        assert run.returncode == 1
        assert report_line(run.stdout, "studies found") == (
            "studies found: 3, complete: 2 (0 in an earlier run), incomplete: 1, failed: 0"
        )
        assert report_line(run.stdout, "incomplete ") == (
            f"incomplete {CT_STUDY}: 3 of 4 instances received"
        )
        assert "run the same command again to resume" in run.stdout
        # What was received is archived all the same, once: the retry's copies are duplicates.
        assert Counter(archived(archive).values()) == {CT_STUDY: 3, CR_STUDY: 3, MR_STUDY: 4}
        assert report_line(run.stdout, "inputs") == (
            "inputs: 13 = archived 10 + duplicates 3 + conflicts 0 + quarantined 0"
        )


def journal_listing(legacy: Pacs, archive: Path) -> None:
    """Create `archive` and journal the listing `migrate` makes of `legacy`, retrieving nothing."""
    opened = Archive.create(archive)
    audit = AuditLog(archive)
    try:
        context = ServeContext(opened, ServeConfig(ae_title=AE_TITLE), audit)
        server = DimseServer(context, Spool(archive))  # not started: nothing is retrieved
        source = Legacy(parse_source(legacy.source), AE_TITLE, 30.0)
        Migration(opened, server, source, Filters()).prepare()
    finally:
        audit.close()
        opened.close()


def test_a_pacs_that_is_down_is_named_with_the_reason(tmp_path: Path) -> None:
    port = free_port()
    run = subprocess.run(
        [*migrate_command_to(f"OLDPACS@127.0.0.1:{port}", tmp_path / "archive"), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS,
        check=False,
    )
    assert run.returncode == 2
    assert f"legacy PACS OLDPACS@127.0.0.1:{port}: cannot connect: Connection refused" in run.stderr


def test_a_pacs_that_does_not_know_our_ae_title_is_named_with_the_reason(
    pacs: Pacs, tmp_path: Path
) -> None:
    run = migrate(pacs, tmp_path / "archive", "--ae-title", "STRANGER")
    assert run.returncode == 2
    assert f"legacy PACS {pacs.source}: the association ended in a C-FIND" in run.stderr
    assert "our AE title STRANGER" in run.stderr


# --- options -------------------------------------------------------------------------


def test_filters_parse_dates_and_keys() -> None:
    parsed = parse_filters(["StudyDate=20100101-20151231", "Modality=CT", "PatientID=X*"])
    assert (str(parsed.first), str(parsed.last)) == ("2010-01-01", "2015-12-31")
    assert parsed.keys == (("ModalitiesInStudy", "CT"), ("PatientID", "X*"))
    one_day = parse_filters(["StudyDate=20100101"])
    assert one_day.first == one_day.last
    assert parse_filters(["StudyDate=-20100101"]).first is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("StudyDate=2010-01-01", "a date is YYYYMMDD"),
        ("StudyDate=20100230", "no such date"),
        ("StudyDate=20150101-20100101", "ends before it starts"),
        ("NotAKeyword=1", "not a DICOM keyword"),
        ("Modality", "write KEY=VALUE"),
    ],
)
def test_bad_filters_are_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(MigrationError, match=reason):
        parse_filters([text])


def test_rate_limits_and_sources_parse() -> None:
    assert parse_rate_limit("30/min").studies_per_minute == 30
    assert parse_rate_limit("2.5MB/s").bytes_per_second == 2.5e6
    with pytest.raises(MigrationError, match="--rate-limit"):
        parse_rate_limit("fast")
    assert parse_source("OLD@10.0.0.1:104").address == ("10.0.0.1", 104)
    with pytest.raises(MigrationError, match="AET@HOST:PORT"):
        parse_source("OLD")


# --- a PACS that drops the association mid-study (a pynetdicom SCP of the test's) ------


@contextmanager
def flaky_pacs(drop_study: str, studies: dict[str, list[Path]]) -> Iterator[tuple[int, Counter]]:
    """A legacy PACS answering C-FIND and C-GET for `studies`, that aborts the association
    after the first instance of `drop_study`; (port, C-GETs asked per study)."""
    datasets = {uid: [pydicom.dcmread(path) for path in paths] for uid, paths in studies.items()}
    asked: Counter = Counter()

    def on_find(event: Any) -> Iterator[Any]:
        for uid, instances in datasets.items():
            answer = Dataset()
            answer.QueryRetrieveLevel = "STUDY"
            answer.StudyInstanceUID = uid
            answer.StudyDate = instances[0].StudyDate
            answer.NumberOfStudyRelatedInstances = len(instances)
            yield 0xFF00, answer

    def on_get(event: Any) -> Iterator[Any]:
        uid = str(event.identifier.StudyInstanceUID)
        asked[uid] += 1
        instances = datasets.get(uid, [])
        yield len(instances)
        for number, instance in enumerate(instances):
            if uid == drop_study and number == 1:
                event.assoc.abort()
                return
            yield 0xFF00, instance

    ae = AE("FLAKY")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    for context in StoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, scp_role=True, scu_role=False)
    handlers = [(evt.EVT_C_FIND, on_find), (evt.EVT_C_GET, on_get)]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    try:
        yield int(server.server_address[1]), asked
    finally:
        server.shutdown()


def test_a_study_whose_association_drops_is_retried_reported_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    files = corpus_files()
    studies = {CR_STUDY: files[:3], CT_STUDY: files[3:7]}
    with flaky_pacs(CR_STUDY, studies) as (port, asked):
        run = subprocess.run(
            [
                *migrate_command_to(f"FLAKY@127.0.0.1:{port}", tmp_path / "archive"),
                "--method",
                "get",
                "--retries",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=RUN_SECONDS,
            check=False,
        )
    assert run.returncode == 1, run.stderr
    assert asked == {CR_STUDY: 2, CT_STUDY: 1}  # the dropped study once more, the other once
    assert report_line(run.stdout, "studies found") == (
        "studies found: 2, complete: 1 (0 in an earlier run), incomplete: 1, failed: 0"
    )
    assert report_line(run.stdout, "incomplete ") == (
        f"incomplete {CR_STUDY}: legacy PACS FLAKY@127.0.0.1:{port}: "
        "the association ended during the C-GET"
    )
    assert Counter(archived(tmp_path / "archive").values()) == {CT_STUDY: 4, CR_STUDY: 1}


def test_undated_studies_are_found_and_a_capped_listing_says_what_it_may_miss(
    tmp_path: Path,
) -> None:
    # A CR study without StudyDate (new UIDs, the date removed) beside the three dated ones.
    undated = pydicom.dcmread(corpus_files()[1])
    del undated.StudyDate
    undated.StudyInstanceUID, undated.SeriesInstanceUID = generate_uid(), generate_uid()
    undated.SOPInstanceUID = undated.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    undated.save_as(buffer)
    move_port = free_port()
    with orthanc_for(move_port) as orthanc:
        legacy = Pacs(orthanc, move_port)
        load(legacy)
        legacy.request("POST", "/instances", buffer.getvalue())
        expected = {**STUDY_SIZES, str(undated.StudyInstanceUID): 1}
        # Not capped: the one unbounded query lists the undated study too.
        run = migrate(legacy, tmp_path / "whole")
        assert run.returncode == 0, run.stdout + run.stderr
        assert Counter(archived(tmp_path / "whole").values()) == expected
        # Capped: no date window finds it, and Orthanc does not match '""' (empty values):
        # the undated study seen in the capped answer is migrated, and the gap reported.
        run = migrate(legacy, tmp_path / "capped", "--max-results", "3")
        assert run.returncode == 1
        assert Counter(archived(tmp_path / "capped").values()) == expected
        assert report_line(run.stdout, "listing: ").startswith(
            "listing: studies without StudyDate: the PACS caps its answer"
        )


def test_the_journal_reads_the_last_outcome_of_each_study_past_a_torn_line(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "abc.json"
    listing = {"format": 1, "listing_problems": [], "studies": {"1.2": 4, "1.3": None}}
    journal.write_text(json.dumps(listing))
    (tmp_path / "abc.log").write_bytes(
        b'\n{"study": "1.2", "state": "incomplete", "received": 3, "reason": "short"}\n'
        b'\n{"study": "1.3", "state": "comp'  # a kill cut this one short
        b'\n{"study": "1.2", "state": "complete", "received": 4, "reason": null}\n'
    )
    studies = read_journal(journal)
    assert (studies["1.2"].state, studies["1.2"].received, studies["1.2"].reason) == (
        "complete",
        4,
        None,
    )
    assert (studies["1.3"].state, studies["1.3"].expected) == ("pending", None)


def test_a_pacs_that_rejects_the_called_ae_title_is_named_with_the_reason(tmp_path: Path) -> None:
    move_port = free_port()
    with orthanc_for(move_port, DicomCheckCalledAet=True) as orthanc:
        source = f"NOT_ORTHANC@127.0.0.1:{orthanc.dicom_port}"
        run = subprocess.run(
            [*migrate_command_to(source, tmp_path / "archive"), "--port", str(move_port)],
            capture_output=True,
            text=True,
            timeout=RUN_SECONDS,
            check=False,
        )
    assert run.returncode == 2
    assert f"legacy PACS {source}: association rejected: Called AE title not recognised" in (
        run.stderr
    )


def test_a_pacs_that_accepts_no_retrieve_context_is_named_with_the_reason(tmp_path: Path) -> None:
    # It answers C-FIND, then accepts none of the C-MOVE contexts asked: pynetdicom aborts
    # from our side, which the reason blamed on the PACS ("aborted by the peer").
    def on_find(event: Any) -> Iterator[Any]:
        answer = Dataset()
        answer.QueryRetrieveLevel = "STUDY"
        answer.StudyInstanceUID = "1.2.3.1"
        answer.StudyDate = "20200101"
        answer.NumberOfStudyRelatedInstances = 1
        yield 0xFF00, answer

    ae = AE("FINDONLY")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)]
    )
    try:
        source = f"FINDONLY@127.0.0.1:{server.server_address[1]}"
        command = [*migrate_command_to(source, tmp_path / "archive"), "--port", "0"]
        run = subprocess.run(
            [*command, "--method", "move", "--retries", "0"],
            capture_output=True,
            text=True,
            timeout=RUN_SECONDS,
            check=False,
        )
    finally:
        server.shutdown()
    assert run.returncode != 0
    assert (
        f"legacy PACS {source}: it accepted none of the presentation contexts asked "
        "(Study Root Query/Retrieve Information Model - MOVE)"
    ) in run.stdout + run.stderr
    assert "aborted by the peer" not in run.stdout + run.stderr


# --- Orthanc as the destination of our C-MOVE ------------------------------------------


def test_our_c_move_delivers_to_orthanc_the_bytes_we_archived(tmp_path: Path) -> None:
    """`serve`'s Q/R SCP moves a study to Orthanc: Orthanc stores each data set as archived."""
    files = corpus_files()
    archive = pacs_engine.Archive.create(tmp_path / "archive")
    assert archive.ingest(files, workers=0).archived == len(files)
    archive.close()
    with running_orthanc() as orthanc:
        destination = f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
        with serving(tmp_path / "archive", "--peer", "MOVESCU=retrieve", "--peer", destination) as (
            proc,
            port,
        ):
            moved = subprocess.run(
                ["movescu", "-S", "-aec", AE_TITLE, "-aem", "ORTHANC",
                 "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={CT_STUDY}",
                 "127.0.0.1", str(port)],
                capture_output=True, text=True, timeout=RUN_SECONDS, check=False,
            )  # fmt: skip
            assert moved.returncode == 0, moved.stderr
            code, _ = stop(proc)
        assert code == 0
        legacy = Pacs(orthanc, 0)
        received = legacy.instances()
        assert {study for _, study in received.values()} == {CT_STUDY}
        assert len(received) == STUDY_SIZES[CT_STUDY]
        with Archive(tmp_path / "archive") as opened:
            for sop, (orthanc_id, _) in received.items():
                ours = opened.export_bytes(sop)
                assert dataset_bytes(legacy.file(orthanc_id)) == dataset_bytes(ours), sop
    outcomes = [r for r in read_records(tmp_path / "archive") if r["action"] == "c-move"]
    assert [r["outcome"] for r in outcomes] == ["success"]
