"""QIDO-RS over real HTTP: dicomweb-client against an archive of corpus files.

Expectations come from pydicom reading the same files and matching by hand, and
from Orthanc with its DICOMweb plugin loaded with the same files (the same
queries must return the same UIDs). Bad queries get a 400 saying what is wrong,
and every search, good or bad, is audited without a patient's name or ID.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase as fnmatch
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from conftest import benchmark_module, require_corpus
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from requests.exceptions import HTTPError
from web_helpers import serving_app

from pacs_engine import Archive
from pacs_engine.serve.audit import AuditLog, read_records, verify_chain
from pacs_engine.serve.config import ServeConfig
from pacs_engine.serve.context import ServeContext
from pacs_engine.serve.web import qido, wado
from pacs_engine.serve.web.app import make_app
from pacs_engine.serve.web.request import Principal

FOLDERS = ("dcm_qa_ct", "dcm_qa_philips", "dcm_qa_enh", "pydicom")
TOKEN = "qido-test-token"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def authenticate(request: Any) -> Principal | None:
    """The one stand-in for the real authenticator (tests/test_web_auth.py tests that)."""
    if request.headers.get("authorization") == f"Bearer {TOKEN}":
        return Principal("tester", frozenset({"reader"}))
    return None


@dataclass
class Served:
    """The archive served over HTTP, and what pydicom reads in the files it holds."""

    base: str
    root: Path
    files: dict[str, Path]  # SOPInstanceUID -> file
    datasets: dict[str, Dataset]  # SOPInstanceUID -> its header, as pydicom reads it

    def client(self) -> DICOMwebClient:
        return DICOMwebClient(url=self.base, headers={"Authorization": f"Bearer {TOKEN}"})

    def get(self, path: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        return httpx.get(self.base + path, headers=headers, timeout=60)


def corpus_instances(corpus: Path) -> dict[str, Path]:
    """Files of FOLDERS with a SOP Instance UID no other file of them has, by that UID."""
    by_uid: dict[str, list[Path]] = defaultdict(list)
    for folder in FOLDERS:
        for path in sorted(p for p in (corpus / folder).rglob("*") if p.is_file()):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            except (InvalidDicomError, AttributeError):  # not DICOM, or no UIDs: nothing to find
                continue
            if all(isinstance(u, str) and u for u in uids):
                by_uid[ds.SOPInstanceUID].append(path)
    return {uid: paths[0] for uid, paths in by_uid.items() if len(paths) == 1}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    corpus = require_corpus()
    root = tmp_path_factory.mktemp("qido")
    chosen = corpus_instances(corpus)
    source = root / "src"
    source.mkdir()
    for n, path in enumerate(chosen.values()):
        shutil.copyfile(path, source / f"{n:04d}.dcm")
    archive = Archive.create(root / "archive")
    archive.ingest([source], workers=0)
    held = {r["SOPInstanceUID"] for r in archive.query("instance")}
    assert len(held) > 0.8 * len(chosen)  # a few corpus files are refused: not searched for
    files = {uid: chosen[uid] for uid in held}
    datasets = {uid: pydicom.dcmread(f, stop_before_pixels=True) for uid, f in files.items()}
    audit = AuditLog(archive.path, sync_seconds=0.0)
    context = ServeContext(archive, ServeConfig(), audit)
    app = make_app(context, authenticate, routes=qido.routes())
    try:
        with serving_app(app) as base:
            yield Served(base, archive.path, files, datasets)
    finally:
        audit.close()
        archive.close()


# --- expectations by hand, from pydicom ---------------------------------------------------


def _wildcard(pattern: str, value: str, fold: bool) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE | re.DOTALL if fold else re.DOTALL) is not None


def matches(ds: Dataset, keyword: str, wanted: str) -> bool:
    """PS3.4 C.2.2.2 matching of one instance's attribute, by hand."""
    if keyword == "ModalitiesInStudy":  # a study holds the modality when an instance does
        keyword = "Modality"
    value = ds.get(keyword)
    if value is None:
        return False
    vr = ds[keyword].VR
    if value == "":  # no range takes an empty value (PS3.18's emptyvaluematching would)
        return False
    if vr == "DA" and "-" in wanted:  # lexical
        low, high = wanted.split("-")
        return (not low or str(value) >= low) and (not high or str(value)[:8] <= high)
    values = [str(v) for v in value] if ds[keyword].VM > 1 else [str(value)]
    if vr == "UI":
        return any(v in wanted.split(",") for v in values)
    if vr == "IS":
        return any(int(v) == int(wanted) for v in values)
    return any(_wildcard(wanted, v.strip(), fold=vr == "PN") for v in values)


