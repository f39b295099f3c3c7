"""`pacs-engine serve` as a process: start-up, SIGTERM, kill -9 and restart, TLS, bad configs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
from conftest import ROOT, require_corpus
from pynetdicom import AE
from serve_helpers import (
    AE_TITLE,
    STOP_SECONDS,
    echoscu,
    run_tool,
    serve_command,
    serving,
    stop,
    storescu,
    wait_drained,
)

from pacs_engine import Archive
from pacs_engine.archive import open_archive
from pacs_engine.scanning import scan
from pacs_engine.serve.audit import read_records, verify_chain
from pacs_engine.serve.dimse import VERIFICATION

SYNTAX = "1.2.840.10008.1.2.4.70"
FILES = (
    "dcm_qa/Orientation/axmb/AxAsc36mb2a/jpg1.dcm",
    "dcm_qa/Orientation/axmb/AxAsc36mb2a/jpg2.dcm",
)


def test_help_documents_the_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pacs_engine.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        check=True,
    )
    for flag in ("--dimse-port", "--ae-title", "--config", "--peer", "--drain-interval", "spool"):
        assert flag in result.stdout


def test_it_serves_until_sigterm_and_exits_0(tmp_path: Path) -> None:
    corpus = require_corpus()
    archive = tmp_path / "archive"
    with serving(archive, "--peer", "SCU=store", "--drain-interval", "0.2") as (proc, port):
        assert (archive / "archive.json").is_file()  # created when absent
        assert echoscu(port).returncode == 0
        assert storescu(port, [corpus / FILES[0]], SYNTAX).returncode == 0
        ae = AE(ae_title="SCU")
        ae.add_requested_context(VERIFICATION)
        held = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
        assert held.is_established  # an association in progress does not hold the stop up
        started = time.monotonic()
        code, err = stop(proc)
        assert code == 0
        assert time.monotonic() - started < STOP_SECONDS
        deadline = time.monotonic() + STOP_SECONDS
        while held.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert held.is_aborted
    assert "pacs-engine serve: stopped" in err
    assert verify_chain(archive) == []
    actions = [r["action"] for r in read_records(archive)]
    assert actions.count("echo") == 1 and actions.count("store") == 1


def test_kill_9_never_loses_an_acknowledged_instance(tmp_path: Path) -> None:
    corpus = require_corpus()
    archive = tmp_path / "archive"
    files = [corpus / f for f in FILES]
    never = ("--drain-interval", "3600", "--drain-batch", "1000000")
    with serving(archive, "--peer", "SCU=store", *never) as (proc, port):
        assert storescu(port, files, SYNTAX).returncode == 0  # Success answered for both
        proc.kill()  # before any drain
        proc.wait(STOP_SECONDS)
    spooled = sorted((archive / "spool" / "incoming").glob("*.dcm"))
    assert len(spooled) == 2
    received = {scan(p.read_bytes()).attributes["SOPInstanceUID"]: p.read_bytes() for p in spooled}
    with serving(archive, "--peer", "SCU=store", "--drain-interval", "0.2") as (proc, port):
        wait_drained(archive)  # drained at start, before any new association
        code, _ = stop(proc)
        assert code == 0
    with open_archive(archive) as reader:
        for uid, data in received.items():
            assert reader.export_bytes(uid) == data
        assert reader.info()["instances"] == 2
    assert list((archive / "spool" / "batch").iterdir()) == []


def test_a_bad_configuration_is_named_and_nothing_starts(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text('[peers.CT]\nrights = ["stor"]\n')
    result = subprocess.run(
        serve_command(tmp_path / "archive", "--dimse-port", "0", "--config", str(config)),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert result.returncode == 2
    assert f"{config} [peers.CT]: unknown right(s) ['stor']" in result.stderr
    assert not (tmp_path / "archive").exists()


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(folder: Path) -> None:
    """A CA, a server and a client certificate it signed, and a self-signed stranger."""
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        cwd=folder,
    )
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=folder,
        )
        extra = ["-extfile", "server.ext"] if name == "server" else []
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            *extra,
            cwd=folder,
        )
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "stranger.key",
        "-out",
        "stranger.pem",
        "-days",
        "2",
        "-subj",
        "/CN=stranger",
        cwd=folder,
    )


def test_dicom_tls_with_client_certificates(tmp_path: Path) -> None:
    make_certificates(tmp_path)
    config = tmp_path / "serve.toml"
    config.write_text(
        '[dimse.tls]\ncert = "server.pem"\nkey = "server.key"\nclient_ca = "ca.pem"\n'
        '[peers.SCU]\nrights = ["store"]\n'
    )
    with serving(tmp_path / "archive", "--config", str(config)) as (proc, port):
        ca = str(tmp_path / "ca.pem")
        # A client that connects and never says hello must not hold up the others.
        silent = socket.create_connection(("127.0.0.1", port))

        def tls_echo(name: str) -> subprocess.CompletedProcess:
            key, cert = str(tmp_path / f"{name}.key"), str(tmp_path / f"{name}.pem")
            return echoscu(port, "SCU", "+tls", key, cert, "+cf", ca)

        assert tls_echo("client").returncode == 0
        assert tls_echo("stranger").returncode != 0  # a certificate the CA did not sign
        assert echoscu(port, "SCU").returncode != 0  # no TLS at all
        anonymous = run_tool(
            "echoscu", "+tla", "+cf", ca, "-aet", "SCU", "-aec", AE_TITLE, "127.0.0.1", str(port)
        )
        assert anonymous.returncode != 0  # TLS without a client certificate
        assert echoscu(port, "SCU").returncode != 0
        assert tls_echo("client").returncode == 0  # and it still serves
        silent.close()
        code, _ = stop(proc)
        assert code == 0
    echoes = [r for r in read_records(tmp_path / "archive") if r["action"] == "echo"]
    assert len(echoes) == 2


def test_a_second_server_on_the_same_archive_or_port_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with serving(archive, "--peer", "SCU=store") as (proc, port):
        same_archive = subprocess.run(
            serve_command(archive, "--dimse-port", "0", "--workers", "0"),
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert same_archive.returncode == 2
        assert "another process is writing to it" in same_archive.stderr
        same_port = subprocess.run(
            serve_command(tmp_path / "other", "--dimse-port", str(port), "--workers", "0"),
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert same_port.returncode == 3
        assert "Address already in use" in same_port.stderr
        assert echoscu(port).returncode == 0  # the first one serves on
        assert stop(proc)[0] == 0


def test_the_served_archive_answers_find_and_get_of_what_it_received(tmp_path: Path) -> None:
    """The command's own Q/R services: what storescu sent is found by findscu, got by getscu."""
    corpus = require_corpus()
    archive = tmp_path / "archive"
    files = [corpus / f for f in FILES]
    sent = {scan(f.read_bytes()).attributes["SOPInstanceUID"]: f for f in files}
    study = {str(scan(f.read_bytes()).attributes["StudyInstanceUID"]) for f in files}
    assert len(study) == 1
    (study_uid,) = study
    peers = ("--peer", "SCU=store", "--peer", "FINDSCU=query", "--peer", "GETSCU=retrieve")
    for folder in ("found", "got", "no"):
        (tmp_path / folder).mkdir()
    with serving(archive, *peers, "--drain-interval", "0.2") as (proc, port):
        assert storescu(port, files, SYNTAX).returncode == 0
        wait_drained(archive)
        found = run_tool(
            "findscu", "-S", "-aec", AE_TITLE, "-X", "-od", str(tmp_path / "found"),
            "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study_uid}",
            "-k", "SeriesInstanceUID", "-k", "NumberOfSeriesRelatedInstances",
            "127.0.0.1", str(port),
        )  # fmt: skip
        assert found.returncode == 0, found.stderr
        got = run_tool(
            "getscu", "-S", "-aec", AE_TITLE, "+xs", "-od", str(tmp_path / "got"),
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
            "127.0.0.1", str(port),
        )  # fmt: skip
        assert got.returncode == 0, got.stderr
        run_tool(  # FINDSCU may query, not retrieve (refused: audited below)
            "getscu", "-S", "-aet", "FINDSCU", "-aec", AE_TITLE, "-od", str(tmp_path / "no"),
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
            "127.0.0.1", str(port),
        )  # fmt: skip
        code, _ = stop(proc)
    assert code == 0
    answers = [pydicom.dcmread(p) for p in sorted((tmp_path / "found").iterdir())]
    assert sum(int(a.NumberOfSeriesRelatedInstances) for a in answers) == len(files)
    received = {pydicom.dcmread(p).SOPInstanceUID: p for p in (tmp_path / "got").iterdir()}
    assert set(received) == set(sent)
    for uid, path in received.items():  # the stored JPEG lossless bitstream (getscu +xs accepts it)
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == SYNTAX
        assert np.array_equal(
            pydicom.dcmread(path).pixel_array, pydicom.dcmread(sent[uid]).pixel_array
        )
    assert list((tmp_path / "no").iterdir()) == []
    outcomes = {(r["actor"], r["action"], r["outcome"]) for r in read_records(archive)}
    assert ("FINDSCU", "get", "refused") in outcomes
    assert ("GETSCU", "c-get", "success") in outcomes
    assert verify_chain(archive) == []


