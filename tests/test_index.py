"""The index: round trips, atomic commits under SIGKILL and concurrent readers, C-FIND matching
checked against a brute-force filter, and use from forked and spawned processes."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import lmdb
import pydicom
import pytest
from conftest import corpus_files, pydicom_test_files, require_corpus
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from pacs_engine import HEADER_KEYWORDS, Archive, ScanError, scan
from pacs_engine.index import (
    LEVELS,
    SERIES_KEYWORDS,
    STUDY_KEYWORDS,
    DamagedIndexError,
    Index,
    _lmdb,
    level_of,
)
from pacs_engine.index.codec import RowCodec
from pacs_engine.index.core import uid_problem
from pacs_engine.index.integrity import check_trees
from pacs_engine.index.matching import SERIES_COMPUTED, STUDY_COMPUTED, compile_query, whole_value
from pacs_engine.index.query import value_problem
from pacs_engine.index.records import View

ROOT = "1.2.826.0.1.3680043.8.498"


def make_row(study: int, series: int, instance: int, **extra: Any) -> dict[str, Any]:
    """A row as the ingest would write it: scanner attributes plus archive fields."""
    sop = f"{ROOT}.{study}.{series}.{instance}"
    return {
        "SOPInstanceUID": sop,
        "SeriesInstanceUID": f"{ROOT}.{study}.{series}",
        "StudyInstanceUID": f"{ROOT}.{study}",
        "PatientID": f"P{study % 7}",
        "PatientName": "Müller^Jürgen" if study % 2 else "DOE^JOHN",
        "StudyDate": f"2020{study % 12 + 1:02d}15",
        "Modality": "CT",
        "SeriesNumber": series,
        "InstanceNumber": instance,
        "Rows": 512,
        "RescaleSlope": 1.0,
        "PixelSpacing": [0.5, 0.5],
        "WindowCenter": None,
        "source_path": f"/archive/{sop}.dcm",
        "source_sha256": hashlib.sha256(sop.encode()).hexdigest(),
        "file_size": 1000 + instance,
        "status": "archived",
        "pixels": {"array": f"series/{study}.{series}", "frames": [instance]},
        "header": {"blob": "headers/0.bin", "offset": 64 * instance, "length": 64},
        "frame_hashes": [hashlib.md5(sop.encode()).hexdigest()],
        **extra,
    }


@pytest.fixture
def index(tmp_path: Path) -> Any:
    with Index.create(tmp_path / "index") as ix:
        yield ix


# --- round trips --------------------------------------------------------------


def test_round_trip(index: Index) -> None:
    rows = [make_row(1, s, i) for s in (1, 2) for i in range(5)]
    index.commit(rows)
    assert len(index) == 10
    for row in rows:
        assert index.get(row["SOPInstanceUID"]) == row
        assert row["SOPInstanceUID"] in index
    assert index.get("1.2.3") is None
    assert "1.2.3" not in index
    assert index.series_record(f"{ROOT}.1.1") == {
        "SeriesInstanceUID": f"{ROOT}.1.1",
        "StudyInstanceUID": f"{ROOT}.1",
        "Modality": "CT",
        "SeriesNumber": 1,
        "NumberOfSeriesRelatedInstances": 5,
    }
    study = index.study_record(f"{ROOT}.1")
    assert study is not None
    assert study["PatientName"] == "Müller^Jürgen"
    assert study["ModalitiesInStudy"] == ["CT"]
    assert study["NumberOfStudyRelatedSeries"] == 2
    assert study["NumberOfStudyRelatedInstances"] == 10


def test_an_empty_uid_names_no_row(index: Index) -> None:
    """LMDB refuses an empty key: get("") raised lmdb.BadValsizeError."""
    assert index.get("") is None
    assert index.series("") == []


def test_series_order_and_study_order(index: Index) -> None:
    numbers = [3, -2, None, 10, 3, "7", 2**70]
    rows = [make_row(1, 1, i, InstanceNumber=n) for i, n in enumerate(numbers)]
    rows += [make_row(1, s, 0, SeriesNumber=n) for s, n in ((2, 5), (3, None), (4, 1))]
    index.commit(random.Random(0).sample(rows, len(rows)))
    # Integer InstanceNumbers first, ascending; ties and the rest by SOP Instance UID.
    got = [(r["InstanceNumber"], r["SOPInstanceUID"]) for r in index.series(f"{ROOT}.1.1")]
    ints = sorted((n, u) for n, u in got if isinstance(n, int) and abs(n) < 2**63)
    others = sorted(((n, u) for n, u in got if (n, u) not in ints), key=lambda p: p[1])
    assert got == ints + others
    series_order = [r["SeriesInstanceUID"] for r in index.study(f"{ROOT}.1")]
    assert series_order == [f"{ROOT}.1.{s}" for s in [1] * 7 + [4, 2, 3]]
    assert [s["SeriesInstanceUID"] for s in index.all_series()] == sorted(
        f"{ROOT}.1.{s}" for s in (1, 2, 3, 4)
    )


def test_iteration_crosses_chunks(index: Index) -> None:
    rows = [make_row(s % 3, s, i) for s in range(5) for i in range(500)]
    for start in range(0, len(rows), 700):
        index.commit(rows[start : start + 700])
    assert [r["SOPInstanceUID"] for r in index] == sorted(r["SOPInstanceUID"] for r in rows)


def test_replace_mark_move_and_remove(index: Index, tmp_path: Path) -> None:
    index.commit([make_row(1, 1, i) for i in range(4)] + [make_row(2, 1, 0)])
    marked = {**make_row(1, 1, 0), "status": "duplicate"}
    index.commit([marked])
    assert index.get(marked["SOPInstanceUID"]) == marked
    assert len(index) == 5
    # The same SOP instance now in another series of another study (a corrected file).
    moved = make_row(1, 1, 1, SeriesInstanceUID=f"{ROOT}.2.9", StudyInstanceUID=f"{ROOT}.2")
    index.commit([moved])
    assert [r["InstanceNumber"] for r in index.series(f"{ROOT}.1.1")] == [0, 2, 3]
    assert index.series(f"{ROOT}.2.9") == [moved]
    assert index.study_record(f"{ROOT}.1")["NumberOfStudyRelatedInstances"] == 3
    assert index.study_record(f"{ROOT}.2")["NumberOfStudyRelatedSeries"] == 2
    # A batch that removes some rows and replaces others.
    index.commit([make_row(2, 1, 0, status="quarantined")], remove=[moved["SOPInstanceUID"]])
    assert index.series_record(f"{ROOT}.2.9") is None
    assert index.study_record(f"{ROOT}.2")["NumberOfStudyRelatedSeries"] == 1
    assert [r["status"] for r in index.query(StudyInstanceUID=f"{ROOT}.2")] == ["quarantined"]
    everything = [r["SOPInstanceUID"] for r in index]
    index.commit([], remove=[*everything, "not.there"])
    assert len(index) == 0
    assert index.all_series() == []
    assert index.query(level="study") == []
    index.close()
    # No record, link or query-index entry outlives its rows.
    with lmdb.open(str(tmp_path / "index"), max_dbs=16, readonly=True) as env:
        for name in _lmdb.DB_NAMES[1:]:  # all but meta
            with env.begin(db=env.open_db(name, create=False)) as txn:
                assert txn.stat()["entries"] == 0, name


def test_last_committed_row_gives_record_attributes(index: Index) -> None:
    index.commit([make_row(1, 1, 0, Modality="MR", PatientID="A")])
    index.commit([make_row(1, 1, 1, Modality="CT", PatientID="B")])
    assert index.series_record(f"{ROOT}.1.1")["Modality"] == "CT"
    assert index.study_record(f"{ROOT}.1")["ModalitiesInStudy"] == ["CT"]
    assert [s["StudyInstanceUID"] for s in index.query("study", PatientID="B")] == [f"{ROOT}.1"]
    assert index.query("study", PatientID="A") == []


def test_the_last_row_of_a_batch_gives_record_attributes_when_a_uid_repeats(index: Index) -> None:
    """A batch repeating a SOP Instance UID: its last row is both the row kept and the last
    row added (the records took the attributes of the batch's other row, B's)."""
    first = make_row(1, 1, 0, Modality="MR", PatientID="A")
    last = make_row(1, 1, 0, Modality="PT", PatientID="C")
    index.commit([first, make_row(1, 1, 1, Modality="CT", PatientID="B"), last])
    assert index.get(last["SOPInstanceUID"]) == last
    assert index.series_record(f"{ROOT}.1.1")["Modality"] == "PT"
    assert [s["StudyInstanceUID"] for s in index.query("study", PatientID="C")] == [f"{ROOT}.1"]
    assert index.query("study", PatientID="B") == []
    # A row the batch replaces gives no record anything: not its study's, had it another.
    index.commit([make_row(2, 1, 0, PatientID="E")])
    replaced = make_row(2, 1, 1, PatientID="Z")
    kept = make_row(2, 1, 1, PatientID="F", SeriesInstanceUID=f"{ROOT}.3.1")
    kept["StudyInstanceUID"] = f"{ROOT}.3"
    index.commit([replaced, kept])
    assert index.study_record(f"{ROOT}.2")["PatientID"] == "E"
    assert index.query("study", PatientID="Z") == []


def test_a_removal_leaves_records_with_the_attributes_of_the_rows_left(index: Index) -> None:
    """The row that gave the records their attributes is removed (a misfiled instance of
    another patient): the records take those of a row left (they kept the removed row's, so
    the study answered for the removed patient and not for its own)."""
    index.commit([make_row(1, 1, i, Modality="MR", PatientID="A") for i in range(2)])
    misfiled = make_row(1, 1, 2, Modality="CT", PatientID="B", StudyDescription="misfiled")
    index.commit([misfiled])
    assert index.study_record(f"{ROOT}.1")["PatientID"] == "B"
    index.commit([], remove=[misfiled["SOPInstanceUID"]])
    assert "StudyDescription" not in index.study_record(f"{ROOT}.1")  # the misfiled row's only
    assert index.series_record(f"{ROOT}.1.1")["Modality"] == "MR"
    assert index.study_record(f"{ROOT}.1")["ModalitiesInStudy"] == ["MR"]
    assert [s["StudyInstanceUID"] for s in index.query("study", PatientID="A")] == [f"{ROOT}.1"]
    assert index.query("study", PatientID="B") == []
    assert index.query("patient", PatientID="B") == []
    # A row moved to another series and study: the series and study it left likewise.
    index.commit([make_row(1, 2, 0, Modality="CT", PatientID="B")])
    index.commit([make_row(1, 2, 1, Modality="SR", PatientID="D")])
    moved = make_row(
        1, 2, 1, PatientID="D", SeriesInstanceUID=f"{ROOT}.2.9", StudyInstanceUID=f"{ROOT}.2"
    )
    index.commit([moved])
    assert index.series_record(f"{ROOT}.1.2")["Modality"] == "CT"
    assert index.study_record(f"{ROOT}.1")["PatientID"] == "A"  # its first series' first row
    assert [s["StudyInstanceUID"] for s in index.query("study", PatientID="D")] == [f"{ROOT}.2"]


def test_a_row_an_earlier_piece_of_a_write_added_then_removed_gives_the_records_nothing(
    index: Index,
) -> None:
    """`Index.writing` fed in pieces: a row one `add` wrote and a later one removed (or moved
    to another study) gave the records its attributes (the study answered for its patient)."""
    index.commit([make_row(1, 1, i, Modality="CT", PatientID="A") for i in range(2)])
    x = make_row(1, 1, 2, Modality="PT", PatientID="Z")
    with index.writing() as writer:
        writer.add([x])
        writer.add([], remove=[x["SOPInstanceUID"]])
    assert index.series_record(f"{ROOT}.1.1")["Modality"] == "CT"
    assert index.study_record(f"{ROOT}.1")["PatientID"] == "A"
    assert index.query("study", PatientID="Z") == []
    moved = {**x, "SeriesInstanceUID": f"{ROOT}.2.1", "StudyInstanceUID": f"{ROOT}.2"}
    with index.writing() as writer:
        writer.add([x])
        writer.add([moved])
    assert index.study_record(f"{ROOT}.1")["PatientID"] == "A"
    assert [s["StudyInstanceUID"] for s in index.query("study", PatientID="Z")] == [f"{ROOT}.2"]


def test_a_removal_from_a_series_of_two_studies_keeps_both_studies(index: Index) -> None:
    """A series whose rows name two studies (archives ingested before such a series was a
    conflict): removing one of its rows keeps it in the study its rows left are in (it moved
    to the other, which got no record, and the first study's record went)."""
    index.commit(
        [make_row(1, 1, 0, PatientID="A")]
        + [make_row(1, 1, i, PatientID="B", StudyInstanceUID=f"{ROOT}.2") for i in (1, 2)]
    )
    assert index.series_record(f"{ROOT}.1.1")["StudyInstanceUID"] == f"{ROOT}.2"
    index.commit([], remove=[make_row(1, 1, 2)["SOPInstanceUID"]])
    assert index.series_record(f"{ROOT}.1.1")["StudyInstanceUID"] == f"{ROOT}.2"
    assert [s["StudyInstanceUID"] for s in index.query("study", PatientID="B")] == [f"{ROOT}.2"]
    # The last row of that study gone: the series goes to the study of the row left.
    index.commit([], remove=[make_row(1, 1, 1)["SOPInstanceUID"]])
    assert index.series_record(f"{ROOT}.1.1")["StudyInstanceUID"] == f"{ROOT}.1"
    assert [s["StudyInstanceUID"] for s in index.query("study", PatientID="A")] == [f"{ROOT}.1"]
    assert index.study_record(f"{ROOT}.2") is None


def test_bad_batches_commit_nothing(index: Index) -> None:
    index.commit([make_row(1, 1, 0)])
    bad = {k: v for k, v in make_row(1, 1, 2).items() if k != "SeriesInstanceUID"}
    with pytest.raises(ValueError, match="SeriesInstanceUID"):
        index.commit([make_row(1, 1, 1), bad])
    with pytest.raises(TypeError):
        index.commit([make_row(1, 1, 1), make_row(1, 1, 2, status=object())])
    with pytest.raises(ValueError, match="longer than"):
        index.commit([make_row(1, 1, 1, SOPInstanceUID="1." * 150)])
    assert len(index) == 1


def test_open_create_and_readonly(tmp_path: Path) -> None:
    path = tmp_path / "index"
    with pytest.raises(FileNotFoundError):
        Index.open(path)
    with Index.create(path) as writer:
        writer.commit([make_row(1, 1, 0)])
        with pytest.raises(FileExistsError):
            Index.create(path)
        # A reader in the same process shares the writer's environment.
        with Index.open(path) as reader:
            assert len(reader) == 1
            with pytest.raises(PermissionError):
                reader.commit([make_row(1, 1, 1)])
    with Index.open(path) as reader:
        # A writer opened while a read-only environment is open upgrades it.
        with Index.open(path, readonly=False) as writer:
            writer.commit([make_row(1, 1, 1)])
        assert len(reader) == 2
    reader.close()  # twice is fine
    with pytest.raises(ValueError, match="closed"):
        reader.get("x")
    other = tmp_path / "other"
    with lmdb.open(str(other)) as env, env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    with pytest.raises(ValueError, match=r"not a pacs_engine\.index"):
        Index.open(other)


# --- query semantics against a brute-force filter --------------------------------

NAMES = ["DOE^JOHN", "Doe^Jane", "DOE^JO", "SMITH^ANNA^B", "Smith", "ÅSTRÖM^ÖRJAN", "O'NEIL^X", ""]
# Component groups, empty trailing components.
NAMES += ["Yamada^Tarou=山田^太郎=やまだ^たろう", "OB^^^^", "Doe^Peter^"]


def _corpus() -> list[dict[str, Any]]:
    """Rows of 40 studies whose series and study attributes agree, with gaps and odd values."""
    rnd = random.Random(42)
    rows = []
    for study in range(40):
        study_attrs: dict[str, Any] = {
            "StudyInstanceUID": f"{ROOT}.{study}",
            "PatientID": rnd.choice(["P1", "P2", "P3", "p1", "P10", "X-1"]),
            "PatientName": rnd.choice(NAMES),
            "StudyDate": f"20{rnd.randint(18, 22)}{rnd.randint(1, 12):02d}{rnd.randint(1, 28):02d}",
            "AccessionNumber": f"A{study % 13}",
            "StudyDescription": rnd.choice(["CT CHEST", "MR BRAIN", "ct abdomen"]),
        }
        for keyword in ("PatientName", "StudyDate", "AccessionNumber"):
            if rnd.random() < 0.18:
                gap = rnd.random()
                if gap < 0.33:
                    del study_attrs[keyword]
                else:
                    study_attrs[keyword] = None if gap < 0.66 else ""
        for series in range(rnd.randint(1, 3)):
            series_attrs = {
                "SeriesInstanceUID": f"{ROOT}.{study}.{series}",
                "Modality": rnd.choice(["CT", "MR", "PT", "SR", None]),
                "SeriesNumber": rnd.choice([1, 2, 3, None]),
                "SeriesDescription": rnd.choice(["AX T1", "COR", "SAG T2"]),
            }
            for instance in range(rnd.randint(1, 6)):
                rows.append(
                    {
                        **study_attrs,
                        **series_attrs,
                        "SOPInstanceUID": f"{ROOT}.{study}.{series}.{instance}",
                        "InstanceNumber": instance + 1,
                        "SOPClassUID": rnd.choice(["1.2.840.10008.5.1.4.1.1.2", "1.2.3"]),
                        "ImageType": rnd.choice(
                            [["ORIGINAL", "PRIMARY"], ["DERIVED", "SECONDARY"]]
                        ),
                        "status": rnd.choice(["archived", "duplicate"]),
                    }
                )
    return rows


CORPUS = _corpus()


@pytest.fixture(scope="module")
def query_index(tmp_path_factory: pytest.TempPathFactory) -> Any:
    rows = CORPUS
    with Index.create(tmp_path_factory.mktemp("query") / "index") as ix:
        # Commit out of order, some rows twice (stale versions first), some removed and
        # re-added, so that the records are the result of replacements.
        rnd = random.Random(7)
        stale = [{**r, "status": "stale"} for r in rnd.sample(rows, 30)]
        ix.commit(stale)
        shuffled = rnd.sample(rows, len(rows))
        for start in range(0, len(shuffled), 25):
            ix.commit(shuffled[start : start + 25])
        gone = rnd.sample(rows, 10)
        ix.commit([], remove=[r["SOPInstanceUID"] for r in gone])
        ix.commit(gone)
        yield ix


def _ref_value(keyword: str, query: Any, value: Any) -> bool:
    """An independent statement of C-FIND matching for one attribute value."""
    if isinstance(value, list):
        return any(_ref_value(keyword, query, v) for v in value)
    if value is None:
        return False
    if keyword.endswith("UID"):
        return value in query.split("\\")
    if keyword == "StudyDate" and query.count("-") == 1:  # a range: never an empty value
        lo, hi = query.split("-")
        return value != "" and value >= lo and (not hi or value[: len(hi)] <= hi)
    if keyword in ("SeriesNumber", "InstanceNumber"):
        return isinstance(value, int) and value == int(query)
    if keyword == "PatientName":  # the first group unless the query has "=", no empty tails
        groups = "=" in query
        return fnmatch.fnmatchcase(_ref_name(value, groups), _ref_name(query, True))
    if keyword == "StudyDate":
        return value == query
    return fnmatch.fnmatchcase(value, query)


def _ref_name(name: str, groups: bool) -> str:
    kept = name.upper().split("=") if groups else name.upper().split("=")[:1]
    return "=".join(group.rstrip("^") for group in kept).rstrip("=")


def _ref_match(record: dict[str, Any], filters: dict[str, Any]) -> bool:
    for keyword, query in filters.items():
        alternatives = query if isinstance(query, list) else [query]
        if any(q in (None, "", "*") for q in alternatives):
            continue
        if not any(_ref_value(keyword, q, record.get(keyword)) for q in alternatives):
            return False
    return True


def _reference(level: str, filters: dict[str, Any]) -> list[str]:
    """UIDs at `level` that brute force over the rows finds."""
    study_f = {k: v for k, v in filters.items() if k in STUDY_KEYWORDS}
    series_f = {k: v for k, v in filters.items() if k in SERIES_KEYWORDS}
    if level == "instance":
        return sorted(r["SOPInstanceUID"] for r in CORPUS if _ref_match(r, filters))
    found = {
        r[f"{level.capitalize()}InstanceUID"]
        for r in CORPUS
        if _ref_match(r, study_f) and _ref_match(r, series_f)
    }
    return sorted(found)


def _uids(level: str, records: list[dict[str, Any]]) -> list[str]:
    return sorted(
        r[f"{level.capitalize()}InstanceUID" if level != "instance" else "SOPInstanceUID"]
        for r in records
    )


@pytest.mark.parametrize(
    ("level", "filters"),
    [
        ("study", {"PatientName": "DOE^*"}),
        ("study", {"PatientName": "doe^j?"}),
        ("study", {"PatientName": "*^*"}),
        ("study", {"PatientName": "åström*"}),
        ("study", {"PatientName": "*"}),
        ("study", {"PatientName": "Yamada^Tarou"}),
        ("study", {"PatientName": "*^tarou"}),
        ("study", {"PatientName": "山田*"}),
        ("study", {"PatientName": "*=山田^太郎*"}),
        ("study", {"PatientName": "ob"}),
        ("study", {"PatientName": "doe^peter^"}),
        ("study", {"PatientName": "Doe^Jane^^"}),
        ("study", {"PatientID": "P1"}),
        ("study", {"PatientID": "p1"}),
        ("study", {"PatientID": "P1*"}),
        ("study", {"PatientID": ["P2", "X-1"]}),
        ("study", {"StudyDate": "20200101-20201231"}),
        ("study", {"StudyDate": "-20190630"}),
        ("study", {"StudyDate": "20210101-"}),
        ("study", {"StudyDate": "-20991231"}),
        ("study", {"StudyDate": "2020"}),
        ("study", {"StudyDate": "2020*"}),
        ("study", {"Modality": "CT"}),
        ("study", {"Modality": "CT", "StudyDate": "2019-2020", "PatientID": "P2"}),
        ("study", {"AccessionNumber": "A1"}),
        ("study", {"AccessionNumber": "A1*", "StudyDescription": "CT*"}),
        ("series", {"Modality": "MR", "PatientName": "*SMITH*"}),
        ("series", {"SeriesNumber": 2}),
        ("series", {"SeriesNumber": "2", "Modality": ["CT", "PT"]}),
        ("series", {"SeriesInstanceUID": f"{ROOT}.3.0\\{ROOT}.4.1\\1.2.3"}),
        ("series", {"StudyInstanceUID": f"{ROOT}.5", "Modality": "SR"}),
        ("instance", {"Modality": "CT", "status": "dup*"}),
        ("instance", {"SOPClassUID": "1.2.3", "PatientID": "P3"}),
        ("instance", {"SOPInstanceUID": f"{ROOT}.1.0.0\\{ROOT}.2.0.0", "PatientName": "D*"}),
        ("instance", {"ImageType": "DERIVED", "InstanceNumber": 1}),
        ("instance", {"StudyDate": "20190101-20211231", "PatientName": "?OE*"}),
        ("instance", {}),
    ],
)
def test_query_matches_brute_force(query_index: Index, level: str, filters: dict) -> None:
    got = query_index.query(level, **filters)
    assert _uids(level, got) == _reference(level, filters)
    assert len(got) == len({json.dumps(r, sort_keys=True) for r in got})


def _filter_values() -> dict[str, list[Any]]:
    values: dict[str, set] = defaultdict(set)
    for row in CORPUS:
        for keyword in (
            "PatientID",
            "PatientName",
            "StudyDate",
            "AccessionNumber",
            "Modality",
            "StudyInstanceUID",
            "SeriesInstanceUID",
        ):
            if isinstance(row.get(keyword), str) and row[keyword]:
                values[keyword].add(row[keyword])
    out = {k: sorted(v) for k, v in values.items()}
    out["PatientName"] += [n.lower()[:3] + "*" for n in NAMES if n] + ["*O*", "??E^*", "S*H"]
    out["PatientID"] += ["P*", "?1", "P1?"]
    dates = out["StudyDate"]
    out["StudyDate"] = dates + [f"{a}-{b}" for a, b in zip(dates[::3], dates[5::3], strict=False)]
    out["StudyDate"] += [f"-{d}" for d in dates[::7]] + [f"{d}-" for d in dates[::7]]
    out["StudyDate"] += ["2020-2021", "201906-"]
    out["Modality"] += ["C?", "*T"]
    return out


FILTER_VALUES = _filter_values()


@st.composite
def queries(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    level = draw(st.sampled_from(["study", "series", "instance"]))
    keywords = draw(st.sets(st.sampled_from(sorted(FILTER_VALUES)), max_size=3))
    filters = {}
    for keyword in keywords:
        choices = FILTER_VALUES[keyword] + ["", "*", None]
        if draw(st.booleans()):
            filters[keyword] = draw(st.sampled_from(choices))
        else:
            filters[keyword] = draw(st.lists(st.sampled_from(choices), min_size=1, max_size=3))
    return level, filters


@settings(max_examples=300, deadline=None)
@given(query=queries())
def test_random_queries_match_brute_force(query_index: Index, query: tuple[str, dict]) -> None:
    level, filters = query
    assert _uids(level, query_index.query(level, **filters)) == _reference(level, filters)


@settings(max_examples=200, deadline=None)
@given(
    query=queries(),
    patients=st.booleans(),
    offset=st.integers(0, 40),
    limit=st.none() | st.integers(0, 40),
)
def test_a_page_is_the_same_slice_of_the_whole_answer(
    query_index: Index, query: tuple[str, dict], patients: bool, offset: int, limit: int | None
) -> None:
    level, filters = query
    if patients:  # patients are grouped from all their studies, then paged
        level, filters = "patient", {k: v for k, v in filters.items() if "Patient" in k}
    whole = query_index.query(level, **filters)
    end = None if limit is None else offset + limit
    assert query_index.query(level, offset=offset, limit=limit, **filters) == whole[offset:end]


@pytest.mark.parametrize(
    ("level", "filters"),
    [
        ("instance", {}),
        ("instance", {"Modality": "CT"}),
        ("instance", {"SeriesInstanceUID": f"{ROOT}.3.0\\{ROOT}.4.1"}),
        ("series", {}),
        ("study", {"StudyDate": "2019-2021"}),
        ("study", {}),
    ],
)
def test_a_page_reads_no_further_than_its_last_match(
    query_index: Index, monkeypatch: pytest.MonkeyPatch, level: str, filters: dict
) -> None:
    loaded = {"rows": 0, "records": 0}
    load_row, load_record = RowCodec.load, View.record

    def counting_load(self: RowCodec, data: bytes, key: bytes) -> Any:
        loaded["rows"] += 1
        return load_row(self, data, key)

    def counting_record(self: View, db: bytes, uid: str) -> Any:
        loaded["records"] += 1
        return load_record(self, db, uid)

    monkeypatch.setattr(RowCodec, "load", counting_load)
    monkeypatch.setattr(View, "record", counting_record)
    whole = query_index.query(level, **filters)
    every = dict(loaded)
    loaded.update(rows=0, records=0)
    assert len(whole) > 3
    assert query_index.query(level, offset=1, limit=2, **filters) == whole[1:3]
    # Reading stopped at the third match: rows (at the instance level) or records.
    if level == "instance":
        assert loaded["rows"] == 3 < every["rows"] == len(whole)
    else:
        assert loaded["rows"] == every["rows"] == 0
        assert loaded["records"] < every["records"]


def test_query_levels_and_errors(query_index: Index) -> None:
    series = query_index.query("series", PatientID="P1")
    assert series and all(
        s["PatientID"] == "P1" and "NumberOfSeriesRelatedInstances" in s for s in series
    )
    studies = query_index.query("study", ModalitiesInStudy="PT")
    assert [s["StudyInstanceUID"] for s in studies] == _reference("study", {"Modality": "PT"})
    assert query_index.query("study", NumberOfStudyRelatedSeries=3)
    with pytest.raises(ValueError, match="instance attributes"):
        query_index.query("study", SOPClassUID="1.2.3")
    with pytest.raises(ValueError, match="level"):
        query_index.query("patients")
    patients = query_index.query("patient")  # studies grouped by patient, with counts
    studies = query_index.query("study")
    assert sorted(p["PatientID"] for p in patients) == sorted({s["PatientID"] for s in studies})
    assert sum(p["NumberOfPatientRelatedStudies"] for p in patients) == len(studies)
    assert sum(p["NumberOfPatientRelatedInstances"] for p in patients) == len(query_index)


# --- every key the index matches on, from a real file to a query hit ------------------

#: What a query at each level returns to identify the file's instance by.
_LEVEL_UID = {
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "instance": "SOPInstanceUID",
}
#: Keys the index computes, and the value they have for an index of one row.
_COMPUTED_FOR_ONE_ROW = {
    "NumberOfStudyRelatedSeries": 1,
    "NumberOfStudyRelatedInstances": 1,
    "NumberOfSeriesRelatedInstances": 1,
}


def _pydicom_value(value: Any) -> Any:
    """pydicom's value in plain Python types (a list for a multi-valued attribute)."""
    if isinstance(value, MultiValue | list):
        return [_pydicom_value(v) for v in value]
    if isinstance(value, PersonName):
        return str(value)
    return value


def _query_values(ds: pydicom.Dataset) -> dict[str, Any]:
    """The file's own value, as pydicom reads it, for each key the index matches on."""
    values = {}
    for keyword in HEADER_KEYWORDS:
        source = ds.file_meta if keyword == "TransferSyntaxUID" else ds
        value = _pydicom_value(source.get(keyword))
        if value not in (None, "", []):  # absent or empty: only universal matching applies
            values[keyword] = value
    if "Modality" in values:
        values["ModalitiesInStudy"] = values["Modality"]
    return values | _COMPUTED_FOR_ONE_ROW


def _whole_values(keyword: str, value: Any) -> list[str]:
    """A multi-valued attribute's values joined by backslashes, as a query for the whole
    value (none for a single value, or values that are not all text or all numbers)."""
    if not whole_value(keyword) or not isinstance(value, list) or len(value) < 2:
        return []
    kinds = {
        str if isinstance(v, str) else float if isinstance(v, int | float) else None for v in value
    }
    return ["\\".join(str(v) for v in value)] if kinds in ({str}, {float}) else []


@pytest.fixture(scope="module")
def real_file_queries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each real file's row, built as the ingest builds it, alone in an index, queried
    with each of the file's own values (pydicom's) at each level that accepts the key.

    Returns hits and misses per keyword, the files checked, and those left out with the reason.
    """
    require_corpus()
    checked = 0
    hits: dict[str, int] = defaultdict(int)
    misses: dict[str, list[str]] = defaultdict(list)
    left_out: dict[str, str] = {}
    with Index.create(tmp_path_factory.mktemp("real") / "index") as index:
        for path in corpus_files() + pydicom_test_files():
            try:
                header = scan(path)
            except ScanError as error:  # the ingest quarantines these; see test_scan_*
                left_out[str(path)] = error.reason
                continue
            row = {**header.attributes, "source_path": str(path)}  # as encoder.new_row
            problem = next(
                filter(None, (uid_problem(k, row.get(k)) for k in _LEVEL_UID.values())), None
            )
            if problem is not None:  # the ingest quarantines these too
                left_out[str(path)] = problem
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
                values = _query_values(ds)
            index.commit([row])
            checked += 1
            for keyword, value in values.items():
                level = level_of(keyword)
                # A list: any of its values; joined by backslashes: the whole value.
                asked = [value, *_whole_values(keyword, value)]
                for query_level in LEVELS if level != "instance" else ("instance",):
                    uid = row[_LEVEL_UID[query_level]]
                    for query in asked:
                        found = index.query(query_level, **{keyword: query})
                        if uid in [r[_LEVEL_UID[query_level]] for r in found]:
                            hits[keyword] += 1
                        else:
                            misses[keyword].append(f"{path} at {query_level}: {query!r}")
            index.commit([], remove=[row["SOPInstanceUID"]])
            assert len(index) == 0
    return {"hits": hits, "misses": misses, "left_out": left_out, "checked": checked}


@pytest.mark.parametrize("keyword", [*HEADER_KEYWORDS, *STUDY_COMPUTED, *SERIES_COMPUTED])
def test_every_matched_key_finds_the_real_file_it_came_from(
    real_file_queries: dict[str, Any], keyword: str
) -> None:
    """Differential against pydicom on the corpus and pydicom's files: a query on any
    key the index matches on, with a file's own value, finds that file's instance at
    every level that accepts the key."""
    assert real_file_queries["misses"][keyword] == []
    assert real_file_queries["hits"][keyword] > 0, f"no real file has a {keyword} to query"


def test_the_query_check_leaves_out_few_real_files(real_file_queries: dict[str, Any]) -> None:
    """Left out only where the ingest quarantines the file too (the scanner refuses it,
    or it has no UIDs to key): counted, and a small share of the files."""
    left_out, checked = real_file_queries["left_out"], real_file_queries["checked"]
    assert checked > 0
    assert len(left_out) <= (checked + len(left_out)) // 10, sorted(left_out.items())


def test_the_eight_keys_once_never_recorded_match_through_a_real_ingest(tmp_path: Path) -> None:
    """The issue's reproduction, through Archive.ingest: keys the scanner did not record
    matched nothing; a multi-valued OtherPatientIDs matches on any of its values."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    values = {
        "IssuerOfPatientID": "HOSPITAL-A",
        "OtherPatientIDs": ["OLD-1", "OLD-2"],
        "PatientAge": "042Y",
        "StudyID": "S-17",
        "SeriesDate": "20200317",
        "SeriesTime": "101530.25",
        "Laterality": "L",
        "ProtocolName": "CHEST*ROUTINE",
    }
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "ct.dcm")
    with Archive.create(tmp_path / "archive") as archive:
        assert archive.ingest([tmp_path / "in"], workers=0).archived == 1
        for keyword, value in {**values, "OtherPatientIDs": "OLD-2"}.items():
            for level in LEVELS:
                found = archive.query(level, **{keyword: value})
                assert [r["StudyInstanceUID"] for r in found] == [ds.StudyInstanceUID], keyword
        assert len(archive.query("study", OtherPatientIDs=["OLD-3", "OLD-1"])) == 1
        assert archive.query("study", OtherPatientIDs="OLD-3") == []
        assert archive.query("series", SeriesDate="20200101-20200316") == []
        assert len(archive.query("series", SeriesDate="20200317-", Laterality="L")) == 1
        assert archive.query("series", ProtocolName="CHEST") == []


