"""Archives written by commit 71bdf4b (before issue 12) open, read, verify and take writes.

The archives under tests/data/archive-71bdf4b/ were made by that commit's code from
pydicom's bundled test files (tests/data/make_compat_archive.py says how, SOURCES.tsv
lists the files). Every test works on a copy in tmp_path; tests/data is never written.
Expectations come from the source files themselves (pydicom reads them), and the old
code's own report (expected.json) is checked against them too.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import shutil
import warnings
from collections import Counter, defaultdict
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import run_cli
from pydicom.data import get_testdata_file
from test_archive import pydicom_pixels

from pacs_engine import Archive, open_archive
from pacs_engine.archive.versions import version_rows
from pacs_engine.deid import deidentify, make_key

DATA = Path(__file__).parent / "data" / "archive-71bdf4b"
#: The one source the old code quarantined, and the reason it gave.
QUARANTINED = "MR_truncated.dcm"
QUARANTINE_REASON = (
    "element (7FE0,0010) declares a value of 8192 bytes, past the end of the data (9630 bytes)"
)
#: The source ingested by the second run: a version of CT_small.dcm, so the current one.
SECOND_RUN = "sources/CT_small_changed.dcm"
#: Written into the old archive by the current code: a new instance, and a new version of
#: an instance that already has four.
NEW_FILES = ("examples_palette.dcm", "MR_small_padded.dcm")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def source_path(name: str) -> Path:
    """A source named in SOURCES.tsv: pydicom's bundled file, or one kept beside the archive."""
    if name.startswith("sources/"):
        return DATA / name
    found = get_testdata_file(name, download=False)
    assert found is not None, f"{name}: not bundled with this pydicom"
    return Path(found)


def sources() -> dict[str, Path]:
    """The ingested sources by name, in ingest order, each checked against its recorded sha256."""
    lines = (DATA / "SOURCES.tsv").read_text().splitlines()
    assert lines[0] == "name\tsha256\tbytes"
    found = {}
    for line in lines[1:]:
        name, digest, size = line.split("\t")
        path = source_path(name)
        data = path.read_bytes()
        # Another pydicom could ship other bytes under the same name: say so, not "differs".
        assert (sha256(data), len(data)) == (digest, int(size)), f"{name}: not the file ingested"
        found[name] = path
    return found


def archived_sources() -> dict[str, list[Path]]:
    """The sources the old code archived, grouped by SOP Instance UID."""
    by_uid: dict[str, list[Path]] = defaultdict(list)
    for name, path in sources().items():
        if name != QUARANTINED:
            by_uid[pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID].append(path)
    return dict(by_uid)


def copied(name: str, tmp_path: Path) -> Path:
    """A copy of one of the stored archives ('archive' or 'derived') in tmp_path."""
    target = tmp_path / name
    shutil.copytree(DATA / name, target)
    return target


@pytest.fixture
def old(tmp_path: Path) -> Path:
    return copied("archive", tmp_path)


def expected() -> dict:
    return json.loads((DATA / "expected.json").read_text())


