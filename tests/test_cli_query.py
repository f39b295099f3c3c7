"""`pacs-engine query`, `export` by study/series/patient/query and `info` counts, on real files.

The archive is ingested through the CLI from corpus folders and pydicom's test files;
what the commands print is compared with what pydicom reads from the source files
(those the archive did not quarantine).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from conftest import require_corpus, run_cli

from pacs_engine.archive import open_archive
from pacs_engine.index.query import RECORD_KEYS, QueryError

_FOLDERS = ("dcm_qa_nih", "dcm_qa_philips", "dcm_qa_enh", "pydicom-data")


@dataclass
class Source:
    """What pydicom reads from the archived source files."""

    archive: Path
    files: dict[str, list[Path]] = field(default_factory=lambda: defaultdict(list))  # by SOP
    datasets: dict[str, pydicom.Dataset] = field(default_factory=dict)  # by SOP, one file's

    def uids(self, keyword: str) -> set[str]:
        return {str(ds.get(keyword)) for ds in self.datasets.values()}

    def sops_where(self, keyword: str, value: str) -> set[str]:
        return {sop for sop, ds in self.datasets.items() if str(ds.get(keyword, "")) == value}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    corpus = require_corpus()
    archive = tmp_path_factory.mktemp("query") / "archive"
    inputs = [str(corpus / folder) for folder in _FOLDERS]
    result = run_cli("ingest", *inputs, "--archive", str(archive), "--workers", "0", "--json")
    assert result.returncode == 0, result.stderr
    quarantined = {
        json.loads(p.read_bytes())["path"] for p in (archive / "quarantine").glob("*.json")
    }
    assert quarantined  # the inputs hold files it refuses: the reference must leave them out
    found = Source(archive)
    for folder in _FOLDERS:
        for path in sorted((corpus / folder).rglob("*")):
            if not path.is_file() or str(path) in quarantined:
                continue
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            except pydicom.errors.InvalidDicomError:
                continue
            if "SOPInstanceUID" not in ds:  # not DICOM after all (force=True reads anything)
                continue
            sop = str(ds.SOPInstanceUID)
            found.files[sop].append(path)
            found.datasets[sop] = ds
    assert len(found.datasets) > 150
    return found


def _query(archive: Path, *args: str) -> list[dict]:
    result = run_cli("query", str(archive), *args, "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _fails(result: subprocess.CompletedProcess, *words: str) -> str:
    """The one-line error of a command that failed with status 2, checked for `words`."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    for word in words:
        assert word in result.stderr, result.stderr
    return result.stderr


def test_each_level_lists_what_pydicom_reads(source: Source) -> None:
    archive = source.archive
    instances = _query(archive, "--level", "instance", "--fields", "SOPInstanceUID")
    assert {r["SOPInstanceUID"] for r in instances} == set(source.datasets)
    assert len(instances) == len(source.datasets)
    series = _query(archive, "--level", "series", "--fields", "SeriesInstanceUID")
    assert {r["SeriesInstanceUID"] for r in series} == source.uids("SeriesInstanceUID")
    fields = "StudyInstanceUID,NumberOfStudyRelatedInstances,NumberOfStudyRelatedSeries"
    studies = _query(archive, "--level", "study", "--fields", fields)
    assert {r["StudyInstanceUID"] for r in studies} == source.uids("StudyInstanceUID")
    for study in studies:
        sops = source.sops_where("StudyInstanceUID", study["StudyInstanceUID"])
        assert study["NumberOfStudyRelatedInstances"] == len(sops)
        in_series = {str(source.datasets[s].SeriesInstanceUID) for s in sops}
        assert study["NumberOfStudyRelatedSeries"] == len(in_series)
    fields = "PatientID,IssuerOfPatientID,NumberOfPatientRelatedInstances"
    patients = _query(archive, "--level", "patient", "--fields", fields)
    by_patient: dict[tuple, set[str]] = defaultdict(set)
    for sop, ds in source.datasets.items():
        # A study without a Patient ID is a patient of its own (whose, nothing says).
        pid = ds.get("PatientID")
        key = (pid, ds.get("IssuerOfPatientID")) if pid else ("", str(ds.StudyInstanceUID))
        by_patient[key].add(sop)
    expected = sorted((key[0] or "", len(sops)) for key, sops in by_patient.items())
    got = [(p["PatientID"] or "", p["NumberOfPatientRelatedInstances"]) for p in patients]
    assert sorted(got) == expected