def test_a_multi_valued_attribute_matches_one_of_its_values_or_its_whole_value(
    tmp_path: Path,
) -> None:
    """ImageType (CS, several values): a single query value matches when any value does
    (PS3.4 C.2.2.2); a backslash-joined one is a pattern for the whole value, "*" running
    across backslashes. For a single-valued attribute the parts are alternatives. A row
    without the attribute (written before it was recorded) matches only universally."""
    types = {
        1: ["ORIGINAL", "PRIMARY", "AXIAL"],
        2: ["ORIGINAL", "PRIMARY", "LOCALIZER"],
        3: ["DERIVED", "SECONDARY", "", "MPR"],
        4: ["ORIGINAL", "PRIMARY"],
        5: None,  # an older row: no ImageType at all
    }
    rows = []
    for n, image_type in types.items():
        extra = {} if image_type is None else {"ImageType": image_type}
        series, modality = (1, "CT") if n < 4 else (2, "MR")  # a series has one Modality
        rows.append(make_row(1, series, n, Modality=modality, **extra))
    with Index.create(tmp_path / "index") as index:
        index.commit(rows)

        def found(**filters: Any) -> list[int]:
            return [r["InstanceNumber"] for r in index.query("instance", **filters)]

        assert found(ImageType="PRIMARY") == [1, 2, 4]
        assert found(ImageType="*AL") == [1, 2, 4]  # ORIGINAL, AXIAL: any value
        assert found(ImageType="ORIGINAL\\PRIMARY*") == [1, 2, 4]
        assert found(ImageType="ORIGINAL\\PRIMARY") == [4]
        assert found(ImageType="ORIGINAL\\PRIMARY\\AXIAL") == [1]
        assert found(ImageType="*\\LOCALIZER") == [2]
        assert found(ImageType="DERIVED\\SECONDARY\\\\MPR") == [3]  # its empty value kept
        assert found(ImageType="PRIMARY\\ORIGINAL*") == []  # order counts
        assert found(ImageType=["*\\LOCALIZER", "DERIVED"]) == [2, 3]  # a list: either
        assert found(ImageType="*") == [1, 2, 3, 4, 5]  # universal, the older row too
        assert found(Modality="CT\\MR") == [1, 2, 3, 4, 5]  # single-valued: alternatives
        assert found(Modality="MR\\PT") == [4, 5]
        assert found(PixelSpacing="0.5\\0.5") == [1, 2, 3, 4, 5]  # numbers, value by value
        assert found(PixelSpacing="0.5") == [1, 2, 3, 4, 5]
        assert found(PixelSpacing="0.5\\0.6") == found(PixelSpacing="0.5\\0.5\\0.5") == []


