"""Shared fixtures: where the DICOM files live."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

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


def benchmark_module(name: str) -> ModuleType:
    """The module benchmarks/<name>.py (e.g. "orthanc"), loaded by its path, once.

    Not by adding benchmarks/ to sys.path: its conftest.py would then be the `conftest`
    that worker processes (which import test modules by name) find before this one.
    """
    qualified = f"benchmarks.{name}"
    if qualified not in sys.modules:
        spec = importlib.util.spec_from_file_location(qualified, ROOT / "benchmarks" / f"{name}.py")
        assert spec is not None and spec.loader is not None, qualified
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module  # before it runs: its dataclasses look it up
        spec.loader.exec_module(module)
    return sys.modules[qualified]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `pacs-engine ARGS...` in a fresh interpreter (`env`: variables set for it)."""
    return subprocess.run(
        [sys.executable, "-m", "pacs_engine.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )


def bind_mount(monkeypatch: pytest.MonkeyPatch, folder: Path, at: Path) -> None:
    """Make the existing folder `at` stat as `folder`, as a bind mount of `folder` at `at`
    would (its path resolves to itself, not to `folder`)."""
    stat = os.stat

    def mounted(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if isinstance(path, (str, os.PathLike)) and os.path.abspath(path) == str(at):
            path = folder
        return stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", mounted)