def uid_counts(paths: list[Path]) -> dict[str, int]:
    """Distinct studies, series and instances of the files, as pydicom reads them."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    keys = {
        "study": "StudyInstanceUID",
        "series": "SeriesInstanceUID",
        "instance": "SOPInstanceUID",
    }
    return {level: len({h[key].value for h in headers}) for level, key in keys.items()}


def test_sources_cover_what_the_issue_asks() -> None:
    """The stored archive holds the variety it is meant to: checked on the sources."""
    syntaxes = Counter(
        str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        for p in sources().values()
    )
    for uid in (
        "1.2.840.10008.1.2",  # implicit VR LE
        "1.2.840.10008.1.2.1",  # explicit VR LE
        "1.2.840.10008.1.2.2",  # explicit VR BE
        "1.2.840.10008.1.2.1.99",  # deflated
        "1.2.840.10008.1.2.4.50",  # JPEG baseline
        "1.2.840.10008.1.2.4.70",  # JPEG lossless
        "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
        "1.2.840.10008.1.2.4.90",  # J2K lossless
        "1.2.840.10008.1.2.4.91",  # J2K
        "1.2.840.10008.1.2.5",  # RLE
    ):
        assert syntaxes[uid], uid
    assert max(len(paths) for paths in archived_sources().values()) >= 3


def test_counts_at_each_level(old: Path) -> None:
    """Queries at each level count what the sources hold, as the old code counted them."""
    with open_archive(old) as archive:
        got = {level: len(archive.query(level)) for level in ("study", "series", "instance")}
        assert got == uid_counts([paths[0] for paths in archived_sources().values()])
        assert got == expected()["counts"]
        ct = pydicom.dcmread(source_path("CT_small.dcm"), stop_before_pixels=True)
        (study,) = archive.query("study", StudyInstanceUID=ct.StudyInstanceUID)
        assert study["StudyInstanceUID"] == ct.StudyInstanceUID
        (row,) = archive.query("instance", Modality="CT")
        assert row["SOPInstanceUID"] == ct.SOPInstanceUID
        assert archive.info()["instances"] == expected()["info"]["instances"]


def test_frames_equal_pydicom(old: Path) -> None:
    """Every version's frames decode to what pydicom decodes from its source file."""
    with open_archive(old) as archive:
        compared = 0
        for uid, paths in archived_sources().items():
            versions = archive.versions(uid)
            assert len(versions) == len(paths), uid
            by_sha = {sha256(p.read_bytes()): p for p in paths}
            for row in versions:
                path = by_sha[row["source_sha256"]]
                attributes = archive.pixels.open_array(row["pixels"]["array"]).attrs
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    theirs = pydicom_pixels(path, attributes.get("color_conversion", "none"))
                ours = archive.frames_of(row)
                assert ours.dtype == theirs.dtype.newbyteorder("="), path.name
                assert np.array_equal(ours.reshape(theirs.shape), theirs), path.name
                compared += 1
        assert compared == len(sources()) - 1


def test_export_bytes_and_versions(old: Path, tmp_path: Path) -> None:
    """Every version exports as its source file, byte for byte; the current one is the last."""
    with open_archive(old) as archive:
        for uid, paths in archived_sources().items():
            exported = [
                archive.export_bytes(uid, version=i) for i in range(len(archive.versions(uid)))
            ]
            assert Counter(map(sha256, exported)) == Counter(sha256(p.read_bytes()) for p in paths)
            assert archive.export_bytes(uid) == exported[-1]
        ct = pydicom.dcmread(source_path("CT_small.dcm"), stop_before_pixels=True)
        assert archive.export_bytes(ct.SOPInstanceUID) == (DATA / SECOND_RUN).read_bytes()


def test_cli_export_all_versions(old: Path, tmp_path: Path) -> None:
    """`pacs-engine export --all-versions` writes every archived source file, byte for byte."""
    out = tmp_path / "out"
    done = run_cli("export", str(old), str(out), "--all-versions")
    assert done.returncode == 0, done.stderr
    written = [p for p in out.rglob("*") if p.is_file()]
    want = [p for paths in archived_sources().values() for p in paths]
    assert Counter(sha256(p.read_bytes()) for p in written) == Counter(
        sha256(p.read_bytes()) for p in want
    )
    for uid, paths in archived_sources().items():
        (current,) = [p for p in written if p.name == f"{uid}.dcm"]
        with open_archive(old) as archive:
            assert current.read_bytes() == archive.export_bytes(uid)
        assert len([p for p in written if p.name.startswith(f"{uid}_v")]) == len(paths) - 1


def test_verify_clean(old: Path) -> None:
    with open_archive(old) as archive:
        report = archive.verify(workers=0)
        assert report.ok, report.mismatches
        assert report.instances == expected()["counts"]["instance"]
    done = run_cli("verify", str(old))
    assert done.returncode == 0, done.stdout + done.stderr


