"""`pacs-engine serve --http` as a process: DICOMweb alone or beside DIMSE, keys, TLS, SIGTERM."""

from __future__ import annotations

import os
import re
import select
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pydicom
import pytest
import requests
from conftest import ROOT, require_corpus
from serve_helpers import START_SECONDS, STOP_SECONDS, serve_command, stop, storescu, wait_drained
from test_serve_process import FILES, SYNTAX, make_certificates

from pacs_engine.archive import Archive
from pacs_engine.serve.audit import read_records, verify_chain

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def cli(*args: str) -> subprocess.CompletedProcess:
    """`pacs-engine ARGS`, bounded in time."""
    command = [sys.executable, "-m", "pacs_engine.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=ENV, check=False)


@contextmanager
def serving_http(archive: Path, *args: str) -> Iterator[tuple[subprocess.Popen, str, int | None]]:
    """`pacs-engine serve ARCHIVE ARGS`; (process, DICOMweb base URL, DIMSE port or None)."""
    command = serve_command(archive, "--workers", "0", "--drain-interval", "0.2", *args)
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            assert time.monotonic() < deadline, "the server did not start listening in time"
            ready, _, _ = select.select([proc.stderr], [], [], 1.0)
            if not ready:
                continue
            line = proc.stderr.readline()
            assert line, f"the server ended: exit {proc.poll()}"
            web = re.search(r"DICOMweb listening on (https?://127\.0\.0\.1:\d+)", line)
            if web:
                dimse = re.search(r"listening on 127\.0\.0\.1:(\d+) \(DIMSE", line)
                yield proc, web.group(1), int(dimse.group(1)) if dimse else None
                break
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(STOP_SECONDS)
        proc.stderr.close()


def test_dicomweb_beside_dimse_shares_the_archive_and_stops_on_sigterm(tmp_path: Path) -> None:
    corpus = require_corpus()
    archive = tmp_path / "archive"
    Archive.create(archive).close()
    added = cli("keys", "add", str(archive), "viewer", "--role", "reader")
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    listed = cli("keys", "list", str(archive))
    assert "viewer\treader" in listed.stdout and key not in listed.stdout
    args = ("--http", "127.0.0.1:0", "--dimse-port", "0", "--peer", "SCU=store")
    with serving_http(archive, *args) as (proc, base, dimse):
        assert dimse is not None
        assert storescu(dimse, [corpus / FILES[0]], SYNTAX).returncode == 0
        wait_drained(archive)
        assert httpx.get(f"{base}/health", timeout=30).status_code == 200
        auth = {"Authorization": f"Bearer {key}"}
        found = httpx.get(f"{base}/studies", headers=auth, timeout=30)
        assert found.status_code == 200
        assert len(found.json()) == 1  # what C-STORE received, found by QIDO-RS
        assert httpx.get(f"{base}/studies", timeout=30).status_code == 401
        assert cli("keys", "revoke", str(archive), "viewer").returncode == 0
        assert httpx.get(f"{base}/studies", headers=auth, timeout=30).status_code == 401
        code, err = stop(proc)
    assert code == 0
    assert "pacs-engine serve: stopped" in err
    outcomes = [(r["protocol"], r["action"], r["outcome"]) for r in read_records(archive)]
    assert ("dimse", "store", "success") in outcomes
    assert ("dicomweb", "qido studies", "success") in outcomes
    assert outcomes.count(("dicomweb", "GET /studies", "unauthenticated")) == 2
    assert verify_chain(archive) == []


def test_dicomweb_alone_over_https(tmp_path: Path) -> None:
    make_certificates(tmp_path)
    archive = tmp_path / "archive"
    tls = ("--tls-cert", str(tmp_path / "server.pem"), "--tls-key", str(tmp_path / "server.key"))
    with serving_http(archive, "--http", "127.0.0.1:0", *tls) as (proc, base, dimse):
        assert dimse is None and base.startswith("https://")
        ca = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        trusted = httpx.get(f"{base}/health", verify=ca, timeout=30)
        assert trusted.status_code == 200
        try:
            httpx.get(f"{base}/health", timeout=30)  # the system's CAs do not know it
            raise AssertionError("a certificate no CA the client trusts signed was accepted")
        except httpx.ConnectError:
            pass
        assert stop(proc)[0] == 0


def test_without_a_port_or_with_half_of_tls_nothing_starts(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    none = subprocess.run(
        serve_command(archive), capture_output=True, text=True, timeout=60, env=ENV
    )
    assert none.returncode == 2
    assert "give --dimse-port, --http or both" in none.stderr
    half = subprocess.run(
        serve_command(archive, "--http", "127.0.0.1:0", "--tls-cert", "x.pem"),
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert half.returncode == 2 and "give both, or neither" in half.stderr
    bad = subprocess.run(
        serve_command(archive, "--http", "8080"),
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert bad.returncode == 2 and "--http: give HOST:PORT" in bad.stderr
    assert not archive.exists()
    assert cli("keys", "list", str(archive)).returncode == 2  # not an archive: said, not made
    assert not archive.exists()


def test_help_documents_http_and_keys() -> None:
    serve = cli("serve", "--help")
    for flag in ("--http", "--tls-cert", "--tls-key", "DICOMweb", "docs/dicomweb.md"):
        assert flag in serve.stdout
    keys = cli("keys", "--help")
    assert keys.returncode == 0
    for word in ("add", "list", "revoke", "SHA-256", "once"):
        assert word in keys.stdout


def test_an_http_port_in_use_is_named_and_exits_3(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run(
            serve_command(tmp_path / "other", "--http", f"127.0.0.1:{port}", "--workers", "0"),
            capture_output=True,
            text=True,
            timeout=60,
            env=ENV,
        )
    assert busy.returncode == 3 and "Address already in use" in busy.stderr


def test_stow_then_wado_through_the_served_app_with_api_keys_and_roles(tmp_path: Path) -> None:
    """The served application end to end: real API keys, each role refused where it must be."""
    from dicomweb_client.api import DICOMwebClient

    corpus = require_corpus()
    archive = tmp_path / "archive"
    Archive.create(archive).close()
    keys = {}
    for name, role in (("modality", "uploader"), ("viewer", "reader"), ("root", "admin")):
        added = cli("keys", "add", str(archive), name, "--role", role)
        assert added.returncode == 0, added.stderr
        keys[name] = added.stdout.strip()
    source = corpus / FILES[0]
    data = source.read_bytes()
    with serving_http(archive, "--http", "127.0.0.1:0") as (proc, base, _):

        def client(name: str) -> DICOMwebClient:
            return DICOMwebClient(url=base, headers={"Authorization": f"Bearer {keys[name]}"})

        dataset = pydicom.dcmread(source)
        study, sop = dataset.StudyInstanceUID, dataset.SOPInstanceUID
        series = dataset.SeriesInstanceUID
        with pytest.raises(requests.HTTPError) as refused:
            client("viewer").store_instances([dataset])  # a reader may not store
        assert refused.value.response.status_code == 403
        answer = client("modality").store_instances([dataset])
        assert answer.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sop
        wait_drained(archive)
        path = f"{base}/studies/{study}/series/{series}/instances/{sop}"
        original = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
        uploader = httpx.get(
            path, headers={**original, "Authorization": f"Bearer {keys['modality']}"}, timeout=60
        )
        assert uploader.status_code == 403  # an uploader may not read
        for reader in ("viewer", "root"):  # an admin holds every role
            got = httpx.get(
                path, headers={**original, "Authorization": f"Bearer {keys[reader]}"}, timeout=60
            )
            assert got.status_code == 200
            assert data in got.content  # the original file, byte for byte, as its one part
        found = client("viewer").search_for_instances(study_instance_uid=study)
        assert [f["00080018"]["Value"][0] for f in found] == [sop]
        assert stop(proc)[0] == 0
    outcomes = {(r["actor"], r["action"], r["outcome"]) for r in read_records(archive)}
    assert ("key:viewer", "stow", "forbidden") in outcomes
    assert ("key:modality", "stow", "success") in outcomes
    assert ("key:modality", "wado retrieve", "forbidden") in outcomes
    assert verify_chain(archive) == []
