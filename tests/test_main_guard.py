"""A script that starts ingest workers at its top level, without the __main__ guard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from pacs_engine import open_archive
from pacs_engine.synth import write_studies

# The README's example, as a new user would copy it into a file.
TOP_LEVEL = """
from pacs_engine import Archive
archive = Archive.create({archive!r})
report = archive.ingest([{source!r}], workers=2)
print("archived", report.archived)
"""

IN_A_FUNCTION = """
from pacs_engine import Archive

def main():
    archive = Archive.create({archive!r})
    report = archive.ingest([{source!r}], workers=2)
    print("archived", report.archived)

main()
"""

GUARDED = """
from pacs_engine import Archive

if __name__ == "__main__":
    archive = Archive.create({archive!r})
    report = archive.ingest([{source!r}], workers=2)
    print("archived", report.archived)
"""


def run_script(tmp_path: Path, template: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Write the script for a small synthetic study to tmp_path and run it (60 s at most)."""
    source = tmp_path / "source"
    write_studies(source, studies=1, series_per_study=1, slices=3, rows=32, columns=32)
    archive = tmp_path / "archive"
    script = tmp_path / "ingest_script.py"
    script.write_text(template.format(archive=str(archive), source=str(source)))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    return result, archive


@pytest.mark.parametrize("template", [TOP_LEVEL, IN_A_FUNCTION], ids=["top-level", "function"])
def test_an_unguarded_script_stops_at_once_saying_what_to_do(tmp_path: Path, template: str) -> None:
    result, archive = run_script(tmp_path, template)
    assert result.returncode == 1
    assert 'if __name__ == "__main__":' in result.stderr
    assert "ingest_script.py, line " in result.stderr
    assert "BrokenProcessPool" not in result.stderr
    assert "leaked semaphore" not in result.stderr
    assert "archived" not in result.stdout
    with open_archive(archive) as created:  # the script made it, and nothing went in
        assert len(created.index) == 0


def test_the_guarded_script_ingests_with_workers(tmp_path: Path) -> None:
    result, archive = run_script(tmp_path, GUARDED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["archived", "3"]
    assert "leaked semaphore" not in result.stderr
    with open_archive(archive) as created:
        assert len(created.index) == 3


def test_a_script_read_from_standard_input_stops_at_once_saying_what_to_do(
    tmp_path: Path,
) -> None:
    """`python - < script`: its workers could not re-run a file that does not exist."""
    source = tmp_path / "source"
    write_studies(source, studies=1, series_per_study=1, slices=3, rows=32, columns=32)
    archive = tmp_path / "archive"
    result = subprocess.run(
        [sys.executable, "-"],
        input=GUARDED.format(archive=str(archive), source=str(source)).replace(
            'if __name__ == "__main__":', "if True:"
        ),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 1
    assert "standard input" in result.stderr and "workers=0" in result.stderr
    assert "BrokenProcessPool" not in result.stderr
    with open_archive(archive) as created:
        assert len(created.index) == 0