def test_quarantine_readable(old: Path) -> None:
    """The quarantined source is kept whole, with the old code's reason."""
    source = source_path(QUARANTINED)
    with open_archive(old) as archive:
        (record,) = archive.quarantine.records()
        assert record["reason"] == QUARANTINE_REASON
        assert record["sha256"] == sha256(source.read_bytes())
        assert Path(record["path"]).name == QUARANTINED
        kept = old / "quarantine" / f"{record['sha256']}.dcm"
        assert kept.read_bytes() == source.read_bytes()
        assert archive.info()["quarantined"] == 1


def test_old_archive_takes_writes(old: Path) -> None:
    """The current code ingests into the old archive: a new instance and a new version."""
    new = [source_path(name) for name in NEW_FILES]
    before = uid_counts([paths[0] for paths in archived_sources().values()])
    mr_uid = pydicom.dcmread(new[1], stop_before_pixels=True).SOPInstanceUID
    marker = (old / "archive.json").read_bytes()
    assert json.loads(marker)["version"] == 1
    with open_archive(old) as archive:  # reading never changes the format version
        assert archive.query("instance")
    assert (old / "archive.json").read_bytes() == marker
    with open_archive(old, readonly=False) as archive:
        # Raised before anything is written: version-1 code now refuses the archive.
        assert json.loads((old / "archive.json").read_bytes()) == {
            **json.loads(marker),
            "version": 2,
        }
        versions_before = len(archive.versions(mr_uid))
        exported_before = {uid: archive.export_bytes(uid) for uid in archived_sources()}
        report = archive.ingest(new, workers=0)
        assert report.balanced and report.archived == 2 and report.quarantined == 0
        assert report.versions == 1
        counts = {level: len(archive.query(level)) for level in ("study", "series", "instance")}
        assert counts == {level: n + 1 for level, n in before.items()}
        assert len(archive.versions(mr_uid)) == versions_before + 1
        for path in new:
            uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            assert archive.export_bytes(uid) == path.read_bytes()
        for uid, data in exported_before.items():  # the old instances are untouched
            if uid != mr_uid:
                assert archive.export_bytes(uid) == data, uid
        report = archive.verify(workers=0)
        assert report.ok and report.instances == counts["instance"]


def test_a_research_copy_of_the_old_archive_is_version_2_and_the_old_one_stays_1(
    tmp_path: Path,
) -> None:
    """deidentify reads the version-1 archive (left as it was) and writes a version-2 copy."""
    old = copied("archive", tmp_path)
    marker = (old / "archive.json").read_bytes()
    key = make_key(tmp_path / "key")
    report = deidentify(old, tmp_path / "research", key, workers=0)
    assert report.staged > 0 and report.balanced
    assert (old / "archive.json").read_bytes() == marker
    research = json.loads((tmp_path / "research" / "archive.json").read_bytes())
    assert (research["format"], research["version"]) == ("pacs_engine archive", 2)
    # What version 1 would misread: shards named with the separator "." beside zarr.json.
    assert any((tmp_path / "research" / "pixels").rglob("c.*.0.0"))
    with open_archive(tmp_path / "research") as copy:
        assert len(copy.query("instance")) == report.staged
        assert copy.verify(workers=0).ok


def test_derived_archive(tmp_path: Path) -> None:
    """The old code's read-optimised copy (lz4, transcoded) reads the same pixels and verifies."""
    old, derived = copied("archive", tmp_path), copied("derived", tmp_path)
    with open_archive(old) as archive, open_archive(derived) as copy:
        assert {lv: len(copy.query(lv)) for lv in ("study", "series", "instance")} == (
            expected()["derived_counts"]
        )
        uids = sorted(row["SOPInstanceUID"] for row in copy.query("instance"))
        assert uids == sorted(archived_sources())
        for uid in uids:
            assert np.array_equal(copy.frames(uid), archive.frames(uid)), uid
            rebuilt = pydicom.dcmread(BytesIO(copy.export_bytes(uid)))
            assert rebuilt.SOPInstanceUID == uid
        assert copy.verify(workers=0).ok