def test_the_keys_the_index_matches_on_are_the_ones_the_scanner_records() -> None:
    """Every study and series key of the index is one the scanner records."""
    for keyword in (*STUDY_KEYWORDS, *SERIES_KEYWORDS):
        assert keyword in HEADER_KEYWORDS
        assert level_of(keyword) in ("study", "series")


# --- atomicity: SIGKILLed writers and a concurrent reader ---------------------------


def _payload(batch: int, version: int, i: int, parts: int) -> str:
    return "".join(
        hashlib.sha256(f"{batch}.{version}.{i}.{k}".encode()).hexdigest() for k in range(parts)
    )


def _batch_rows(batch: int, size: int, version: int = 0, parts: int = 1) -> list[dict[str, Any]]:
    """One series; every row says how many rows its batch has and carries a checkable payload."""
    return [
        make_row(
            batch // 4,
            batch,
            i,
            batch=batch,
            batch_size=size,
            version=version,
            payload=_payload(batch, version, i, parts),
        )
        for i in range(size)
    ]


def _check_series(rows: list[dict[str, Any]]) -> str | None:
    """Why these rows, read in one call, are not one whole committed batch (None if they are)."""
    if not rows:
        return "empty series"
    first = rows[0]
    if len(rows) != first["batch_size"]:
        return f"batch {first['batch']}: {len(rows)} rows of {first['batch_size']}"
    for i, row in enumerate(rows):
        if (row["batch"], row["version"]) != (first["batch"], first["version"]):
            return f"batch {first['batch']}: mixed versions"
        parts = len(row["payload"]) // 64
        if row["InstanceNumber"] != i or row["payload"] != _payload(
            first["batch"], first["version"], i, parts
        ):
            return f"batch {first['batch']}: row {i} damaged"
    return None