def test_the_server_log_holds_no_value_of_an_answer(tmp_path: Path) -> None:
    """pydicom quotes a value it finds invalid for its VR ("Invalid value for VR DA:
    '1997.04.24'") in a warning and a log line: the server's stderr shows neither."""
    corpus = require_corpus()
    source = tmp_path / "src"
    source.mkdir()
    ds = pydicom.dcmread(corpus / FILES[0])
    ds.StudyDate, ds.PatientBirthDate = "1997.04.24", "1931.02.03"  # ACR-NEMA style dates
    ds.save_as(source / "a.dcm")
    archive = tmp_path / "archive"
    with Archive.create(archive) as created:
        assert created.ingest([source], workers=0).archived == 1
    (tmp_path / "found").mkdir()
    with serving(archive, "--peer", "FINDSCU=query") as (proc, port):
        found = run_tool(
            "findscu", "-S", "-aec", AE_TITLE, "-X", "-od", str(tmp_path / "found"),
            "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "-k", "StudyDate",
            "-k", "PatientBirthDate", "127.0.0.1", str(port),
        )  # fmt: skip
        assert found.returncode == 0, found.stderr
        code, stderr = stop(proc)
    assert code == 0
    (answer,) = [pydicom.dcmread(p) for p in (tmp_path / "found").iterdir()]
    assert answer.StudyDate == "1997.04.24"  # answered as stored
    assert "1997.04.24" not in stderr and "1931.02.03" not in stderr


def test_what_pydicom_logs_in_the_server_is_said_without_its_text() -> None:
    """Its own logger's lines and its child loggers' (pydicom.pixels...) alike, and its
    warnings (a child logger's records passed a filter on the parent unchanged)."""
    code = (
        "import logging, pydicom.misc\n"
        "from pacs_engine.serve.context import keep_values_out_of_logs\n"
        "keep_values_out_of_logs()\n"
        "logging.getLogger('pydicom.pixels.decoders.base').warning('child says DOE^JOHN')\n"
        "logging.getLogger('pydicom').warning('parent says DOE^JANE')\n"
        "pydicom.misc.warn_and_log('Invalid value for VR PN: DOE^JIM')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "DOE^" not in done.stderr
    assert done.stderr.count("pydicom warned about a data set (its text is not logged)") == 3
    assert done.stderr.count("a warning was raised (its text is not logged") == 1
