"""Shared fixtures: where the DICOM files live."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

ROOT = Path(__file__).resolve().parent.parent
PYDICOM_NOT_DICOM = {".py", ".txt", ".dump", ".json", ".gz", ".bz2", ".zip", ".md", ".pyc"}
CORPUS = Path(os.environ.get("PACS_ENGINE_CORPUS", ROOT.parent / "shared" / "corpus"))


def corpus_files() -> list[Path]:
    """Every file listed in the shared corpus manifest (empty when the corpus is absent)."""
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.is_file():
        return []
    lines = manifest.read_text().splitlines()[1:]
    return [CORPUS / line.split("\t", 1)[0] for line in lines if line.strip()]


def pydicom_test_files() -> list[Path]:
    """The DICOM test files that ship inside the pydicom package (no download)."""
    data = Path(pydicom.__file__).parent / "data"
    return sorted(
        p
        for folder in (data / "test_files", data / "charset_files")
        for p in folder.rglob("*")
        if p.is_file() and p.suffix not in PYDICOM_NOT_DICOM
    )


def corpus_params() -> list:
    """pytest params over the corpus, or one skipped param naming the missing corpus."""
    files = corpus_files()
    if not files:
        return [
            pytest.param(
                None,
                marks=pytest.mark.skip(
                    reason=f"shared corpus not found at {CORPUS} (set PACS_ENGINE_CORPUS)"
                ),
            )
        ]
    return [pytest.param(f, id=str(f.relative_to(CORPUS))) for f in files]


def require_corpus() -> Path:
    """The corpus folder; skips the calling test with a clear message when it is absent."""
    if not (CORPUS / "MANIFEST.tsv").is_file():
        pytest.skip(f"shared corpus not found at {CORPUS} (set PACS_ENGINE_CORPUS)")
    return CORPUS


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Run `pacs-engine ARGS...` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "pacs_engine.cli", *args],
        capture_output=True,
        text=True,
        check=False,
    )