def _killable_writer(path: str, log: str, seed: int) -> None:
    rnd = random.Random(seed)
    with Index.open(path, readonly=False) as index, open(log, "a", buffering=1) as out:
        batch = len(index.all_series())
        while True:
            # Big rows of random text, so that most of the time goes into commits.
            rows = _batch_rows(batch, rnd.randint(50, 600), parts=16)
            out.write(f"begin {batch}\n")
            index.commit(rows)
            out.write(f"done {batch}\n")
            batch += 1


def test_sigkill_mid_commit_leaves_whole_batches(tmp_path: Path) -> None:
    path, log = tmp_path / "index", tmp_path / "log"
    Index.create(path).close()
    # Forked writers start in milliseconds, so many kills fit in the time budget.
    fork = multiprocessing.get_context("fork")
    rnd = random.Random(1)
    killed_in_commit = rounds = 0
    sizes: dict[int, int] = {}  # batch -> rows, of the batches checked so far
    while killed_in_commit < 15 and rounds < 60:
        rounds += 1
        before = log.read_text().count("done") if log.exists() else 0
        writer = fork.Process(target=_killable_writer, args=(str(path), str(log), rounds))
        writer.start()
        deadline = time.monotonic() + 60
        while not log.exists() or log.read_text().count("done") < before + 2:
            assert writer.is_alive() and time.monotonic() < deadline
            time.sleep(0.01)  # started, and already committed twice
        time.sleep(rnd.uniform(0, 0.15))
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        lines = log.read_text().split("\n")[:-1]
        done = {int(line.split()[1]) for line in lines if line.startswith("done")}
        in_flight = {int(line.split()[1]) for line in lines if line.startswith("begin")} - done
        killed_in_commit += bool(in_flight)
        with Index.open(path) as index:
            records = {int(r["SeriesInstanceUID"].rsplit(".", 1)[1]): r for r in index.all_series()}
            assert done <= records.keys() <= done | in_flight
            # Batches new since the last round, row by row; the older ones by their counts.
            for batch in records.keys() - sizes.keys():
                rows = index.series(records[batch]["SeriesInstanceUID"])
                assert _check_series(rows) is None, _check_series(rows)
                sizes[batch] = len(rows)
            assert {b: r["NumberOfSeriesRelatedInstances"] for b, r in records.items()} == sizes
            assert len(index) == sum(sizes.values())
        with log.open("a") as out:  # the in-flight batch is settled: committed or not
            out.writelines(f"done {b}\n" for b in in_flight & records.keys())
    with Index.open(path) as index:
        for record in index.all_series():
            assert _check_series(index.series(record["SeriesInstanceUID"])) is None
    assert killed_in_commit >= 5, f"only {killed_in_commit} of {rounds} kills landed in a commit"