def test_matching_keys_against_pydicom(source: Source) -> None:
    archive = source.archive
    dates = sorted({str(ds.StudyDate) for ds in source.datasets.values() if ds.get("StudyDate")})
    lo, hi = dates[len(dates) // 4], dates[3 * len(dates) // 4]
    found = _query(archive, f"StudyDate={lo}-{hi}", "--fields", "StudyInstanceUID")
    expected = {
        str(ds.StudyInstanceUID)
        for ds in source.datasets.values()
        if lo <= str(ds.get("StudyDate", "")) <= hi and ds.get("StudyDate")
    }
    assert {r["StudyInstanceUID"] for r in found} == expected and len(expected) > 0
    mr = _query(archive, "--level", "instance", "Modality=MR", "--fields", "SOPInstanceUID")
    assert {r["SOPInstanceUID"] for r in mr} == source.sops_where("Modality", "MR")
    name = next(str(ds.PatientName) for ds in source.datasets.values() if ds.get("PatientName"))
    pattern = name[:3].lower() + "*"  # person names match case-insensitively
    named = _query(archive, "--level", "instance", f"PatientName={pattern}")
    wanted = {
        sop
        for sop, ds in source.datasets.items()
        if str(ds.get("PatientName", "")).upper().startswith(name[:3].upper())
    }
    assert len(named) == len(wanted) > 0
    two = sorted(source.uids("SeriesInstanceUID"))[:2]
    listed = _query(archive, "--level", "series", "SeriesInstanceUID=" + "\\".join(two))
    assert sorted(r["SeriesInstanceUID"] for r in listed) == two
    either = _query(archive, "--level", "series", *(f"SeriesInstanceUID={u}" for u in two))
    assert sorted(r["SeriesInstanceUID"] for r in either) == two


def test_image_type_kernel_and_manufacturer_from_the_command_line(source: Source) -> None:
    """`query --level instance 'ImageType=ORIGINAL\\PRIMARY*'` finds the instances whose
    joined ImageType that pattern takes, `ImageType=LOCALIZER` those holding that value
    among others; series queries on Manufacturer; the values print as lists or text."""
    joined = {
        sop: "\\".join(ds.ImageType) for sop, ds in source.datasets.items() if "ImageType" in ds
    }
    fields = ("--fields", "SOPInstanceUID,ImageType,ConvolutionKernel")
    found = _query(source.archive, "--level", "instance", "ImageType=ORIGINAL\\PRIMARY*", *fields)
    assert {r["SOPInstanceUID"] for r in found} == {
        sop for sop, v in joined.items() if v.startswith("ORIGINAL\\PRIMARY")
    }
    for record in found:
        ds = source.datasets[record["SOPInstanceUID"]]
        assert record["ImageType"] == list(ds.ImageType)
        kernel = ds.get("ConvolutionKernel")
        assert record["ConvolutionKernel"] == (list(kernel) if isinstance(kernel, list) else kernel)
    one = _query(
        source.archive, "--level", "instance", "ImageType=MPR", "--fields", "SOPInstanceUID"
    )
    assert one and {r["SOPInstanceUID"] for r in one} == {
        sop for sop, v in joined.items() if "MPR" in v.split("\\")
    }
    assert 0 < len(found) < len(joined)
    maker = Counter(str(ds.get("Manufacturer")) for ds in source.datasets.values()).most_common(1)
    series = _query(source.archive, "--level", "series", f"Manufacturer={maker[0][0]}")
    assert {r["SeriesInstanceUID"] for r in series} == {
        str(ds.SeriesInstanceUID)
        for ds in source.datasets.values()
        if str(ds.get("Manufacturer")) == maker[0][0]
    }


def test_table_csv_and_limit(source: Source) -> None:
    archive = str(source.archive)
    studies = len(source.uids("StudyInstanceUID"))
    table = run_cli("query", archive)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "PatientID",
        "StudyDate",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "StudyDescription",
        "StudyInstanceUID",
    ]
    assert lines[-1] == f"{studies} records" and len(lines) == studies + 2
    fields = "StudyInstanceUID,ModalitiesInStudy,StudyDate"
    as_csv = run_cli("query", archive, "--csv", "--fields", fields)
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    as_json = _query(source.archive, "--fields", fields)
    assert [r["StudyInstanceUID"] for r in rows] == [r["StudyInstanceUID"] for r in as_json]
    assert [r["ModalitiesInStudy"] for r in rows] == [
        "\\".join(r["ModalitiesInStudy"]) for r in as_json
    ]
    limited = run_cli("query", archive, "--json", "--limit", "2")
    assert len(limited.stdout.splitlines()) == 2
    assert "2 shown, more match" in limited.stderr
    assert [json.loads(line) for line in limited.stdout.splitlines()] == _query(source.archive)[:2]
    every = run_cli("query", archive, "--json", "--limit", str(studies))
    assert len(every.stdout.splitlines()) == studies and "shown" not in every.stderr


