"""The DIMSE server against real peers (dcmtk) and a pynetdicom SCU, in this process.

The process-level behaviour (start-up, SIGTERM, kill -9 and restart) is in
test_serve_process.py.
"""

from __future__ import annotations

import copy
import hashlib
import io
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from conftest import require_corpus
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, _config, build_role
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from serve_helpers import (
    AE_TITLE,
    PROPOSE,
    echoscu,
    manifest,
    running_server,
    storescu,
)

from pacs_engine.archive.corrections import Corrections
from pacs_engine.scanning import scan
from pacs_engine.serve.audit import verify_chain
from pacs_engine.serve.dimse import (
    CANNOT_UNDERSTAND,
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES,
    Service,
    file_meta,
)

#: Corpus files, one per transfer syntax sent: native, deflate, and compressed
#: syntaxes the archive keeps as their bitstream.
SENT = {
    "1.2.840.10008.1.2.1": "DICOMHTJ2K/dicomp10/MR4_UNC",
    "1.2.840.10008.1.2": "dcm_qa_ts/2.dcm",
    "1.2.840.10008.1.2.1.99": "pydicom/test_files/image_dfl.dcm",
    "1.2.840.10008.1.2.4.50": "pylibjpeg-data/JPEGBaseline/JPEGBaseline_1s_1f_u_08_08.dcm",
    "1.2.840.10008.1.2.4.70": "dcm_qa/Orientation/axmb/AxAsc36mb2a/jpg1.dcm",
    "1.2.840.10008.1.2.4.80": "dcm_qa_ts/7.dcm",
    "1.2.840.10008.1.2.4.90": "dcm_qa/Orientation/axmb/AxInt36mb/jp2k1.dcm",
    "1.2.840.10008.1.2.5": "dcm_qa_ts/4.dcm",
}
#: Of those, the ones storescu sends with their dataset bytes untouched (it rewrites
#: the others' group lengths and padding as it parses them).
SENT_AS_IS = {"1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator:
    with running_server(tmp_path / "archive", peers=("SCU=store", "VIEWER=query")) as running:
        yield running


def dataset_bytes(data: bytes) -> bytes:
    """The dataset of a DICOM file: what follows its file meta group."""
    return data[scan(data).dataset_offset :]


def comparable(ds: Dataset) -> Dataset:
    """`ds` without what storescu drops or rewrites: group lengths and trailing padding."""
    for element in list(ds):
        if element.tag.element == 0 or element.tag == 0xFFFCFFFC:
            del ds[element.tag]
    return ds


def scu_association(port: int, calling: str = "SCU", contexts=((MRImageStorage, None),)):
    """A pynetdicom association to the server, proposing (SOP class, syntaxes) contexts."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for uid, syntaxes in contexts:
        ae.add_requested_context(uid, syntaxes) if syntaxes else ae.add_requested_context(uid)
    return ae.associate("127.0.0.1", port, ae_title=AE_TITLE)


# --- associations and C-ECHO ------------------------------------------------------------


def test_echo_for_a_peer_and_rejection_of_an_unknown_ae_are_audited(server) -> None:
    assert echoscu(server.port, "SCU").returncode == 0
    refused = echoscu(server.port, "INTRUDER")
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stderr
    wrong_called = subprocess.run(
        ["echoscu", "-aet", "SCU", "-aec", "OTHER", "127.0.0.1", str(server.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Called AE Title Not Recognized" in wrong_called.stderr
    outcomes = [(r["actor"], r["action"], r["outcome"], r["detail"]) for r in server.records()]
    assert ("SCU", "associate", "accepted", None) in outcomes
    assert ("SCU", "echo", "success", None) in outcomes
    assert ("INTRUDER", "associate", "rejected", "calling AE title not recognised") in outcomes
    assert ("SCU", "associate", "rejected", "called AE title not recognised") in outcomes
    assert verify_chain(server.root) == []


def _described(context) -> tuple:
    return (
        context.abstract_syntax,
        list(context.transfer_syntax),
        context.scu_role,
        context.scp_role,
    )


def test_each_association_negotiates_on_its_own_copy_of_the_contexts(server) -> None:
    held = [scu_association(server.port) for _ in range(2)]
    try:
        assert all(assoc.is_established for assoc in held)
        offered = server.server._server.contexts
        copies = [a.acceptor.supported_contexts for a in server.server.ae.active_associations]
        assert len(copies) == 2
        for contexts in copies:
            # The same contexts as the server's, none of its objects or lists: what one
            # association's negotiation changes, no other sees.
            assert [_described(c) for c in contexts] == [_described(c) for c in offered]
            assert not {id(c) for c in contexts} & {id(c) for c in offered}
            assert not {id(c._transfer_syntax) for c in contexts} & {
                id(c._transfer_syntax) for c in offered
            }
        assert not {id(c) for c in copies[0]} & {id(c) for c in copies[1]}
    finally:
        for assoc in held:
            assoc.release()


def test_with_no_peers_no_one_is_admitted(tmp_path: Path) -> None:
    with running_server(tmp_path / "archive", peers=()) as running:
        result = echoscu(running.port, "SCU")
        assert result.returncode != 0
        assert "Calling AE Title Not Recognized" in result.stderr


def test_associations_beyond_the_limit_are_rejected_and_the_pdu_size_announced(
    tmp_path: Path,
) -> None:
    with running_server(tmp_path / "archive", max_associations=1, max_pdu=16384) as running:
        held = scu_association(running.port, contexts=((Verification, None),))
        assert held.is_established
        assert held.acceptor.maximum_length == 16384  # the PDU size the server receives
        try:
            assert echoscu(running.port).returncode != 0
        finally:
            held.release()
        assert echoscu(running.port).returncode == 0  # the slot is free again
        details = [r["detail"] for r in running.records("associate")]
        assert "too many associations" in details


# --- C-STORE ----------------------------------------------------------------------------


def test_storescu_of_every_kept_syntax_archives_the_bytes_received(server) -> None:
    corpus = require_corpus()
    sent = {syntax: corpus / path for syntax, path in SENT.items()}
    for syntax, path in sent.items():
        result = storescu(server.port, [path], syntax)
        assert result.returncode == 0, (syntax, result.stderr)
    received = {
        scan(p.read_bytes()).attributes["SOPInstanceUID"]: p.read_bytes()
        for p in server.spool.waiting_files()
    }
    assert len(received) == len(sent)
    server.drain_now()
    assert server.spool.waiting_files() == [] and server.spool.batch_files() == []
    (report,) = server.reports
    assert (report.inputs, report.archived, report.quarantined) == (len(sent), len(sent), 0)
    for syntax, path in sent.items():
        source = path.read_bytes()
        uid = scan(source).attributes["SOPInstanceUID"]
        exported = server.archive.export_bytes(uid)
        assert exported == received[uid]  # the received bytes exactly, file meta and all
        if syntax in SENT_AS_IS:
            assert dataset_bytes(exported) == dataset_bytes(source)
        ours, theirs = pydicom.dcmread(io.BytesIO(exported)), pydicom.dcmread(path)
        assert ours.file_meta.TransferSyntaxUID == syntax  # accepted as it is: no transcode
        assert ours.file_meta.SourceApplicationEntityTitle == "SCU"
        assert comparable(ours) == comparable(theirs)
        assert (ours.pixel_array == theirs.pixel_array).all()
    stores = server.records("store")
    assert [r["outcome"] for r in stores] == ["success"] * len(sent)
    studies = {scan(p.read_bytes()).attributes["StudyInstanceUID"] for p in sent.values()}
    assert {r["study"] for r in stores} == studies
    uids = [scan(p.read_bytes()).attributes for p in sent.values()]
    assert {(r["series"], *r["instances"]) for r in stores} == {
        (a["SeriesInstanceUID"], a["SOPInstanceUID"]) for a in uids
    }
    assert all("PatientName" not in str(r) for r in server.records())


@pytest.mark.parametrize(
    ("sop_class", "sop", "syntax", "source_ae"),
    [
        (MRImageStorage, "1.2.826.0.1.3680043.8.498.1", "1.2.840.10008.1.2.1", "SCU"),
        (CTImageStorage, "1.2.826.0.1.3680043.8.498.12", "1.2.840.10008.1.2.4.80", "CT_SCANNER"),
        ("1.2.840.10008.5.1.4.1.1.7", "1.2.3", "1.2.840.10008.1.2", "A"),
    ],
)
def test_the_file_meta_is_the_one_pydicom_writes_for_pynetdicom(
    sop_class: str, sop: str, syntax: str, source_ae: str
) -> None:
    # Odd and even lengths of every padded value: UIDs pad with NUL, SH and AE with a space.
    meta = create_file_meta(
        sop_class_uid=UID(sop_class), sop_instance_uid=UID(sop), transfer_syntax=UID(syntax)
    )
    meta.SourceApplicationEntityTitle = source_ae
    assert file_meta(sop_class, sop, syntax, source_ae) == encode_file_meta(meta)


def native_files(count: int) -> list[Path]:
    """`count` small explicit VR little endian corpus files of distinct content."""
    corpus = require_corpus()
    seen, picked = set(), []
    for row in manifest(corpus):
        if (
            row["transfer_syntax_uid"] == "1.2.840.10008.1.2.1"
            and row["pydicom_decodes"] == "yes"
            and int(row["bytes"]) < 200_000
            and row["sha256"] not in seen
            and row["path"].startswith("dcm_qa")
        ):
            seen.add(row["sha256"])
            picked.append(corpus / row["path"])
        if len(picked) == count:
            break
    assert len(picked) == count
    return picked


def test_four_concurrent_storescu_are_all_archived(server) -> None:
    files = native_files(20)
    procs = [
        subprocess.Popen(
            ["storescu", "-xe", "-aet", "SCU", "-aec", AE_TITLE, "127.0.0.1", str(server.port)]
            + [str(f) for f in files[i::4]],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(4)
    ]
    assert [p.wait(120) for p in procs] == [0, 0, 0, 0]
    assert len(server.spool.waiting_files()) == 20
    server.drain_now()
    (report,) = server.reports
    assert report.inputs == 20 and report.quarantined == 0
    assert report.archived + report.duplicates + report.conflicts + report.quarantined == 20
    for path in files:
        uid = scan(path.read_bytes()).attributes["SOPInstanceUID"]
        assert server.archive.export_bytes(uid)  # every one retrievable
    assert [r["outcome"] for r in server.records("store")] == ["success"] * 20


def test_an_ae_without_the_store_right_is_refused(server) -> None:
    ds = pydicom.dcmread(native_files(1)[0])
    assoc = scu_association(server.port, "VIEWER", contexts=((ds.SOPClassUID, None),))
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == NOT_AUTHORIZED
    assert server.spool.waiting_files() == []
    (record,) = server.records("store")
    assert (record["actor"], record["outcome"], record["detail"]) == (
        "VIEWER",
        "refused",
        "no store right",
    )


def test_instances_the_index_cannot_key_are_refused_not_acknowledged(server) -> None:
    # Acknowledged, each was only quarantined by the drain; the non-ASCII request UID
    # crashed the handler (0xC211, no Error Comment, no audit record).
    source = pydicom.dcmread(native_files(1)[0])
    no_study, climbing, accented = (copy.deepcopy(source) for _ in range(3))
    del no_study.StudyInstanceUID
    climbing.SeriesInstanceUID = "../evil"
    accented.SOPInstanceUID = "1.2.3.\u00e9"
    assoc = scu_association(server.port, contexts=((source.SOPClassUID, None),))
    assert assoc.is_established
    try:
        statuses = [assoc.send_c_store(ds) for ds in (no_study, climbing, accented)]
    finally:
        assoc.release()
    assert [s.Status for s in statuses] == [CANNOT_UNDERSTAND] * 3
    assert "no StudyInstanceUID" in statuses[0].ErrorComment
    assert "holds a path separator" in statuses[1].ErrorComment
    assert "not ASCII" in statuses[2].ErrorComment
    assert server.spool.waiting_files() == []
    assert [r["outcome"] for r in server.records("store")] == ["refused"] * 3


def malformed(tmp_path: Path, source: Path) -> dict[str, Path]:
    """Files whose file meta is sound and whose dataset is not."""
    data = source.read_bytes()
    header = scan(data)
    offset, sop = header.dataset_offset, header.attributes["SOPInstanceUID"]
    meta = data[:offset]
    ds = pydicom.dcmread(source)
    cases = {
        "truncated": data[: offset + (len(data) - offset) // 2],
        # (0008,0016) UI with a length far past the end
        "bad_length": meta + b"\x08\x00\x16\x00UI\xf0\xff" + b"1.2" * 8,
    }
    del ds.SOPInstanceUID
    no_uid = io.BytesIO()
    ds.save_as(no_uid, enforce_file_format=True)
    cases["no_sop_uid"] = meta + dataset_bytes(no_uid.getvalue())
    ds.SOPInstanceUID = sop + ".9"
    other = io.BytesIO()
    ds.save_as(other, enforce_file_format=True)
    cases["other_sop_uid"] = meta + dataset_bytes(other.getvalue())
    paths = {}
    for name, content in cases.items():
        paths[name] = tmp_path / f"{name}.dcm"
        paths[name].write_bytes(content)
    return paths


def test_malformed_datasets_get_a_failure_status_and_the_server_serves_on(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = native_files(1)[0]
    sop_class = pydicom.dcmread(source).SOPClassUID
    syntax = str(pydicom.dcmread(source).file_meta.TransferSyntaxUID)
    # Send the files' bytes as they are, without pydicom decoding them first.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    for name, path in malformed(tmp_path, source).items():
        assoc = scu_association(server.port, contexts=((sop_class, [syntax]),))
        assert assoc.is_established
        status = assoc.send_c_store(path)
        assoc.release()
        assert status.Status == CANNOT_UNDERSTAND, name
        assert status.ErrorComment, name
    assert server.spool.waiting_files() == []
    assert [r["outcome"] for r in server.records("store")] == ["refused"] * 4
    assert echoscu(server.port).returncode == 0  # still serving
    assert storescu(server.port, [source], syntax).returncode == 0
    server.drain_now()
    assert server.reports[0].archived == 1


def test_a_spool_write_failure_answers_out_of_resources(server, monkeypatch) -> None:
    def disk_full(data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(server.spool, "put", disk_full)
    ds = pydicom.dcmread(native_files(1)[0])
    assoc = scu_association(server.port, contexts=((ds.SOPClassUID, None),))
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == OUT_OF_RESOURCES
    assert "No space left" in status.ErrorComment
    (record,) = server.records("store")
    assert record["outcome"] == "failed"


def send_half_a_dataset(port: int, source: Path):
    """An association that has sent the first half of a C-STORE's fragments, and no more."""
    ds = pydicom.dcmread(source)
    assoc = scu_association(port, contexts=((ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID]),))
    assert assoc.is_established
    request = C_STORE()
    request.MessageID = 1
    request.Priority = 2
    request.AffectedSOPClassUID = ds.SOPClassUID
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.DataSet = io.BytesIO(dataset_bytes(source.read_bytes()))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    context = assoc.accepted_contexts[0].context_id
    fragments = list(message.encode_msg(context, 4096))
    assert len(fragments) > 4
    for fragment in fragments[: len(fragments) // 2]:
        assoc.dul.send_pdu(fragment)
    return assoc


def test_an_association_aborted_mid_dataset_leaves_nothing(server) -> None:
    assoc = send_half_a_dataset(server.port, native_files(1)[0])
    time.sleep(0.5)
    assoc.abort()
    deadline = time.monotonic() + 30
    while not server.records("abort") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.records("abort")
    assert list(server.spool.incoming.iterdir()) == []  # not even a temporary
    assert server.records("store") == []
    assert echoscu(server.port).returncode == 0
    server.drain_now()
    assert server.reports == []


def test_a_stalled_peer_is_dropped(tmp_path: Path) -> None:
    with running_server(tmp_path / "archive", timeout=1.0) as running:
        silent = socket.create_connection(("127.0.0.1", running.port))
        silent.settimeout(30)  # the bound: the server's timeout is 1 s
        assert silent.recv(100) == b""  # no A-ASSOCIATE-RQ came: closed
        silent.close()
        stalled = send_half_a_dataset(running.port, native_files(1)[0])
        deadline = time.monotonic() + 30
        while stalled.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stalled.is_aborted  # the rest of the dataset never came: dropped
        assert list(running.spool.incoming.iterdir()) == []
        assert echoscu(running.port).returncode == 0


def test_an_unknown_sop_class_is_not_negotiated(server) -> None:
    assoc = scu_association(server.port, contexts=((Verification, None), ("1.2.3.4.5.6.7", None)))
    assert assoc.is_established
    assert [c.abstract_syntax for c in assoc.accepted_contexts] == [Verification]
    assoc.release()


# --- the spool --------------------------------------------------------------------------


def test_files_left_after_their_run_finished_come_back_as_duplicates(server) -> None:
    path = native_files(1)[0]
    assert storescu(server.port, [path], "1.2.840.10008.1.2.1").returncode == 0
    (received,) = server.spool.waiting_files()
    data = received.read_bytes()
    server.drain_now()
    # A kill between the run's end and the deletion of its files: they are still there.
    (server.spool.batch / received.name).write_bytes(data)
    server.drain_now()
    assert [(r.archived, r.duplicates) for r in server.reports] == [(1, 0), (0, 1)]
    assert server.spool.batch_files() == []
    uid = scan(data).attributes["SOPInstanceUID"]
    assert (
        hashlib.sha256(server.archive.export_bytes(uid)).digest() == hashlib.sha256(data).digest()
    )


def test_an_instance_sent_again_after_its_delete_is_archived_again(server) -> None:
    path, other = native_files(2)
    uid = pydicom.dcmread(path).SOPInstanceUID
    assert storescu(server.port, [path], "1.2.840.10008.1.2.1").returncode == 0
    server.drain_now()
    corrections = Corrections(server.archive)
    corrections.apply(corrections.delete("sent by mistake", "test", sop=uid))
    assert server.archive.index.get(uid) is None
    assert storescu(server.port, [path, other], "1.2.840.10008.1.2.1").returncode == 0
    server.drain_now()
    assert [(r.archived, r.duplicates) for r in server.reports] == [(1, 0), (2, 0)]
    assert server.archive.index.get(uid) is not None
    # The spool's files are gone, and its runs recorded no catch-up identities of them
    # (`s`: every identity entry, by key or by digest, and no other journal entry).
    assert server.archive.index.journal_items(b"s") == []


def test_a_run_killed_after_its_commit_resumes_with_the_outcome_journalled(server) -> None:
    from pacs_engine.ingest import IngestStopped, run_ingest

    files = native_files(2)
    assert storescu(server.port, files, "1.2.840.10008.1.2.1").returncode == 0
    assert server.spool.take(10) == 2

    def killed(progress) -> None:
        if progress.phase == "encoding":  # after the first series' commit
            raise RuntimeError("killed")

    with pytest.raises(IngestStopped):
        run_ingest(
            server.archive,
            [server.spool.batch],
            executor=server.drain.executor,
            progress=killed,
            catch_up=False,  # as the drain runs it
        )
    assert len(server.spool.batch_files()) == 2  # nothing deleted: the run did not finish
    server.drain_now()
    (report,) = server.reports
    assert report.resumed == 1
    assert (report.inputs, report.archived, report.duplicates) == (2, 2, 0)
    assert server.spool.batch_files() == []


# --- Query/Retrieve services: the right is checked before the handler runs ----------------


def test_query_retrieve_handlers_run_only_for_ae_with_the_right(tmp_path: Path) -> None:
    calls = []

    def find(event, ctx) -> Iterator:
        calls.append("find")
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = "1.2.3"
        yield 0xFF00, identifier

    def get(event, ctx) -> Iterator:
        calls.append("get")
        yield 0  # no sub-operations

    def move(event, ctx) -> Iterator:
        calls.append("move")
        yield "127.0.0.1", 104  # the destination, then no sub-operations
        yield 0

    services = [
        Service("find", [StudyRootQueryRetrieveInformationModelFind], find),
        Service("get", [StudyRootQueryRetrieveInformationModelGet], get),
        Service("move", [StudyRootQueryRetrieveInformationModelMove], move),
    ]
    peers = ("READER=query,retrieve", "SENDER=store")
    with running_server(tmp_path / "archive", peers=peers, services=services) as running:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        results = {}
        for calling in ("READER", "SENDER"):
            ae = AE(ae_title=calling)
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            ae.add_requested_context(MRImageStorage)
            role = build_role(MRImageStorage, scp_role=True)
            assoc = ae.associate("127.0.0.1", running.port, ae_title=AE_TITLE, ext_neg=[role])
            assert assoc.is_established
            (storage,) = [c for c in assoc.accepted_contexts if c.abstract_syntax == MRImageStorage]
            assert storage.as_scp  # the role a C-GET requestor needs to receive the instances
            found = [
                s.Status
                for s, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
            ]
            got = [
                s.Status
                for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
            ]
            moved = [
                s.Status
                for s, _ in assoc.send_c_move(
                    query, "READER", StudyRootQueryRetrieveInformationModelMove
                )
            ]
            assoc.release()
            results[calling] = (found, got, moved)
        assert results["READER"] == ([0xFF00, 0x0000], [0x0000], [0x0000])
        assert results["SENDER"] == ([NOT_AUTHORIZED], [NOT_AUTHORIZED], [NOT_AUTHORIZED])
        assert calls == ["find", "get", "move"]  # never for SENDER
        refused = [
            (r["actor"], r["action"], r["detail"])
            for r in running.records()
            if r["outcome"] == "refused"
        ]
        assert refused == [
            ("SENDER", "find", "no query right"),
            ("SENDER", "get", "no retrieve right"),
            ("SENDER", "move", "no retrieve right"),
        ]


def test_the_proposed_syntaxes_are_all_kept_by_the_archive() -> None:
    from pacs_engine.codecs import PASS_THROUGH_BY_SYNTAX
    from pacs_engine.serve.dimse import STORAGE_SYNTAXES

    assert set(PASS_THROUGH_BY_SYNTAX) <= set(STORAGE_SYNTAXES)
    assert set(PROPOSE) <= set(STORAGE_SYNTAXES)


def test_a_stopped_ingest_keeps_the_batch_for_the_next_drain(server, monkeypatch) -> None:
    from pacs_engine.ingest import IngestStopped
    from pacs_engine.serve import spool as spool_module

    assert storescu(server.port, native_files(2), "1.2.840.10008.1.2.1").returncode == 0

    def disk_full(*args, **kwargs):
        raise IngestStopped("archive: ingest stopped: No space left on device")

    real = spool_module.run_ingest
    monkeypatch.setattr(spool_module, "run_ingest", disk_full)
    server.drain_now()
    assert len(server.spool.batch_files()) == 2  # kept, not lost
    assert "No space left" in (server.drain.failure or "")
    monkeypatch.setattr(spool_module, "run_ingest", real)
    server.drain_now()
    assert server.drain.failure is None
    assert server.spool.batch_files() == []
    assert server.reports[0].archived == 2


def test_a_half_written_spool_file_is_never_ingested_and_dropped_at_start(tmp_path: Path) -> None:
    from pacs_engine.serve.spool import Spool

    spool = Spool(tmp_path)
    half = spool.incoming / ".00001-abc.dcm.4242.tmp"  # write_atomic's temporary, killed
    half.write_bytes(b"DICM, half of it")
    spool.put(b"a whole file")
    assert [p.name.endswith(".dcm") for p in spool.waiting_files()] == [True]
    assert spool.take(10) == 1
    assert half.exists() and spool.waiting_files() == []
    assert [p.read_bytes() for p in spool.batch_files()] == [b"a whole file"]
    Spool(tmp_path)  # the next start
    assert not half.exists()
    assert spool.clear_batch() == 1 and spool.batch_files() == []


def test_damaged_pixels_are_acknowledged_then_quarantined_with_their_bytes(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = require_corpus()
    data = bytearray((corpus / SENT["1.2.840.10008.1.2.4.70"]).read_bytes())
    start = int(scan(bytes(data)).pixel.fragment_offsets[0])
    data[start : start + 2] = b"\x00\x00"  # the JPEG stream's SOI marker: no longer a JPEG
    path = tmp_path / "damaged.dcm"
    path.write_bytes(data)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    assoc = scu_association(
        server.port, contexts=((ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID]),)
    )
    status = assoc.send_c_store(path)
    assoc.release()
    assert status.Status == 0x0000  # it parses: durable, so acknowledged
    (received,) = server.spool.waiting_files()
    kept = received.read_bytes()
    server.drain_now()
    assert server.reports[0].quarantined == 1
    (record,) = server.archive.quarantine.records()
    assert (server.archive.quarantine.root / f"{record['sha256']}.dcm").read_bytes() == kept
    assert server.spool.batch_files() == []


def test_an_instance_over_the_size_limit_is_refused(server, monkeypatch) -> None:
    from pacs_engine.serve import dimse

    monkeypatch.setattr(dimse, "MAX_INSTANCE_BYTES", 1000)
    ds = pydicom.dcmread(native_files(1)[0])
    assoc = scu_association(server.port, contexts=((ds.SOPClassUID, None),))
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == OUT_OF_RESOURCES
    assert status.ErrorComment == "larger than 1000 bytes"
    assert server.spool.waiting_files() == []


def test_the_instance_size_limit_is_what_the_ingest_reads_whole() -> None:
    from pacs_engine.ingest.inputs import InputPolicy
    from pacs_engine.serve.dimse import MAX_INSTANCE_BYTES

    assert InputPolicy().max_bytes == MAX_INSTANCE_BYTES