def _concurrent_writer(path: str, batches: int, seed: int) -> None:
    rnd = random.Random(seed)
    sizes: dict[int, int] = {}
    with Index.open(path, readonly=False) as index:
        for step in range(batches):
            if sizes and rnd.random() < 0.3:
                # Replace a whole series by a new version with another number of rows.
                batch = rnd.choice(sorted(sizes))
                size = rnd.randint(1, 400)
                extra = [f"{ROOT}.{batch // 4}.{batch}.{i}" for i in range(size, sizes[batch])]
                index.commit(_batch_rows(batch, size, version=step), remove=extra)
            else:
                batch, size = len(sizes), rnd.randint(1, 400)
                index.commit(_batch_rows(batch, size))
            sizes[batch] = size


def _polling_reader(path: str, stop: str, queue: Any) -> None:
    polls, errors, counts = 0, [], set()
    rnd = random.Random(0)
    with Index.open(path) as index:
        finished = False
        while not finished:
            finished = os.path.exists(stop)  # one full pass after the writer ended
            records = index.all_series()
            counts.add(len(records))
            # The newest series (likely the one being written) and a sample of the others.
            newest = sorted(records, key=lambda r: int(r["SeriesInstanceUID"].split(".")[-1]))
            sample = (
                records if finished else newest[-2:] + rnd.sample(records, min(6, len(records)))
            )
            for record in sample:
                uid = record["SeriesInstanceUID"]
                read = index.series(uid) if polls % 2 else index.query(SeriesInstanceUID=uid)
                problem = _check_series(read)
                if problem:
                    errors.append(problem)
            polls += 1
    queue.put({"polls": polls, "errors": errors[:10], "counts": len(counts)})


