"""`Archive.verify` in worker processes: the same findings as in one process, and a decoder
crash reported as a mismatch instead of ending the check."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import pydicom_test_files, require_corpus, run_cli
from crash_helpers import Crashing

from pacs_engine import Archive, open_archive
from pacs_engine.archive.verify import BATCH, DIED
from pacs_engine.archive.verify_plan import (
    DEFAULT_SEED,
    STAMP,
    confidence,
    read_records,
    rule_of_three,
)

NAMES = ("CT_small.dcm", "JPEG2000.dcm", "SC_rgb_small_odd.dcm", "rtdose_rle.dcm")
BROKEN = "MR_small_jp2klossless.dcm"  # its JPEG 2000 codestream is damaged below
POISON_UID = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"  # CT_small.dcm's


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
    executor = Crashing(2, POISON_UID)
    try:
        with open_archive(damaged) as archive:
            here = archive.verify()
            crashed = archive.verify(executor=executor)
    finally:
        executor.close()
    assert crashed.instances == here.instances
    expected = sorted([*findings(here), (POISON_UID, DIED)])
    assert findings(crashed) == expected


# Partial verify, through the CLI: what each selector checks, the sample, the record.


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An archive of corpus CT series (one run) and pydicom samples (a later run), and a
    time between the two runs (UTC, STAMP form)."""
    corpus = require_corpus()
    root = tmp_path_factory.mktemp("partial") / "a"
    with Archive.create(root) as archive:
        archive.ingest([corpus / "dcm_qa_ct" / "Philips"], workers=0)
    between = time.strftime(STAMP, time.gmtime(time.time() + 1))
    while time.strftime(STAMP, time.gmtime()) < between:  # ingested_at has whole seconds
        time.sleep(0.05)
    samples = [p for p in pydicom_test_files() if p.name in NAMES]
    with open_archive(root, readonly=False) as archive:
        assert archive.ingest(samples, workers=0).archived == len(NAMES)
    return root, between


def copy_of(archive: Path, tmp_path: Path) -> Path:
    """A copy of the archive, to damage or to record in."""
    shutil.copytree(archive, tmp_path / "a")
    return tmp_path / "a"


