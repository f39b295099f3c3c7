"""`pacs-engine scan`: the inventory a hospital runs before a migration."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from conftest import pydicom_test_files, require_corpus, run_cli
from pydicom.errors import InvalidDicomError

from pacs_engine.sources import sample_data_dir


def pydicom_reads(path: Path) -> bool:
    """Whether pydicom reads the file without force (anything but "not DICOM" is raised)."""
    try:
        pydicom.dcmread(path)
    except InvalidDicomError:
        return False
    return True


def pydicom_inventory(paths: list[Path]) -> dict:
    """The same counts, computed with pydicom."""
    readable = [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]
    return {
        "studies": len({ds.StudyInstanceUID for ds in readable if ds.get("StudyInstanceUID")}),
        "series": len({ds.SeriesInstanceUID for ds in readable if ds.get("SeriesInstanceUID")}),
        "modalities": Counter(ds.get("Modality") or "(none)" for ds in readable),
        "syntaxes": Counter(ds.file_meta.TransferSyntaxUID for ds in readable),
    }


def test_inventory_of_a_folder_matches_pydicom(tmp_path: Path) -> None:
    source = tmp_path / "archive"
    candidates = [p for p in pydicom_test_files() if p.suffix == ".dcm"]
    unreadable = [p for p in candidates if not pydicom_reads(p)]
    assert len(unreadable) <= len(candidates) // 10, unreadable  # few left out, and counted
    files = [p for p in candidates if p not in unreadable][:40]
    for i, path in enumerate(files):
        folder = source / f"study{i % 3}" / "series"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)
    (source / "notes.txt").write_text("not an image")
    result = run_cli("scan", str(source), "--json", "--threads", "2")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    problems = {Path(p["path"]).name: p["reason"] for p in report["problems"]}
    assert "not a DICOM file" in problems.pop("notes.txt")
    # pydicom reads truncated files (its test files say so in their names); the scanner refuses.
    assert all("truncated" in name for name in problems), problems
    want = pydicom_inventory([p for p in files if p.name not in problems])
    assert report["files"] == len(files) + 1
    assert report["bytes"] == sum(p.stat().st_size for p in files) + len("not an image")
    assert report["studies"] == want["studies"]
    assert report["series"] == want["series"]
    modalities = {m: row["instances"] for m, row in report["by_modality"].items()}
    syntaxes = {uid: row["instances"] for uid, row in report["by_transfer_syntax"].items()}
    assert modalities == dict(want["modalities"])
    assert syntaxes == dict(want["syntaxes"])
    assert report["instances"] + len(report["problems"]) == report["files"]


def test_text_report_and_missing_source(tmp_path: Path) -> None:
    result = run_cli("scan", str(sample_data_dir()), str(tmp_path / "gone"))
    assert result.returncode == 1
    assert "By modality:" in result.stdout and "By transfer syntax:" in result.stdout
    assert "Explicit VR Little Endian" in result.stdout
    assert f"{tmp_path / 'gone'}: no such file or folder" in result.stdout


def test_progress_bar_goes_to_stderr() -> None:
    result = run_cli("scan", str(sample_data_dir()), "--progress", "--json")
    assert result.returncode == 0
    json.loads(result.stdout)  # the bar does not pollute the JSON
    assert "files" in result.stderr and "100%" in result.stderr


def test_help_lists_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0 and "scan" in result.stdout and "samples" in result.stdout
    result = run_cli("scan", "--help")
    assert "--json" in result.stdout and "--threads" in result.stdout


@pytest.mark.corpus
def test_inventory_of_the_corpus_lists_every_malformed_file_with_a_reason() -> None:
    corpus = require_corpus()
    result = run_cli("scan", str(corpus), "--json")
    report = json.loads(result.stdout)
    listed = sum(1 for line in (corpus / "MANIFEST.tsv").read_text().splitlines()[1:] if line)
    assert report["files"] == listed + 2  # MANIFEST.tsv and LICENSES.md
    reasons = {Path(p["path"]).name: p["reason"] for p in report["problems"]}
    assert "not a DICOM file" in reasons["MANIFEST.tsv"]
    for name, reason in reasons.items():
        assert reason.startswith("at byte "), (name, reason)