def test_concurrent_reader_never_sees_a_partial_series(tmp_path: Path) -> None:
    path, stop = tmp_path / "index", tmp_path / "stop"
    Index.create(path).close()
    spawn = multiprocessing.get_context("spawn")
    queue = spawn.Queue()
    reader = spawn.Process(target=_polling_reader, args=(str(path), str(stop), queue))
    writer = spawn.Process(target=_concurrent_writer, args=(str(path), 120, 3))
    reader.start()
    writer.start()
    writer.join()
    stop.touch()
    report = queue.get(timeout=60)
    reader.join()
    assert writer.exitcode == 0
    assert report["errors"] == []
    # The reader really ran alongside the writer: it saw the index at many sizes.
    assert report["polls"] > 10 and report["counts"] > 5, report


# --- forked and spawned processes ------------------------------------------------------


def _read_some(index: Index, queue: Any) -> None:
    try:
        rows = index.series(f"{ROOT}.1.1")
        queue.put((len(index), len(rows), len(index.query("study", PatientID="P1"))))
    except BaseException as error:
        queue.put(repr(error))


def _write_in_child(index: Index, queue: Any) -> None:
    try:
        index.commit([make_row(9, 9, i) for i in range(3)])
        queue.put(len(index))
    except BaseException as error:
        queue.put(repr(error))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_children_read_an_index_opened_in_the_parent(index: Index, method: str) -> None:
    index.commit([make_row(s % 2, s, i) for s in range(1, 4) for i in range(10)])
    reader = Index.open(index.path)
    expected = (30, 10, len(index.query("study", PatientID="P1")))
    context = multiprocessing.get_context(method)
    queue = context.Queue()
    iterator = iter(reader)  # a pass left open across the fork
    first = next(iterator)
    children = [context.Process(target=_read_some, args=(ix, queue)) for ix in (index, reader)]
    for child in children:
        child.start()
    results = [queue.get(timeout=30) for _ in children]
    for child in children:
        child.join()
    assert results == [expected, expected]
    assert [first, *iterator] == list(index)
    # And the parent's handles still work, for reading and writing.
    writer_child = context.Process(target=_write_in_child, args=(index, queue))
    writer_child.start()
    assert queue.get(timeout=30) == 33
    writer_child.join()
    index.commit([make_row(8, 8, 0)])
    assert len(reader) == 34
    reader.close()


