"""The audit trail: append-only day files whose hash chain shows an edit, a removal, a reorder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from pacs_engine.serve.audit import GENESIS, AuditLog, chain_head, read_records, verify_chain

ROOT = Path(__file__).resolve().parent.parent


def fill(root: Path, count: int) -> list[dict]:
    with AuditLog(root) as audit:
        return [
            audit.record(
                protocol="dimse",
                actor=f"AE{i}",
                address="127.0.0.1:1000",
                action="store",
                outcome="success",
                study=f"1.2.3.{i}",
            )
            for i in range(count)
        ]


def day_file(root: Path) -> Path:
    (path,) = (root / "audit").glob("*.jsonl")
    return path


def test_records_chain_from_genesis(tmp_path: Path) -> None:
    written = fill(tmp_path, 5)
    assert written[0]["prev"] == GENESIS
    assert [r["prev"] for r in written[1:]] == [r["hash"] for r in written[:-1]]
    assert list(read_records(tmp_path)) == written
    assert verify_chain(tmp_path) == []


def test_an_edited_record_breaks_the_chain(tmp_path: Path) -> None:
    fill(tmp_path, 4)
    path = day_file(tmp_path)
    lines = path.read_text().splitlines()
    entry = json.loads(lines[2])
    entry["outcome"] = "refused"
    lines[2] = json.dumps(entry)
    path.write_text("\n".join(lines) + "\n")
    problems = verify_chain(tmp_path)
    assert [(p.line, p.reason) for p in problems] == [(3, "hash does not match the record")]
    assert str(problems[0]).startswith(f"{path}:3: ")


def test_a_removed_record_breaks_the_chain(tmp_path: Path) -> None:
    fill(tmp_path, 4)
    path = day_file(tmp_path)
    lines = path.read_text().splitlines()
    del lines[1]
    path.write_text("\n".join(lines) + "\n")
    assert [(p.line, p.reason) for p in verify_chain(tmp_path)] == [
        (2, "prev is not the hash before")
    ]


def test_reordered_records_break_the_chain(tmp_path: Path) -> None:
    fill(tmp_path, 4)
    path = day_file(tmp_path)
    lines = path.read_text().splitlines()
    lines[1], lines[2] = lines[2], lines[1]
    path.write_text("\n".join(lines) + "\n")
    assert {p.line for p in verify_chain(tmp_path)} >= {2, 3}


def test_a_line_that_is_no_record_is_named(tmp_path: Path) -> None:
    fill(tmp_path, 2)
    with open(day_file(tmp_path), "a") as file:
        file.write('{"time": "x"}\n')
    ((line, reason),) = [(p.line, p.reason) for p in verify_chain(tmp_path)]
    assert line == 3 and reason.startswith("not a record")


def test_the_chain_spans_day_files_and_reopening(tmp_path: Path) -> None:
    first = fill(tmp_path, 2)
    day_file(tmp_path).rename(tmp_path / "audit" / "2020-01-01.jsonl")  # yesterday's file
    second = fill(tmp_path, 2)  # a new log object: it reads the last hash back
    assert second[0]["prev"] == first[-1]["hash"]
    assert verify_chain(tmp_path) == []
    (tmp_path / "audit" / "2020-01-01.jsonl").unlink()  # a whole day removed
    assert [p.line for p in verify_chain(tmp_path)] == [1]


def test_a_field_added_to_a_record_breaks_the_chain(tmp_path: Path) -> None:
    fill(tmp_path, 3)
    path = day_file(tmp_path)
    lines = path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["patient"] = "DOE^JOHN"  # its hash covers its known fields: this one is not
    lines[1] = json.dumps(entry)
    path.write_text("\n".join(lines) + "\n")
    assert [(p.line, p.reason) for p in verify_chain(tmp_path)] == [
        (2, "fields its hash does not cover: patient")
    ]


def test_records_cut_from_the_end_are_found_by_a_head_kept_elsewhere(tmp_path: Path) -> None:
    written = fill(tmp_path, 5)
    head = chain_head(tmp_path)
    assert head == written[-1]["hash"]
    assert verify_chain(tmp_path, head) == []
    path = day_file(tmp_path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n")
    assert verify_chain(tmp_path) == []  # a shorter chain that holds
    ((problem,),) = [verify_chain(tmp_path, head)]
    assert problem.reason.startswith(f"no record has the hash {head} kept as a head")


def test_threads_appending_keep_one_chain(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path, sync_seconds=0.0)

    def append(n: int) -> None:
        for i in range(50):
            audit.record(
                protocol="dimse", actor=f"T{n}", address="-", action="echo", outcome=str(i)
            )

    threads = [threading.Thread(target=append, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    audit.close()
    assert len(list(read_records(tmp_path))) == 200
    assert verify_chain(tmp_path) == []


APPEND = """
import sys
from pacs_engine.serve.audit import AuditLog
audit = AuditLog(sys.argv[1], sync_seconds=0.0)
for i in range(100):
    audit.record(protocol="dimse", actor=sys.argv[2], address="-", action="echo", outcome=str(i))