def expected(served: Served, level: str, filters: dict[str, str]) -> set[str]:
    """The UIDs (of `level`) that a search with `filters` should find."""
    unique = {"studies": "StudyInstanceUID", "series": "SeriesInstanceUID"}
    key = unique.get(level, "SOPInstanceUID")
    return {
        str(ds[key].value)
        for ds in served.datasets.values()
        if all(matches(ds, k, v) for k, v in filters.items())
    }


def uids(results: list[dict[str, Any]], level: str) -> set[str]:
    tag = {"studies": "0020000D", "series": "0020000E"}.get(level, "00080018")
    return {r[tag]["Value"][0] for r in results}


def search(client: DICOMwebClient, level: str, filters: dict[str, str], **kw: Any) -> list:
    fn = {
        "studies": client.search_for_studies,
        "series": client.search_for_series,
        "instances": client.search_for_instances,
    }[level]
    return fn(search_filters=filters, **kw)


def queries(served: Served) -> list[tuple[str, dict[str, str]]]:
    """Searches whose answers the corpus makes worth checking (several UIDs, not all)."""
    studies = sorted({str(ds.StudyInstanceUID) for ds in served.datasets.values()})
    return [
        ("studies", {}),
        ("studies", {"StudyDate": "20150101-20151231"}),
        ("studies", {"StudyDate": "-20141231"}),
        ("studies", {"ModalitiesInStudy": "MR"}),
        ("studies", {"PatientName": "pha*"}),
        ("studies", {"PatientID": "PLASTIC"}),
        ("studies", {"StudyInstanceUID": ",".join(studies[:3])}),
        ("series", {}),
        ("series", {"Modality": "CT"}),
        ("series", {"Modality": "MR", "StudyDate": "20180101-20181231"}),
        ("instances", {"SOPClassUID": CT_IMAGE_STORAGE}),
        ("instances", {"InstanceNumber": "1"}),
    ]


# --- the tests ----------------------------------------------------------------------------


def test_searches_find_what_pydicom_matching_by_hand_finds(served: Served) -> None:
    client = served.client()
    for level, filters in queries(served):
        want = expected(served, level, filters)
        got = uids(search(client, level, filters), level)
        assert got == want, (level, filters)
    assert len(expected(served, "studies", {})) >= 5


def test_scoped_searches_and_study_counts_agree_with_the_files(served: Served) -> None:
    client = served.client()
    by_study: dict[str, list[Dataset]] = defaultdict(list)
    for ds in served.datasets.values():
        by_study[str(ds.StudyInstanceUID)].append(ds)
    answers = {uids([r], "studies").pop(): r for r in client.search_for_studies()}
    assert set(answers) == set(by_study)
    for study, members in by_study.items():
        answer = answers[study]
        series = {str(ds.SeriesInstanceUID) for ds in members}
        assert answer["00201206"]["Value"] == [len(series)]  # NumberOfStudyRelatedSeries
        assert answer["00201208"]["Value"] == [len(members)]  # NumberOfStudyRelatedInstances
        name = members[0].get("PatientName")
        if name:  # PN in DICOM JSON: its component groups, by name
            groups = zip(
                ("Alphabetic", "Ideographic", "Phonetic"), str(name).split("="), strict=False
            )
            value = {group: text for group, text in groups if text}
            assert answer["00100010"] == {"vr": "PN", "Value": [value]}
        # (dicomweb-client sends a Host header without the port; the URL follows the Host.)
        assert answer["00081190"]["Value"] == [f"http://127.0.0.1/studies/{study}"]
        found = client.search_for_series(study_instance_uid=study)
        assert uids(found, "series") == series
        for one in list(series)[:3]:
            instances = client.search_for_instances(
                study_instance_uid=study, series_instance_uid=one
            )
            want = {str(ds.SOPInstanceUID) for ds in members if ds.SeriesInstanceUID == one}
            assert uids(instances, "instances") == want
            retrieve = instances[0]["00081190"]["Value"][0]
            assert retrieve.startswith(f"http://127.0.0.1/studies/{study}/series/{one}/instances/")
        in_study = client.search_for_instances(study_instance_uid=study)
        assert uids(in_study, "instances") == {str(ds.SOPInstanceUID) for ds in members}