def test_fork_while_other_threads_read(index: Index) -> None:
    index.commit([make_row(1, 1, i) for i in range(50)])
    stop, failures, reads = threading.Event(), [], [0]

    def keep_reading() -> None:
        while not stop.is_set():
            try:
                assert len(index.series(f"{ROOT}.1.1")) == 50
                reads[0] += 1
            except BaseException as error:
                failures.append(repr(error))
                return

    threads = [threading.Thread(target=keep_reading) for _ in range(2)]
    for thread in threads:
        thread.start()
    fork = multiprocessing.get_context("fork")
    queue = fork.Queue()
    try:
        for _ in range(5):
            child = fork.Process(target=_read_some, args=(index, queue))
            child.start()
            assert queue.get(timeout=30)[0] == 50
            child.join()
            assert child.exitcode == 0
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == [] and reads[0] > 0


def _die_mid_read(index: Index) -> None:
    reading = index._transaction(write=False)
    reading.__enter__()  # takes a slot in the shared reader table
    os.kill(os.getpid(), signal.SIGKILL)


def test_commit_frees_the_reader_slot_of_a_killed_reader(index: Index) -> None:
    index.commit([make_row(1, 1, 0)])
    # Spawned, so that this process's environment stays open (a fork would close it, and
    # reopening it as the only user would reset the whole reader table).
    child = multiprocessing.get_context("spawn").Process(target=_die_mid_read, args=(index,))
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL
    assert len(index) == 1
    assert str(child.pid) in index._store.env.readers()
    # Its stale snapshot would keep the writer from reusing pages; the next commit clears it.
    index.commit([make_row(1, 1, 1)])
    assert str(child.pid) not in index._store.env.readers()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("1.2.840.113619.2.55.3.604688119.969.1268071029.320", None),
        ("2.25.329800735698586629295641978511506172918", None),
        ("0.1", None),
        ("", "no"),
        (None, "no"),
        ("1." + "2" * 250, "longer than 200 bytes"),
        ("1.2\0.3", "NUL"),
        ("../../x", "path separator"),
        ("1.2/3", "path separator"),
        ("1.2\\3", "path separator"),
        (".1.2", "starts with '.'"),
        ("..", "starts with '.'"),
    ],
)
@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_uid_problem_keeps_dicom_uids_and_refuses_what_cannot_be_keyed_or_name_a_folder(
    keyword: str, value: str | None, problem: str | None
) -> None:
    found = uid_problem(keyword, value)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found and keyword in found