def test_wrong_queries_are_errors_that_say_what_is_valid(source: Source) -> None:
    archive = str(source.archive)
    _fails(run_cli("query", archive, "PatientId=X"), "PatientId", "did you mean PatientID")
    _fails(run_cli("query", archive, "--level", "instance", "Modalty=CT"), "Modality")
    _fails(run_cli("query", archive, "StudyDate=2000-01-01"), "20000101", "YYYYMMDD")
    _fails(run_cli("query", archive, "StudyDate=20001231-20000101"), "ends before")
    _fails(run_cli("query", archive, "StudyDate=2000-2001-2002"), "YYYYMMDD")
    _fails(run_cli("query", archive, "SOPClassUID=1.2"), "study level", "instance")
    _fails(run_cli("query", archive, "--level", "patient", "Modality=CT"), "series")
    _fails(run_cli("query", archive, "StudyInstanceUID=1.2*"), "no wildcards")
    _fails(run_cli("query", archive, "PatientID"), "KEY=VALUE")
    _fails(run_cli("query", archive, "--fields", "PatientID,Modalty"), "--fields", "Modality")


def test_the_api_is_strict_and_records_have_every_key(source: Source) -> None:
    with open_archive(source.archive) as archive:
        with pytest.raises(QueryError, match="did you mean PatientID"):
            archive.query("study", PatientId="X")
        with pytest.raises(QueryError, match="20000101"):
            archive.query("series", StudyDate="2000-01-01")
        # C-FIND's lenient path: an unparsable date is matched as given (nothing).
        assert archive.query("study", strict=False, StudyDate="2000-01-01") == []
        for level in ("patient", "study", "series", "instance"):
            records = archive.query(level)
            assert records and all(set(RECORD_KEYS[level]) <= set(r) for r in records)


def _exported(out: Path) -> dict[str, str]:
    """SOP Instance UID -> sha256 of each file under `out` (one file per SOP expected)."""
    found = {}
    for path in out.rglob("*.dcm"):
        sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert sop not in found
        found[sop] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _source_hashes(source: Source, sop: str) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in source.files[sop]}


def test_export_a_study_series_patient_or_query(source: Source, tmp_path: Path) -> None:
    archive = str(source.archive)
    study = max(
        source.uids("StudyInstanceUID"),
        key=lambda u: len(source.sops_where("StudyInstanceUID", u)),
    )
    out = tmp_path / "study"
    result = run_cli("export", archive, str(out), "--study", study, "--progress")
    assert result.returncode == 0, result.stderr
    got = _exported(out)
    assert set(got) == source.sops_where("StudyInstanceUID", study)
    assert all(sha in _source_hashes(source, sop) for sop, sha in got.items())
    assert "100%" in result.stderr  # the progress bar ran to the end

    series = sorted(source.uids("SeriesInstanceUID"))[:2]
    out = tmp_path / "series"
    args = [a for uid in series for a in ("--series", uid)]
    assert run_cli("export", archive, str(out), *args).returncode == 0
    expected = set().union(*(source.sops_where("SeriesInstanceUID", u) for u in series))
    assert set(_exported(out)) == expected

    patient = str(next(iter(source.datasets.values())).PatientID)
    out = tmp_path / "patient"
    assert run_cli("export", archive, str(out), "--patient", patient).returncode == 0
    assert set(_exported(out)) == source.sops_where("PatientID", patient)

    out = tmp_path / "query"
    assert run_cli("export", archive, str(out), "--query", "Modality=MR").returncode == 0
    assert set(_exported(out)) == source.sops_where("Modality", "MR")