def test_includefield_limit_and_offset(served: Served) -> None:
    client = served.client()
    everything = client.search_for_instances()
    assert len(everything) == len(served.datasets)
    pages = [client.search_for_instances(limit=7, offset=n) for n in range(0, len(everything), 7)]
    assert [uids(page, "instances") for page in pages] == [
        uids(everything[n : n + 7], "instances") for n in range(0, len(everything), 7)
    ]
    assert all(len(page) == 7 for page in pages[:-1])
    # Default instance attributes, then one asked for by keyword and one by tag, then all.
    first = client.search_for_instances(limit=1)[0]
    assert "00280010" in first and "00180050" not in first  # Rows, not SliceThickness
    more = client.search_for_instances(limit=1, fields=["SliceThickness", "00200032"])[0]
    assert "00180050" in more and "00200032" in more
    every = served.get("/instances?limit=1&includefield=all").json()[0]
    assert {"00280100", "00281050", "00200037", "00080060", "00100010"} <= set(every)
    assert "00020010" not in every  # file meta is not an attribute of the match
    sop = str(every["00080018"]["Value"][0])
    study, series = every["0020000D"]["Value"][0], every["0020000E"]["Value"][0]
    url = f"{served.base}/studies/{study}/series/{series}/instances/{sop}"
    assert every["00081190"] == {"vr": "UR", "Value": [url]}
    ds = served.datasets[sop]
    assert every["00280010"]["Value"] == [ds.Rows]
    assert every["00080060"]["Value"] == [ds.Modality]


def test_nothing_found_is_204_and_warnings_say_what_was_not_done(served: Served) -> None:
    response = served.get("/studies?StudyDate=19000101")
    assert response.status_code == 204 and response.content == b""
    fuzzy = served.get("/studies?PatientName=ph*&fuzzymatching=true")
    assert fuzzy.status_code == 200
    assert "fuzzymatching parameter is not supported" in fuzzy.headers["warning"]
    huge = served.get("/instances?limit=1000000000")
    assert huge.status_code == 200
    assert f"the limit is {qido.MAX_LIMIT}" in huge.headers["warning"]
    unmatched = served.get("/studies?PatientComments=x")  # not held: matched universally
    assert unmatched.status_code == 200
    assert "not used for matching: PatientComments" in unmatched.headers["warning"]
    some = served.get("/instances?limit=2")
    assert "additional results" in some.headers["warning"]
    assert some.headers["content-type"] == "application/dicom+json"


def test_the_search_parameters_of_ps3_18_are_taken(served: Served) -> None:
    """emptyvaluematching, multiplevaluematching, accept and charset (PS3.18 8.3.3.1,
    8.3.4) are parameters, not attributes (they were 400, "not a DICOM attribute")."""
    plain = served.get("/studies?ModalitiesInStudy=CT")
    assert plain.status_code == 200 and "warning" not in plain.headers
    empty = served.get("/studies?ModalitiesInStudy=CT&emptyvaluematching=true")
    assert empty.status_code == 200 and empty.json() == plain.json()
    assert "emptyvaluematching parameter is not supported" in empty.headers["warning"]
    for query in ("emptyvaluematching=false", "multiplevaluematching=true",
                  "accept=application/dicom%2Bjson", "accept=application/dicom+json",
                  "charset=utf-8", "charset=UTF8;q=0.9"):  # fmt: skip
        same = served.get(f"/studies?ModalitiesInStudy=CT&{query}")
        assert same.status_code == 200 and same.json() == plain.json(), query
        assert "warning" not in same.headers, query
    both = served.get("/studies?ModalitiesInStudy=CT%5CMR")
    assert len(both.json()) > len(plain.json())
    single = served.get("/studies?ModalitiesInStudy=CT%5CMR&multiplevaluematching=false")
    assert single.status_code == 400 and "multiplevaluematching=false" in single.text
    assert served.get("/studies?accept=application/dicom%2Bxml").status_code == 406
    assert served.get("/studies?charset=iso-8859-1").status_code == 406
    assert served.get("/studies?emptyvaluematching=yes").status_code == 400