# --- a damaged file ---------------------------------------------------------------------


def _big_index(path: Path) -> list[dict[str, Any]]:
    """An index of enough rows (some with values on overflow pages) to span many pages."""
    rows = [make_row(s, 0, i) for s in range(4) for i in range(150)]
    hashes = [hashlib.md5(str(k).encode()).hexdigest() for k in range(400)]  # incompressible
    rows += [make_row(9, 0, i, frame_hashes=hashes) for i in range(3)]
    with Index.create(path) as index:
        index.commit(rows)
    return rows


def test_check_walks_every_page_of_a_healthy_index(tmp_path: Path) -> None:
    rows = _big_index(tmp_path / "ix")
    with Index.open(tmp_path / "ix") as index:
        assert index.check() == len(rows)


def _in_subprocess(path: Path, what: str) -> tuple[int, str]:
    """Open the index at `path` and run `what` in a fresh process (a crash is its exit code)."""
    code = (
        "import sys\n"
        "from pacs_engine.index import Index, DamagedIndexError\n"
        "try:\n"
        f"    index = Index.open({str(path)!r})\n"
        f"    {what}\n"
        "except DamagedIndexError as error:\n"
        "    print(error)\n"
        "    sys.exit(7)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    return done.returncode, done.stdout + done.stderr


def test_a_truncated_file_is_refused_before_it_is_mapped(tmp_path: Path) -> None:
    _big_index(tmp_path / "ix")
    data = tmp_path / "ix" / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)
    code, out = _in_subprocess(tmp_path / "ix", "list(index)")
    assert code == 7, out  # not SIGBUS (-7)
    assert f"{data}: cut short" in out


def test_a_zeroed_page_is_named_by_check_not_an_abort(tmp_path: Path) -> None:
    _big_index(tmp_path / "ix")
    data = tmp_path / "ix" / "data.mdb"
    with Index.open(tmp_path / "ix") as index, index._transaction(write=False) as (txn, _):
        pages = check_trees(tmp_path / "ix", txn.id())
    page_size = 4096
    blob = bytearray(data.read_bytes())
    victim = pages[len(pages) // 2]
    blob[victim * page_size : (victim + 1) * page_size] = bytes(page_size)
    data.write_bytes(bytes(blob))
    code, out = _in_subprocess(tmp_path / "ix", "index.check()")
    assert code == 7, out  # not an assertion abort (-6)
    assert f"page {victim}" in out and str(data) in out


def test_a_row_that_does_not_decode_raises_the_index_error(tmp_path: Path) -> None:
    rows = _big_index(tmp_path / "ix")
    sop = rows[0]["SOPInstanceUID"]
    # Overwrite the stored value in place: the tree is intact, the value is not a row.
    env = lmdb.open(str(tmp_path / "ix"), max_dbs=len(_lmdb.DB_NAMES))
    with env.begin(write=True) as txn:
        txn.put(sop.encode(), b"\x00" * 40, db=env.open_db(b"rows", txn=txn))
    env.close()
    with Index.open(tmp_path / "ix") as index:
        with pytest.raises(DamagedIndexError, match=r"data\.mdb: the row of .*: cannot be decoded"):
            index.get(sop)
        with pytest.raises(DamagedIndexError):
            index.check()


def test_a_time_range_is_checked_at_the_precision_of_its_bounds() -> None:
    """101530-1015 is 10:15:30 to 10:15:59.999999: a range (it was refused as ending before
    it starts, compared as text); 1016-1015 ends before it starts."""
    assert value_problem("StudyTime", "101530-1015") is None
    assert "ends before it starts" in str(value_problem("StudyTime", "1016-1015"))
    assert "ends before it starts" in str(value_problem("StudyDate", "20200102-20200101"))
    (condition,) = compile_query({"StudyTime": "101530-1015"}).values()
    assert [condition(v) for v in ("101530", "1015", "101559.9", "1016")] == [
        True,
        False,
        True,
        False,
    ]