def test_export_all_versions_of_a_study(source: Source, tmp_path: Path) -> None:
    """An instance that came as several files (other bytes, same pixels) exports them all."""
    sop = next(s for s, paths in source.files.items() if len(_source_hashes(source, s)) > 1)
    study = str(source.datasets[sop].StudyInstanceUID)
    out = tmp_path / "versions"
    result = run_cli("export", str(source.archive), str(out), "--study", study, "--all-versions")
    assert result.returncode == 0, result.stderr
    sops = source.sops_where("StudyInstanceUID", study)
    written = {hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*.dcm")}
    assert written == set().union(*(_source_hashes(source, s) for s in sops))


def test_export_of_what_is_not_there_is_one_line(source: Source, tmp_path: Path) -> None:
    archive = str(source.archive)
    study = sorted(source.uids("StudyInstanceUID"))[0]
    series = sorted(source.uids("SeriesInstanceUID"))[0]
    out = tmp_path / "out"
    _fails(run_cli("export", archive, str(out), "--uid", study), study, "--study")
    _fails(run_cli("export", archive, str(out), "--uid", series), "--series")
    _fails(run_cli("export", archive, str(out), "--uid", "1.2.3.4"), "not in the archive")
    _fails(run_cli("export", archive, str(out), "--study", "1.2.3.4"), "--study", "1.2.3.4")
    error = _fails(run_cli("export", archive, str(out), "--patient", "NOBODY-42"), "--patient")
    assert "NOBODY-42" not in error  # a Patient ID may identify someone
    # A selector names one study, series or patient exactly: never a query (an empty value
    # or a wildcard exported every patient's files).
    patient = str(next(iter(source.datasets.values())).PatientID)
    for option, value in [
        ("--patient", ""),
        ("--patient", "*"),
        ("--patient", patient[:-1] + "?"),
        ("--study", ""),
        ("--series", "*"),
    ]:
        _fails(run_cli("export", archive, str(out), option, value), option)
    _fails(run_cli("export", archive, str(out), "--query", "Modality=NONE"), "--query")
    _fails(run_cli("export", archive, str(out), "--query", "StudyDate=2000-01-01"), "20000101")
    assert not out.exists()  # nothing was written, not even the folder


def test_info_counts_and_disk_usage(source: Source) -> None:
    info = json.loads(run_cli("info", str(source.archive), "--json").stdout)
    assert info["instances"] == len(source.datasets)
    assert info["series"] == len(source.uids("SeriesInstanceUID"))
    assert info["studies"] == len(source.uids("StudyInstanceUID"))
    patients = {  # a study without a Patient ID: a patient of its own
        (ds.PatientID, ds.get("IssuerOfPatientID"))
        if ds.get("PatientID")
        else ("", str(ds.StudyInstanceUID))
        for ds in source.datasets.values()
    }
    assert info["patients"] == len(patients)
    disk = info["disk_bytes"]
    assert {"pixels", "headers", "index", "quarantine", "reports"} <= set(disk)
    assert "spool" not in disk and "audit" not in disk  # no server ran on this archive
    assert all(disk[part] > 0 for part in ("pixels", "headers", "index", "quarantine"))
    assert sum(v for k, v in disk.items() if k != "total") == disk["total"]
    du = subprocess.run(
        ["du", "-s", "--block-size=1", str(source.archive)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert disk["total"] == int(du.stdout.split()[0])  # du counts allocated blocks too
    text = run_cli("info", str(source.archive)).stdout
    assert f"{info['patients']:,} patients, {info['studies']:,} studies" in text
    assert text.splitlines()[1].startswith("on disk ") and "quarantine" in text.splitlines()[1]