def damage_header(root: Path, uid: str) -> None:
    """Flip a byte in the middle of one instance's header blob: its rebuilt file differs."""
    with open_archive(root) as archive:
        header = archive.index.get(uid)["header"]  # type: ignore[index]
    pack = root / header["pack"]
    data = bytearray(pack.read_bytes())
    data[header["offset"] + header["length"] // 2] ^= 0xFF
    pack.write_bytes(bytes(data))


def verify_cli(root: Path, *options: str) -> tuple[int, str, dict[str, Any]]:
    """Exit status, stdout and the record of `pacs-engine verify ROOT OPTIONS --workers 0`."""
    before = set((root / "reports").glob("verify-*.json"))
    result = run_cli("verify", str(root), "--workers", "0", "--no-progress", *options)
    assert result.returncode in (0, 1), result.stderr
    (new,) = set((root / "reports").glob("verify-*.json")) - before
    assert f"recorded in {new}" in result.stdout
    return result.returncode, result.stdout, json.loads(new.read_text())


def rows_of(root: Path) -> list[dict[str, Any]]:
    with open_archive(root) as archive:
        return list(archive.index)


def test_each_selector_checks_exactly_the_instances_it_names(
    two_runs: tuple[Path, str], tmp_path: Path
) -> None:
    root, between = two_runs
    rows = rows_of(root)
    studies = sorted({r["StudyInstanceUID"] for r in rows})
    series = sorted({r["SeriesInstanceUID"] for r in rows})
    assert len(studies) >= 3 and len(series) >= 4
    study = max(studies, key=lambda s: sum(r["StudyInstanceUID"] == s for r in rows))
    one_series = next(
        s
        for s in series
        if not any(r["SeriesInstanceUID"] == s for r in rows if r["StudyInstanceUID"] == study)
    )
    expected = {
        ("--since", between): {r["SOPInstanceUID"] for r in rows if r["ingested_at"] >= between},
        ("--study", study): {r["SOPInstanceUID"] for r in rows if r["StudyInstanceUID"] == study},
        ("--series", one_series): {
            r["SOPInstanceUID"] for r in rows if r["SeriesInstanceUID"] == one_series
        },
    }
    assert {len(e) for e in expected.values()} != {len(rows)}
    assert len(expected[("--since", between)]) == len(NAMES)
    root = copy_of(root, tmp_path)
    for (option, value), uids in expected.items():
        status, out, record = verify_cli(root, option, value)
        assert status == 0 and f"{len(uids):,} instances" in out, out
        assert set(record["checked"]) == uids and record["instances"] == len(uids)
    # Both together: the union of the study and the series.
    status, out, record = verify_cli(root, "--study", study, "--series", one_series)
    both = expected[("--study", study)] | expected[("--series", one_series)]
    assert set(record["checked"]) == both and record["instances"] == len(both)
    # Damage outside the selection: still clean; inside: found, as the full verify says it.
    outside = sorted({r["SOPInstanceUID"] for r in rows} - expected[("--study", study)])[0]
    damage_header(root, outside)
    assert verify_cli(root, "--study", study)[0] == 0
    full_status, full_out, full_record = verify_cli(root)
    assert full_status == 1 and full_record["checked"] is None
    (line,) = [x for x in full_out.splitlines() if x.startswith("MISMATCH")]
    assert outside in line
    inside = sorted(expected[("--study", study)])[0]
    damage_header(root, inside)
    status, out, record = verify_cli(root, "--study", study)
    assert status == 1 and [m["SOPInstanceUID"] for m in record["mismatches"]] == [inside]
    full = [x for x in verify_cli(root)[1].splitlines() if x.startswith("MISMATCH")]
    assert [x for x in out.splitlines() if x.startswith("MISMATCH")] == [
        x for x in full if inside in x
    ]


def test_a_sample_has_its_size_repeats_with_its_seed_and_says_what_it_proves(
    two_runs: tuple[Path, str], tmp_path: Path
) -> None:
    root = copy_of(two_runs[0], tmp_path)
    total = len(rows_of(root))
    status, out, first = verify_cli(root, "--sample", "0.25")
    size = math.ceil(0.25 * total)
    assert status == 0 and len(first["checked"]) == first["instances"] == size
    assert f"seed {DEFAULT_SEED}" in out and first["selection"]["seed"] == DEFAULT_SEED
    rate = 100 * 3 / size
    assert f"fewer than 3/{size} = {rate:.3g} % of the {total:,} selected" in out
    assert verify_cli(root, "--sample", "0.25")[2]["checked"] == first["checked"]
    other = verify_cli(root, "--sample", "0.25", "--seed", "7")[2]["checked"]
    assert len(other) == size and other != first["checked"]
    assert len(verify_cli(root, "--sample", "1")[2]["checked"]) == total


def test_the_rule_of_three() -> None:
    """3/n bounds the damaged fraction at 95 %: were it 3/n, n clean draws would be rarer
    than 1 in 20; were it a little less (2.9/n), not."""
    for n in (3, 10, 100, 1000, 100_000):
        assert rule_of_three(n) == min(1.0, 3 / n)
        assert (1 - rule_of_three(n)) ** n < 0.05
    assert (1 - 2.9 / 1000) ** 1000 > 0.05
    text = confidence(1000, 0, 100_000)
    assert "with 95 % confidence fewer than 3/1,000 = 0.3 % of the 100,000 selected" in text
    assert "2 of 1,000 sampled instances damaged: about 0.2 %" in confidence(1000, 2, 100_000)


def test_the_record_lets_a_cron_job_verify_what_was_not_verified_recently(
    two_runs: tuple[Path, str], tmp_path: Path
) -> None:
    root = copy_of(two_runs[0], tmp_path)
    everything = {r["SOPInstanceUID"] for r in rows_of(root)}
    today = time.strftime("%Y-%m-%d", time.gmtime())
    first = verify_cli(root, "--not-verified-since", today, "--limit", "40")[2]
    assert len(first["checked"]) == 40 and first["population"] == len(everything)
    assert first["selection"]["limit"] == 40 and first["seconds"] >= 0
    with open_archive(root) as archive:
        assert read_records(archive)[-1] == first  # written and read back
    second = verify_cli(root, "--not-verified-since", today)[2]
    assert set(second["checked"]) == everything - set(first["checked"])
    assert second["population"] == len(everything) - 40
    # Everything is now verified since today; an earlier verify does not count for tomorrow.
    _, out, third = verify_cli(root, "--not-verified-since", today)
    assert third["checked"] == [] and "0 instances" in out
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400))
    assert len(verify_cli(root, "--not-verified-since", tomorrow)[2]["checked"]) == len(everything)
    # A whole-archive verify covers what it found clean, not what it found damaged.
    damaged = sorted(everything)[5]
    damage_header(root, damaged)
    later = time.strftime(STAMP, time.gmtime())
    assert verify_cli(root)[0] == 1
    assert verify_cli(root, "--not-verified-since", later)[2]["checked"] == [damaged]


