"""`pacs-engine scan --preflight`: its prediction per input is what `ingest` then does."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from conftest import require_corpus, run_cli
from pydicom.encaps import encapsulate, generate_frames

from pacs_engine import Archive
from pacs_engine.archive.format import ArchiveError
from pacs_engine.index import Index
from pacs_engine.ingest.encode import PartEncoder
from pacs_engine.synth import write_series


def predictions(*args: str) -> dict[str, dict[str, Any]]:
    """`scan --preflight --json` over the arguments, by input key."""
    done = run_cli("scan", "--preflight", "--json", *args)
    assert done.returncode == 0, done.stderr
    found = [json.loads(line) for line in done.stdout.splitlines()]
    by_key = {p["key"]: p for p in found}
    assert len(by_key) == len(found)
    return by_key


def ingested(
    archive: Path, source: Path, *flags: str
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Ingest through the CLI: every input's outcome (from the journal) and the report."""
    before = set(_outcomes(archive)) if archive.exists() else set()
    done = run_cli(
        "ingest", str(source), "--archive", str(archive), "--workers", "0", "--json", *flags
    )
    assert done.returncode == 0, done.stderr
    outcomes = {k: v for k, v in _outcomes(archive).items() if k not in before}
    return outcomes, json.loads(done.stdout)


def _outcomes(archive: Path) -> dict[str, dict[str, Any]]:
    index = Index.open(archive / "index", readonly=True)
    try:
        found = [json.loads(v) for _, v in index.journal_items(b"o\x00")]
    finally:
        index.close()
    return {o["key"]: o for o in found}


def quarantine_reasons(archive: Path) -> dict[str, str]:
    """The quarantine's reason for each input it keeps (by path)."""
    reasons = {}
    for path in sorted((archive / "quarantine").glob("*.json")):
        record = json.loads(path.read_bytes())
        reasons[record["path"]] = record["reason"]
        for also in record.get("also", []):
            reasons[also["path"]] = also.get("reason", record["reason"])
    return reasons


def assert_predicted(predicted: dict[str, dict], outcomes: dict[str, dict], archive: Path) -> None:
    """Every input: the same outcome, the same reason, the same version flag; every
    quarantined or conflicting input is in the quarantine with that reason."""
    assert set(predicted) == set(outcomes)
    kept = quarantine_reasons(archive)
    for key, outcome in outcomes.items():
        guess = predicted[key]
        assert (guess["outcome"], guess.get("reason")) == (
            outcome["outcome"],
            outcome.get("reason"),
        ), key
        assert guess.get("version", False) == outcome.get("version", False), key
        if outcome["outcome"] in ("quarantined", "conflict"):
            assert kept[key] == outcome["reason"], key


def changed_copy(source: Path, target: Path, **changes: Any) -> None:
    """A copy of a file with other attribute values (same SOP Instance UID)."""
    dataset = pydicom.dcmread(source)
    for keyword, value in changes.items():
        setattr(dataset, keyword, value)
    dataset.save_as(target)


def other_pixels(source: Path, target: Path, **changes: Any) -> None:
    """A copy of a native file with one pixel changed (same SOP Instance UID)."""
    dataset = pydicom.dcmread(source)
    for keyword, value in changes.items():
        setattr(dataset, keyword, value)
    pixels = dataset.pixel_array.copy()
    pixels.flat[0] = np.invert(pixels.flat[0])
    dataset.PixelData = pixels.tobytes()
    dataset.save_as(target)


def test_preflight_predicts_every_outcome_and_reason_of_the_ingest(tmp_path: Path) -> None:
    corpus = require_corpus()
    source = tmp_path / "in"
    shutil.copytree(corpus / "malformed", source / "malformed")
    shutil.copytree(corpus / "pydicom" / "test_files", source / "pydicom")
    shutil.copytree(corpus / "dcm_qa_ts", source / "dcm_qa_ts")
    ct = source / "pydicom" / "CT_small.dcm"
    number = int(pydicom.dcmread(ct).InstanceNumber)
    shutil.copy(ct, source / "copy_of_CT_small.dcm")  # a duplicate
    # Higher Instance Numbers: planned after the original, so which is which is known.
    changed_copy(
        ct, source / "CT_small_v2.dcm", StudyDescription="corrected", InstanceNumber=number + 1
    )  # a version
    other_pixels(ct, source / "CT_small_other_pixels.dcm", InstanceNumber=number + 2)
    (source / "notes.txt").write_text("not an image\n")  # not DICOM
    dicomdir = source / "pydicom" / "dicomdirtests" / "DICOMDIR"
    assert dicomdir.is_file()

    predicted = predictions(str(source))
    archive = tmp_path / "a"
    outcomes, report = ingested(archive, source)
    assert_predicted(predicted, outcomes, archive)

    # The cases the test made are there, and named as such.
    pair = [predicted[str(p)] for p in (ct, source / "copy_of_CT_small.dcm")]
    assert sorted(p["outcome"] for p in pair) == ["archived", "duplicate"]
    assert predicted[str(source / "CT_small_v2.dcm")]["version"] is True
    conflict = predicted[str(source / "CT_small_other_pixels.dcm")]
    assert conflict["outcome"] == "conflict"
    assert conflict["reason"].endswith("different pixels")
    assert conflict["same_as"] == str(source / "CT_small_v2.dcm")  # the current version
    assert predicted[str(source / "notes.txt")]["not_dicom"] is True
    assert predicted[str(dicomdir)]["media_directory"] is True
    assert predicted[str(dicomdir)]["reason"].startswith("a DICOMDIR (a media directory")
    kinds = {p["outcome"] for p in predicted.values()}
    assert kinds == {"archived", "duplicate", "conflict", "quarantined"}
    counted = sum(report[k] for k in ("archived", "duplicates", "conflicts", "quarantined"))
    assert counted == report["inputs"] == len(predicted)

    # Against the archive: a second folder's inputs judged with the archived instances.
    more = tmp_path / "more"
    more.mkdir()
    shutil.copy(ct, more / "again.dcm")
    changed_copy(ct, more / "v3.dcm", StudyDescription="corrected again")
    changed_copy(ct, more / "moved.dcm", SeriesInstanceUID="1.2.3.4.5.6.7")
    predicted = predictions(str(more), "--archive", str(archive))
    assert predicted[str(more / "again.dcm")]["outcome"] == "duplicate"
    assert predicted[str(more / "v3.dcm")]["version"] is True
    assert predicted[str(more / "moved.dcm")]["outcome"] == "conflict"
    outcomes, _ = ingested(archive, more)
    assert_predicted(predicted, outcomes, archive)


