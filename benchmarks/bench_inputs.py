"""Reading every member of a tar.gz in place: pacs_engine.inputs against plain tarfile.

Run from the repository root:

    .venv/bin/python -m pytest benchmarks/bench_inputs.py -s -p no:randomly

One tar.gz of ~500 small DICOM files (pydicom's test files and corpus files under
256 KB, repeated under distinct names) is read member by member, in archive order
and in a shuffled order, by `read_input` (a fresh per-process cache each time, so
the first read pays for listing the archive and building the gzip index) and by
`tarfile.open(...).extractfile` (one open TarFile per pass). Every member's bytes
are checked against the original.
"""

from __future__ import annotations

import hashlib
import random
import tarfile
import time
from pathlib import Path

import pytest

from benchmarks.conftest import CORPUS, corpus_files, pydicom_test_files
from pacs_engine.ingest import inputs
from pacs_engine.ingest.inputs import InputRef, iter_inputs, read_input

MEMBERS = 500
SMALL = 256 * 1024


@pytest.fixture(scope="module")
def tgz(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The tar.gz and the sha256 of every member."""
    if not (CORPUS / "MANIFEST.tsv").is_file():
        pytest.skip(f"shared corpus not found at {CORPUS}")
    files = [p for p in [*pydicom_test_files(), *corpus_files()] if p.stat().st_size < SMALL]
    chosen = [files[i % len(files)] for i in range(MEMBERS)]
    path = tmp_path_factory.mktemp("inputs") / "series.tar.gz"
    digests = {}
    with tarfile.open(path, "w:gz") as archive:
        for i, source in enumerate(chosen):
            name = f"{i:04d}_{source.name}"
            archive.add(source, name)
            digests[name] = hashlib.sha256(source.read_bytes()).hexdigest()
    return path, digests


def _with_inputs(path: Path, names: list[str], digests: dict[str, str]) -> float:
    inputs._cache.clear()
    start = time.perf_counter()
    for name in names:
        data = read_input(InputRef(str(path), name))
        assert hashlib.sha256(data).hexdigest() == digests[name]
    return time.perf_counter() - start


def _with_tarfile(path: Path, names: list[str], digests: dict[str, str]) -> float:
    start = time.perf_counter()
    with tarfile.open(path, "r:gz") as archive:
        for name in names:
            member = archive.extractfile(name)
            assert member is not None
            assert hashlib.sha256(member.read()).hexdigest() == digests[name]
    return time.perf_counter() - start


def test_tgz_member_reads(tgz: tuple[Path, dict[str, str]]) -> None:
    path, digests = tgz
    listed = [ref.member or "" for ref in iter_inputs([path], lambda key, why: None)]
    assert listed == list(digests)
    shuffled = listed[:]
    random.Random(0).shuffle(shuffled)
    rows = {
        "inputs, archive order": _with_inputs(path, listed, digests),
        "inputs, shuffled": _with_inputs(path, shuffled, digests),
        "tarfile, archive order": _with_tarfile(path, listed, digests),
        "tarfile, shuffled": _with_tarfile(path, shuffled, digests),
    }
    uncompressed = sum(
        m.size
        for m in tarfile.open(path, "r:gz").getmembers()  # noqa: SIM115
    )
    size = path.stat().st_size
    print(f"\n{len(listed)} members, {uncompressed / 1e6:.1f} MB in a {size / 1e6:.1f} MB tar.gz")
    for label, seconds in rows.items():
        print(f"  {label:<24} {seconds:7.2f} s  {seconds / len(listed) * 1e3:7.2f} ms/member")
    # Random access must not cost a pass over the archive per member.
    assert rows["inputs, shuffled"] < 3 * rows["inputs, archive order"] + 0.5