def test_bad_queries_are_400_with_the_reason_and_audited(served: Served) -> None:
    bad = {
        "/studies?StudyDate=2015-02-06": "StudyDate: '2015-02-06' is not a date YYYYMMDD",
        "/studies?StudyDate=20151301x": "StudyDate",
        "/studies?NotAnAttribute=1": "'NotAnAttribute' is not a DICOM attribute",
        "/studies?includefield=Nonsense": "'Nonsense' is not a DICOM attribute",
        "/studies?00091001=x": "'00091001' is not a DICOM attribute",
        "/studies?limit=ten": "limit: a non-negative integer",
        "/studies?limit=-1": "limit: a non-negative integer",
        "/studies?offset=1&offset=2": "offset: a non-negative integer, once",
        "/studies?SOPInstanceUID=1.2.3": "SOPInstanceUID is below the STUDY level",
        "/studies?StudyInstanceUID=1.2.*": "StudyInstanceUID: not a UID",
        "/studies?InstanceNumber=seven&PatientID=x": "InstanceNumber",
        "/studies?PatientID=a&PatientID=b": "PatientID: given more than once",
        "/studies/1.2.3;DROP/series": "StudyInstanceUID: not a UID",
        "/studies/" + "1." * 100 + "1/series": "StudyInstanceUID: not a UID",
        "/studies/.1.2/series": "StudyInstanceUID: not a UID",
        "/studies/1.2.3/series/%2E%2E/instances": "SeriesInstanceUID: not a UID",
        "/studies/1.2.3/series?StudyInstanceUID=1.2.4": "already given in the path",
        "/studies?ReferencedStudySequence.StudyInstanceUID=1": "sequence attribute paths",
    }
    before = len(list(read_records(served.root)))
    for path, reason in bad.items():
        response = served.get(path)
        assert response.status_code == 400, path
        assert reason in response.text, (path, response.text)
    records = list(read_records(served.root))[before:]
    assert [r["outcome"] for r in records] == ["bad request"] * len(bad)
    assert all("PLASTIC" not in str(r) and r["detail"] != "x" for r in records)
    xml = httpx.get(
        served.base + "/studies",
        headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/dicom+xml"},
        timeout=60,
    )
    assert xml.status_code == 406 and "application/dicom+json" in xml.text
    assert list(read_records(served.root))[-1]["outcome"] == "not acceptable"
    for accept in ("application/json", "application/dicom+json; q=0.9, */*; q=0.1", "*/*"):
        headers = {"Authorization": f"Bearer {TOKEN}", "Accept": accept}
        assert httpx.get(served.base + "/studies", headers=headers, timeout=60).status_code == 200
    # A path character that splits the path never reaches a search.
    assert served.get("/studies/1.2.3%2F..%2F/series").status_code in (400, 404)
    with pytest.raises(HTTPError):
        served.client().search_for_studies(search_filters={"StudyDate": "yesterday"})


def test_every_search_is_audited_with_its_studies_and_no_patient_data(served: Served) -> None:
    before = len(list(read_records(served.root)))
    answer = served.get("/studies?PatientID=PLASTIC")
    assert answer.status_code == 200
    record = list(read_records(served.root))[before]
    assert (record["actor"], record["action"], record["outcome"]) == (
        "tester",
        "qido studies",
        "success",
    )
    assert set(record["study"]) == uids(answer.json(), "studies")
    assert "PLASTIC" not in str(record) and "PatientID" in record["detail"]
    assert httpx.get(served.base + "/studies", timeout=30).status_code == 401
    assert verify_chain(served.root) == []


def test_a_search_that_fails_is_a_500_naming_no_patient_and_audited(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*args: object, **kwargs: object) -> None:
        raise OSError("cannot read the index near PLASTIC^PATIENT")

    monkeypatch.setattr(qido, "find", failing)
    before = len(list(read_records(served.root)))
    answer = served.get("/studies?PatientID=PLASTIC")
    assert answer.status_code == 500 and "cannot search the archive" in answer.text
    assert "PLASTIC" not in answer.text
    (record,) = list(read_records(served.root))[before:]
    assert (record["action"], record["outcome"], record["detail"]) == (
        "qido studies",
        "failed",
        "OSError",
    )