audit.close()
"""


def test_two_processes_appending_keep_one_chain(tmp_path: Path) -> None:
    fill(tmp_path, 1)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    procs = [
        subprocess.Popen([sys.executable, "-c", APPEND, str(tmp_path), name], env=env)
        for name in ("P1", "P2")
    ]
    assert [p.wait(120) for p in procs] == [0, 0]
    records = list(read_records(tmp_path))
    assert len(records) == 201
    assert {r["actor"] for r in records} == {"AE0", "P1", "P2"}
    assert verify_chain(tmp_path) == []


def test_day_files_get_the_archive_folder_rights(tmp_path: Path) -> None:
    old = os.umask(0o077)  # as a writer of a private archive leaves it: must not matter
    try:
        check_rights(tmp_path)
    finally:
        os.umask(old)


def check_rights(tmp_path: Path) -> None:
    for mode, expected in ((0o700, 0o600), (0o750, 0o640)):
        root = tmp_path / f"a{mode:o}"
        root.mkdir()
        os.chmod(root, mode)
        fill(root, 1)
        assert (root / "audit").stat().st_mode & 0o777 == mode
        assert day_file(root).stat().st_mode & 0o777 == expected


def test_series_and_instances_are_in_the_hash_when_given(tmp_path: Path) -> None:
    with AuditLog(tmp_path) as audit:
        plain = audit.record(protocol="dimse", actor="A", address="-", action="echo", outcome="ok")
        full = audit.record(
            protocol="dicomweb",
            actor="alice",
            address="-",
            action="stow",
            outcome="success",
            study="1.2.3",
            series=["1.2.3.4"],
            instances=["1.2.3.4.5"],
        )
    assert "series" not in plain and "instances" not in plain  # written only when known
    assert (full["series"], full["instances"]) == (["1.2.3.4"], ["1.2.3.4.5"])
    assert verify_chain(tmp_path) == []
    path = day_file(tmp_path)
    lines = path.read_text().splitlines()
    for change in ("edit", "drop"):
        entry = json.loads(lines[1])
        if change == "edit":
            entry["instances"] = ["9.9"]
        else:
            del entry["series"]
        path.write_text("\n".join([lines[0], json.dumps(entry)]) + "\n")
        assert [(p.line, p.reason) for p in verify_chain(tmp_path)] == [
            (2, "hash does not match the record")
        ], change
    entry = json.loads(lines[0])
    entry["series"] = None  # an optional field added to a record written without it
    path.write_text("\n".join([json.dumps(entry), lines[1]]) + "\n")
    assert [p.line for p in verify_chain(tmp_path)] == [1]


def test_a_trail_written_before_series_and_instances_verifies_and_extends(tmp_path: Path) -> None:
    """tests/data/audit-trail-v1 was written by the code before the optional fields."""
    shutil.copytree(ROOT / "tests" / "data" / "audit-trail-v1", tmp_path, dirs_exist_ok=True)
    old = list(read_records(tmp_path))
    assert len(old) == 5 and all("series" not in r for r in old)
    assert verify_chain(tmp_path) == []
    with AuditLog(tmp_path) as audit:
        new = audit.record(
            protocol="dimse",
            actor="CT",
            address="-",
            action="store",
            outcome="success",
            study="1.2",
            series="1.2.3",
            instances=["1.2.3.4"],
        )
    assert new["prev"] == old[-1]["hash"]
    assert verify_chain(tmp_path) == []


def test_a_record_longer_than_the_read_back_window_chains(tmp_path: Path) -> None:
    many = [f"1.2.826.0.1.3680043.8.498.{i}" for i in range(3000)]  # ~100 KB in one record
    with AuditLog(tmp_path) as audit:
        long = audit.record(
            protocol="dimse", actor="A", address="-", action="c-get", outcome="ok", series=many
        )
    with AuditLog(tmp_path) as audit:  # a new log object reads the last hash back
        after = audit.record(protocol="dimse", actor="A", address="-", action="echo", outcome="ok")
    assert after["prev"] == long["hash"]
    assert verify_chain(tmp_path) == []
