"""archive/quarantine.py: what its caller hands it is kept (whole, a head, or a record
without bytes), and it reads no input itself."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacs_engine.archive.quarantine import HEAD_BYTES, Quarantine


def _record(root: Path, sha256: str) -> dict:
    return json.loads((root / f"{sha256}.json").read_bytes())


def test_keep_stores_the_whole_bytes_under_their_sha256(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "q")
    data = b"not quite DICOM" * 100
    assert quarantine.keep("/in/a.dcm", data, "a reason", source_record={"x": 1}) == len(data)
    sha256 = hashlib.sha256(data).hexdigest()
    assert (tmp_path / "q" / f"{sha256}.dcm").read_bytes() == data
    record = _record(tmp_path / "q", sha256)
    assert (record["path"], record["reason"], record["source_record"]) == (
        "/in/a.dcm",
        "a reason",
        {"x": 1},
    )
    assert "kept_bytes" not in record


def test_keep_head_streams_the_chunks_and_keeps_only_the_head(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "q")
    chunks = [bytes([i]) * 50_000 for i in range(5)]  # 250,000 bytes, more than HEAD_BYTES
    whole = b"".join(chunks)
    assert quarantine.keep_head("/in/big.bin", iter(chunks), "too large") == len(whole)
    sha256 = hashlib.sha256(whole).hexdigest()
    assert (tmp_path / "q" / f"{sha256}.head").read_bytes() == whole[:HEAD_BYTES]
    assert not (tmp_path / "q" / f"{sha256}.dcm").exists()
    record = _record(tmp_path / "q", sha256)
    assert (record["size"], record["kept_bytes"]) == (len(whole), HEAD_BYTES)


def test_keep_head_of_a_small_input_keeps_it_whole(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "q")
    chunks = [b"abc", b"def"]
    assert quarantine.keep_head("/in/small.txt", chunks, "not a DICOM file") == 6
    sha256 = hashlib.sha256(b"abcdef").hexdigest()
    assert (tmp_path / "q" / f"{sha256}.dcm").read_bytes() == b"abcdef"
    assert "kept_bytes" not in _record(tmp_path / "q", sha256)


def test_an_error_while_the_chunks_are_read_keeps_nothing_and_reaches_the_caller(
    tmp_path: Path,
) -> None:
    def failing() -> Iterator[bytes]:
        yield b"x" * 1000
        raise OSError("the disk went away")

    quarantine = Quarantine(tmp_path / "q")
    with pytest.raises(OSError, match="went away"):
        quarantine.keep_head("/in/gone.dcm", failing(), "too large")
    assert quarantine.records() == []


def test_keep_unread_records_the_input_by_its_name_without_bytes(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "q")
    key = "/in/caf\udce9.dcm"  # a name that is not UTF-8, as os.fsdecode gives it
    quarantine.keep_unread(key, "permission denied")
    quarantine.keep_unread(key, "permission denied")  # met again (a resumed run): one record
    sha256 = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
    assert [r["sha256"] for r in quarantine.records()] == [sha256]
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == [".lock", f"{sha256}.json"]
    assert _record(tmp_path / "q", sha256)["path"] == key
