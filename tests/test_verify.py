"""`Archive.verify` in worker processes: the same findings as in one process, and a decoder
crash reported as a mismatch instead of ending the check."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from conftest import pydicom_test_files, require_corpus

from pacs_engine import Archive, open_archive
from pacs_engine.archive.verify import BATCH, DIED
from pacs_engine.ingest import LocalExecutor

NAMES = ("CT_small.dcm", "JPEG2000.dcm", "SC_rgb_small_odd.dcm", "rtdose_rle.dcm")
BROKEN = "MR_small_jp2klossless.dcm"  # its JPEG 2000 codestream is damaged below
POISON_UID = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"  # CT_small.dcm's


def crash_on_poison(fn: Any, *args: Any) -> Any:
    """Run a task as the executor would, but die (as a decoder crash would) on POISON_UID."""
    if any(isinstance(a, list) and POISON_UID in a for a in args):
        os._exit(70)
    return fn(*args)


class Crashing(LocalExecutor):
    """A local pool whose worker dies on the instance POISON_UID."""

    def submit(self, fn: Any, *args: Any) -> Any:
        return super().submit(crash_on_poison, fn, *args)


@pytest.fixture
def damaged(tmp_path: Path) -> Path:
    """An archive of a corpus CT series and a few others (several batches), with an
    undecodable bitstream and one damaged shard."""
    corpus = require_corpus()
    samples = [p for p in pydicom_test_files() if p.name in NAMES]
    broken = bytearray(next(p for p in pydicom_test_files() if p.name == BROKEN).read_bytes())
    start = broken.index(b"\xff\x4f\xff\x51")
    # After its SIZ segment (whose size is checked even when trusted): kept, verify finds it.
    broken[start + 45 : start + 400] = b"\x00" * 355
    (tmp_path / "broken_j2k.dcm").write_bytes(bytes(broken))
    sources = [corpus / "dcm_qa_ct", *samples, tmp_path / "broken_j2k.dcm"]
    with Archive.create(tmp_path / "a") as archive:
        report = archive.ingest(sources, workers=0, trust_bitstreams=True)
        assert report.archived > 3 * BATCH and report.archived_undecoded >= 1
    pixels = tmp_path / "a" / "pixels"
    shard = max(  # the largest shard: a chunk in its middle is damaged, not its index
        (p for p in pixels.rglob("*") if p.is_file() and "c" in p.relative_to(pixels).parts),
        key=lambda p: p.stat().st_size,
    )
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    return tmp_path / "a"


def findings(report: Any) -> list[tuple[str, str]]:
    return sorted((m["SOPInstanceUID"], m["problem"]) for m in report.mismatches)


def test_workers_find_what_one_process_finds(damaged: Path) -> None:
    with open_archive(damaged) as archive:
        here = archive.verify()
        seen: list[tuple[str, bool]] = []
        pooled = archive.verify(workers=2, progress=lambda uid, ok: seen.append((uid, ok)))
        rows = len(archive.index)
    assert len(here.mismatches) >= 2  # the damaged shard and the undecodable bitstream
    assert (pooled.instances, pooled.frames) == (here.instances, here.frames) == (rows, here.frames)
    assert findings(pooled) == findings(here)
    assert sorted(uid for uid, ok in seen if not ok) == sorted(u for u, _ in findings(here))
    assert len(seen) == rows


def test_a_decoder_crash_is_a_mismatch_not_the_end_of_the_check(damaged: Path) -> None:
    executor = Crashing(2)
    try:
        with open_archive(damaged) as archive:
            here = archive.verify()
            crashed = archive.verify(executor=executor)
    finally:
        executor.close()
    assert crashed.instances == here.instances
    expected = sorted([*findings(here), (POISON_UID, DIED)])
    assert findings(crashed) == expected