#: Header attributes the scanner records since issue 15 (the old code did not).
NEWER_KEYS = ("ImageType", "ConvolutionKernel", "Manufacturer", "ManufacturerModelName")


def test_rebuild_index_gives_old_rows_the_attributes_recorded_since(old: Path) -> None:
    """Rows without ImageType, ConvolutionKernel, Manufacturer or ManufacturerModelName
    load, and a query on one matches none of them (only universal matching takes an
    absent value); `pacs-engine rebuild-index` fills them from the header blobs (deflated,
    big endian, encapsulated and native files among them), each equal to pydicom's value
    of the source file the current version came from, and then the queries match."""
    from test_scan_differential import expected as pydicom_value

    by_sha256 = {sha256(p.read_bytes()): p for p in sources().values()}
    with open_archive(old) as archive:
        rows = archive.query("instance")
        assert rows and all(row[k] is None for row in rows for k in NEWER_KEYS)
        assert archive.query("instance", ImageType="*") == rows  # universal matching
        assert archive.query("instance", ImageType="ORIGINAL*") == []
        assert archive.query("series", Manufacturer="*") != []
        assert archive.query("series", Manufacturer="?*") == []
    result = run_cli("rebuild-index", str(old))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rows written by older code got attributes from their headers" in result.stdout
    joined: dict[str, str] = {}
    with open_archive(old) as archive:
        rows = archive.query("instance")
        filled = Counter()
        for row in rows:
            ds = pydicom.dcmread(by_sha256[row["source_sha256"]], stop_before_pixels=True)
            for keyword in NEWER_KEYS:
                want = pydicom_value(ds[keyword].value) if keyword in ds else None
                assert row[keyword] == want, (row["SOPInstanceUID"], keyword)
                filled[keyword] += want is not None
            if "ImageType" in ds:
                joined[row["SOPInstanceUID"]] = "\\".join(ds.ImageType)
        assert filled["ImageType"] >= 5 and filled["Manufacturer"] >= 5, filled
        for pattern in ("ORIGINAL\\PRIMARY*", "ORIGINAL\\PRIMARY\\AXIAL", "DERIVED\\*"):
            found = {r["SOPInstanceUID"] for r in archive.query("instance", ImageType=pattern)}
            assert found == {uid for uid, v in joined.items() if fnmatch.fnmatchcase(v, pattern)}
        primary = {r["SOPInstanceUID"] for r in archive.query("instance", ImageType="PRIMARY")}
        assert primary == {uid for uid, v in joined.items() if "PRIMARY" in v.split("\\")}
        assert archive.query("instance", ImageType="ORIGINAL\\PRIMARY*")
        assert archive.query("series", Manufacturer="?*")


def test_the_current_code_files_the_old_sources_in_arrays_named_alike(
    old: Path, tmp_path: Path
) -> None:
    """Array names are part of the format: an old archive's series take new instances into
    their arrays only while the current code names them as the old code did (layout,
    dtype, storage: native, or the bitstream's codec and a digest of its configuration)."""

    def arrays(path: Path) -> dict[str, set[str]]:
        """Per SOP Instance UID, the names (without their series folder) of the arrays its
        versions' frames are in."""
        found: dict[str, set[str]] = defaultdict(set)
        with open_archive(path) as archive:
            for row in archive.index:
                for version in version_rows(row):
                    if version.get("pixels"):
                        name = version["pixels"]["array"].rsplit("/", 1)[1]
                        found[version["SOPInstanceUID"]].add(name)
        return dict(found)

    before = arrays(old)
    assert any("native" in n for names in before.values() for n in names)
    assert any("native" not in n for names in before.values() for n in names)
    with Archive.create(tmp_path / "new") as archive:
        sent = [path for name, path in sources().items() if name != QUARANTINED]
        assert archive.ingest(sent, workers=0).balanced
    assert arrays(tmp_path / "new") == before