def cut_frames(source: Path, target: Path) -> None:
    """A copy of a compressed file whose frame bitstreams are cut in half (do not decode)."""
    dataset = pydicom.dcmread(source)
    frames = list(generate_frames(dataset.PixelData, number_of_frames=1))
    dataset.PixelData = encapsulate([f[: len(f) // 2] for f in frames])
    dataset.save_as(target)


def test_preflight_without_decoding_says_what_it_did_not_check(tmp_path: Path) -> None:
    corpus = require_corpus()
    source = tmp_path / "in"
    shutil.copytree(corpus / "malformed", source / "malformed")
    cut = source / "cut.dcm"
    cut_frames(corpus / "pydicom" / "test_files" / "MR_small_jpeg_ls_lossless.dcm", cut)
    done = run_cli("scan", "--preflight", "--no-decode", str(source))
    assert done.returncode == 0, done.stderr
    assert "not checked" in done.stdout
    decoded = predictions(str(source))
    undecoded = predictions("--no-decode", str(source))
    # The summary table: one row per outcome and kind of reason, counting every input.
    table = run_cli("scan", "--preflight", str(source)).stdout.split("by outcome and reason:\n")
    rows = [line.split(None, 1) for line in table[1].splitlines()]
    assert sum(int(count.replace(",", "")) for count, _ in rows) == len(decoded)
    cut_row = "quarantined: " + re.sub(r"\b[0-9]+\b", "N", decoded[str(cut)]["reason"])
    assert ["1", cut_row] in rows
    # Decoding finds the frames that do not decode; not decoding archives them unchecked.
    assert decoded[str(cut)]["outcome"] == "quarantined"
    assert decoded[str(cut)]["reason"].startswith("frame 0")
    assert undecoded[str(cut)]["outcome"] == "archived"
    assert not undecoded[str(cut)].get("decoded")
    for guessed, flags in ((decoded, ()), (undecoded, ("--trust-bitstreams",))):
        archive = tmp_path / f"a{len(flags)}"
        outcomes, _ = ingested(archive, source, *flags)
        assert_predicted(guessed, outcomes, archive)


def test_preflight_judges_series_in_the_order_the_ingest_sends_them(tmp_path: Path) -> None:
    # The ingest sends the largest series first: of two series holding the same SOP
    # Instance UID, the larger one's input is archived, the other's is the conflict,
    # whatever the UIDs' order; the prediction must say the same.
    source = tmp_path / "in"
    large = write_series(source, 5, 0, 0, 3, modality="CT", syntax="explicit", rows=16, columns=16)
    small_uid = "1.0.1"  # sorts before the large series' UID
    ds = pydicom.dcmread(large[0])
    assert small_uid < str(ds.SeriesInstanceUID)
    ds.SeriesInstanceUID = small_uid
    pixels = ds.pixel_array.copy()
    pixels[0, 0] += 1
    ds.PixelData = pixels.tobytes()
    (source / "small").mkdir()
    ds.save_as(source / "small" / "same_sop.dcm")
    predicted = predictions(str(source))
    outcomes, report = ingested(tmp_path / "a", source)
    assert report["archived"] == 3 and report["conflicts"] == 1
    conflict = str(source / "small" / "same_sop.dcm")
    assert outcomes[conflict]["outcome"] == "conflict"
    assert predicted[conflict]["outcome"] == "conflict"
    assert {k: p["outcome"] for k, p in predicted.items()} == {
        k: o["outcome"] for k, o in outcomes.items()
    }


def test_a_damaged_or_missing_archive_marker_is_named_in_one_line(tmp_path: Path) -> None:
    """`scan --preflight --archive`: a folder whose archive.json no longer parses, or that has
    none, is an error naming it (exit 2, no traceback); so is the marker to the part encoder."""
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(require_corpus() / "pydicom" / "test_files" / "CT_small.dcm", source)
    archive = tmp_path / "a"
    Archive.create(archive).close()
    marker = archive / "archive.json"
    marker.write_bytes(marker.read_bytes()[:20])
    done = run_cli("scan", "--preflight", str(source), "--archive", str(archive))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{marker}: cannot be read" in done.stderr
    with pytest.raises(ArchiveError, match=f"^{re.escape(str(marker))}: cannot be read"):
        PartEncoder(archive)

    plain = tmp_path / "plain"
    plain.mkdir()
    done = run_cli("scan", "--preflight", str(source), "--archive", str(plain))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{plain}: not a pacs_engine archive (no archive.json)" in done.stderr