def test_a_version_received_after_a_partial_verify_is_verified_again(
    two_runs: tuple[Path, str], tmp_path: Path
) -> None:
    # A partial verify marked its instances clean for good: a new version sent (or made by
    # a correction) after it was skipped by every nightly --not-verified-since run.
    root = copy_of(two_runs[0], tmp_path)
    row = next(r for r in rows_of(root) if Path(r["source_path"]).name == "CT_small.dcm")
    checked = verify_cli(root, "--series", row["SeriesInstanceUID"])[2]
    assert row["SOPInstanceUID"] in checked["checked"]
    while time.strftime(STAMP, time.gmtime()) <= checked["started"]:  # whole seconds
        time.sleep(0.05)
    version = pydicom.dcmread(row["source_path"])
    version.StudyDescription = "SENT AGAIN"
    version.save_as(tmp_path / "again.dcm")
    with open_archive(root, readonly=False) as archive:
        assert archive.ingest([tmp_path / "again.dcm"], workers=0).archived == 1
    today = time.strftime("%Y-%m-%d", time.gmtime())
    again = verify_cli(root, "--not-verified-since", today, "--series", row["SeriesInstanceUID"])
    assert again[2]["checked"] == [row["SOPInstanceUID"]]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--since", "06/12/2026"), "--since: '06/12/2026' is not a UTC date (YYYY-MM-DD"),
        (("--since", "2026-13-01"), "--since: '2026-13-01' is not a UTC date"),
        (("--not-verified-since", "yesterday"), "--not-verified-since: 'yesterday' is not a UTC"),
        (("--sample", "0"), "--sample: 0.0 is not in (0, 1]"),
        (("--sample", "1.5"), "--sample: 1.5 is not in (0, 1]"),
        (("--limit", "0"), "--limit: 0 is not 1 or more"),
        (("--study", "1.2.3.4"), "--study 1.2.3.4: not in the archive"),
        (("--series", "1.2.3.4"), "--series 1.2.3.4: not in the archive"),
    ],
)
def test_bad_arguments_are_one_line_errors(
    two_runs: tuple[Path, str], options: tuple[str, ...], message: str
) -> None:
    root = two_runs[0]
    result = run_cli("verify", str(root), "--workers", "0", *options)
    assert result.returncode == 2
    assert result.stderr.startswith(f"pacs-engine verify: {message}"), result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_a_worker_count_below_zero_is_an_argument_error(two_runs: tuple[Path, str]) -> None:
    # It was a traceback, and exit 1: what a mismatch found exits with.
    result = run_cli("verify", str(two_runs[0]), "--workers", "-1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "pacs-engine verify: error: argument --workers: not a number of workers (0 or more): '-1'"
    )


def test_a_verify_that_cannot_be_recorded_still_reports_its_findings(
    two_runs: tuple[Path, str], tmp_path: Path
) -> None:
    root = copy_of(two_runs[0], tmp_path)
    damaged = sorted(r["SOPInstanceUID"] for r in rows_of(root))[0]
    damage_header(root, damaged)
    shutil.rmtree(root / "reports")
    (root / "reports").write_text("not a folder")  # as root, a read-only folder is not one
    result = run_cli("verify", str(root), "--workers", "0", "--sample", "1")
    assert result.returncode == 1, result.stderr
    assert f"MISMATCH {damaged}" in result.stdout
    assert "not recorded: " in result.stdout and "recorded in" not in result.stdout