@pytest.mark.skipif(not DICOMWEB_PLUGIN.is_file(), reason="orthanc-dicomweb is not installed")
def test_the_same_queries_find_the_same_uids_as_orthanc(served: Served) -> None:
    running_orthanc = benchmark_module("orthanc").running_orthanc
    extra = {"Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    with running_orthanc(extra=extra) as orthanc:
        stored = set()
        with httpx.Client(base_url=f"http://127.0.0.1:{orthanc.http_port}", timeout=60) as rest:
            for uid, path in served.files.items():
                if rest.post("/instances", content=path.read_bytes()).status_code == 200:
                    stored.add(uid)
        assert len(stored) > 0.9 * len(served.files)
        both = {str(served.datasets[uid].StudyInstanceUID) for uid in stored}
        for level, filters in queries(served):
            # Raw query strings: Orthanc does not decode a percent-encoded "*".
            query = "&".join(f"{k}={v}" for k, v in filters.items())
            mine = uids(served.get(f"/{level}?{query}").json(), level)
            url = f"http://127.0.0.1:{orthanc.http_port}/dicom-web/{level}?{query}"
            other = uids(httpx.get(url, timeout=60).json(), level)
            if level == "studies":
                mine &= both
            elif level == "series":
                mine &= {str(served.datasets[u].SeriesInstanceUID) for u in stored}
            else:
                mine &= stored
            # Orthanc compares dates as text: its "-B" takes studies without a date, which
            # match no range here (no emptyvaluematching asked): the one difference.
            undated = {
                str(served.datasets[u].StudyInstanceUID)
                for u in stored
                if not served.datasets[u].get("StudyDate")
            }
            open_low = filters.get("StudyDate", "").startswith("-")
            assert mine == (other - undated if open_low else other), (level, filters)
            assert not open_low or other & undated, "the difference is not shown"


def _joined(value: Any) -> str:
    """A value as text, several values joined by backslashes ("" when absent)."""
    if value is None:
        return ""
    return "\\".join(str(v) for v in value) if isinstance(value, MultiValue) else str(value)


def test_image_type_kernel_and_manufacturer_searches_match_the_files(served: Served) -> None:
    """Instance searches on ImageType (several values: one pattern for the whole value; one
    value: any of the file's), ConvolutionKernel and Manufacturer find what pydicom's values
    of the corpus files say, and return those attributes when asked."""
    datasets = list(served.datasets.values())
    joined = {
        str(ds.SOPInstanceUID): "\\".join(ds.ImageType) for ds in datasets if "ImageType" in ds
    }
    kernel_of = {str(ds.SOPInstanceUID): _joined(ds.get("ConvolutionKernel")) for ds in datasets}
    kernels = Counter(k for k in kernel_of.values() if k)
    makers = Counter(str(ds.Manufacturer) for ds in datasets if ds.get("Manufacturer"))
    kernel, maker = kernels.most_common(1)[0][0], makers.most_common(1)[0][0]
    client = served.client()
    searches = {
        "ORIGINAL\\PRIMARY*": {u for u, v in joined.items() if fnmatch(v, "ORIGINAL\\PRIMARY*")},
        "*\\LOCALIZER": {u for u, v in joined.items() if fnmatch(v, "*\\LOCALIZER")},
        "SECONDARY": {u for u, v in joined.items() if "SECONDARY" in v.split("\\")},
    }
    for pattern, want in searches.items():
        found = search(client, "instances", {"ImageType": pattern}, fields=["ImageType"])
        assert uids(found, "instances") == want, pattern
        for r in found:
            assert "\\".join(r["00080008"]["Value"]) == joined[r["00080018"]["Value"][0]]
    assert 0 < len(searches["ORIGINAL\\PRIMARY*"]) < len(datasets)
    assert searches["SECONDARY"]
    found = search(client, "instances", {"ConvolutionKernel": kernel, "Manufacturer": f"{maker}*"})
    want = {
        str(ds.SOPInstanceUID)
        for ds in datasets
        if kernel_of[str(ds.SOPInstanceUID)] == kernel and str(ds.get("Manufacturer")) == maker
    }
    assert uids(found, "instances") == want and want


def test_a_study_of_a_legacy_archive_with_uids_not_of_dicom_form_is_found_and_retrieved(
    tmp_path: Path,
) -> None:
    """The archive keeps UIDs that are not DICOM's form (hexadecimal, letters: legacy
    archives hold them): QIDO-RS finds such a study by its UID, and the RetrieveURL it
    answers serves it (both were 400, "not a UID")."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID = "05fa52f0e1d24c5b9d1f0a7e3c2b1a09"
    ds.SeriesInstanceUID = "SER_legacy-7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "img.0001.A"
    source = tmp_path / "src"
    source.mkdir()
    ds.save_as(source / "a.dcm", enforce_file_format=True)
    archive = Archive.create(tmp_path / "archive")
    assert archive.ingest([source], workers=0).archived == 1
    audit = AuditLog(archive.path, sync_seconds=0.0)
    context = ServeContext(archive, ServeConfig(), audit)
    app = make_app(context, authenticate, routes=qido.routes() + wado.routes())
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with serving_app(app) as base:
            found = httpx.get(
                f"{base}/studies?StudyInstanceUID={ds.StudyInstanceUID}", headers=headers
            )
            assert found.status_code == 200, found.text
            (study,) = found.json()
            url = study["00081190"]["Value"][0]
            series = httpx.get(f"{url}/series/{ds.SeriesInstanceUID}/instances", headers=headers)
            assert series.status_code == 200, series.text
            got = httpx.get(
                f"{url}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
                headers={**headers, "Accept": 'multipart/related; type="application/dicom"'},
            )
            assert got.status_code == 200, got.text
            assert (source / "a.dcm").read_bytes() in got.content  # the original, whole
    finally:
        audit.close()
        archive.close()
