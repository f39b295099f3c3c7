"""pacs_engine.read: Series and volume() against volumes built independently with pydicom."""

from __future__ import annotations

import copy
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import CORPUS, require_corpus
from pydicom.pixels import apply_modality_lut

from pacs_engine import Archive, ScanError, scan
from pacs_engine.read import Series, VolumeError, plan_volume


def _manifest_series() -> dict[str, list[Path]]:
    """Single-frame corpus files by Series Instance UID, series with >= 3 files only."""
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.is_file():
        return {}
    lines = manifest.read_text().splitlines()
    header = lines[0].split("\t")
    by_series: dict[str, list[Path]] = defaultdict(list)
    for line in lines[1:]:
        row = dict(zip(header, line.split("\t"), strict=False))
        if row.get("frames") == "1" and row.get("series_instance_uid"):
            by_series[row["series_instance_uid"]].append(CORPUS / row["path"])
    return {
        uid: files for uid, files in sorted(by_series.items()) if _positioned_instances(files) >= 3
    }


def _positioned_instances(files: list[Path]) -> int:
    """Distinct SOP Instance UIDs among the files that have an ImagePositionPatient."""
    uids = set()
    for path in files:
        try:
            header = scan(path)
        except ScanError:
            continue
        if header.get("ImagePositionPatient") and header.pixel is not None:
            uids.add(header.get("SOPInstanceUID"))
    return len(uids)


SERIES = _manifest_series()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    require_corpus()
    arc = Archive.create(tmp_path_factory.mktemp("read") / "archive", codec="jpegls")
    arc.ingest([f for files in SERIES.values() for f in files], workers=0)
    yield arc
    arc.close()


# --- the independent reference: pydicom only ---------------------------------------------


def _geometry(ds: pydicom.Dataset) -> tuple:
    return (
        ds.Rows,
        ds.Columns,
        tuple(np.round(np.asarray(ds.ImageOrientationPatient, float), 3)),
        tuple(np.round(np.asarray(ds.PixelSpacing, float), 5)),
    )


def _normal(ds: pydicom.Dataset) -> np.ndarray:
    o = np.asarray(ds.ImageOrientationPatient, float)
    n = np.cross(o[:3], o[3:])
    return n / np.linalg.norm(n)


def _reference(paths: list[str]) -> dict:
    """Volume, spacing and affine built from the files with pydicom; and is it one stack?"""
    datasets = [pydicom.dcmread(p) for p in paths]
    normal = _normal(datasets[0])
    datasets.sort(key=lambda ds: float(np.asarray(ds.ImagePositionPatient, float) @ normal))
    positions = np.array([ds.ImagePositionPatient for ds in datasets], float)
    distance = positions @ normal
    gaps = np.diff(distance)
    one_geometry = len({_geometry(ds) for ds in datasets}) == 1
    regular = len(gaps) == 0 or (gaps.min() > 0.01 and np.ptp(gaps) < 0.01 * gaps.mean() + 0.02)
    o = np.asarray(datasets[0].ImageOrientationPatient, float)
    dr, dc = (float(v) for v in datasets[0].PixelSpacing)
    affine = np.eye(4)
    if len(datasets) > 1:
        affine[:3, 0] = (positions[-1] - positions[0]) / (len(datasets) - 1)
    else:  # one slice: the documented fallback, SliceThickness
        affine[:3, 0] = normal * float(datasets[0].get("SliceThickness") or 1.0)
    affine[:3, 1] = o[3:] * dr
    affine[:3, 2] = o[:3] * dc
    affine[:3, 3] = positions[0]
    return {
        "datasets": datasets,
        "array": np.stack([ds.pixel_array for ds in datasets]),
        "spacing": (float(gaps.mean()) if len(gaps) else None, dr, dc),
        "affine": affine,
        "uids": [ds.SOPInstanceUID for ds in datasets],
        "consistent": one_geometry and regular,
    }


def _multi_slice(archive: Archive, series_uid: str) -> list[dict]:
    """The archived single-frame rows of the series that have a position."""
    rows = [
        r
        for r in archive.index.series(series_uid)
        if r.get("pixels") and r["pixels"]["frames"] == 1 and r.get("ImagePositionPatient")
    ]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        key = (
            r["Rows"],
            r["Columns"],
            tuple(np.round(r["ImageOrientationPatient"], 3)),
            tuple(r.get("PixelSpacing") or ()),
        )
        groups[key].append(r)
    assert groups, f"{series_uid}: no archived single-frame instance with a position"
    return rows


def _check(volume, ref: dict) -> None:
    assert volume.sop_instance_uids == ref["uids"]
    np.testing.assert_array_equal(volume.array, ref["array"])
    assert volume.array.dtype == ref["array"].dtype
    if ref["spacing"][0] is not None:
        assert np.allclose(volume.spacing, ref["spacing"], rtol=1e-5, atol=1e-4)
    assert np.allclose(volume.affine, ref["affine"], atol=1e-4)
    assert np.allclose(volume.origin, ref["affine"][:3, 3])
    k = np.array([len(ref["uids"]) - 1, 3, 5, 1.0])
    assert np.allclose(volume.affine @ k, ref["affine"] @ k, atol=1e-3)


@pytest.mark.parametrize("series_uid", sorted(SERIES) or [None])
def test_volume_matches_pydicom(archive: Archive, series_uid: str) -> None:
    rows = _multi_slice(archive, series_uid)
    series = Series(archive, series_uid)
    ref = _reference([r["source_path"] for r in rows])
    if ref["consistent"]:
        volume = series.volume()
        _check(volume, ref)
        assert np.allclose(volume.direction[:, 0], _normal(ref["datasets"][0]))
        if not volume.sheared:
            assert np.allclose(volume.affine[:3, :3], volume.direction @ np.diag(volume.spacing))
        assert series.volume(subset=True).sop_instance_uids == volume.sop_instance_uids
        # rescale=True equals pydicom's modality LUT
        rescaled = series.volume(rescale=True).array
        expected = np.stack(
            [apply_modality_lut(ds.pixel_array, ds) for ds in ref["datasets"]]
        ).astype(np.float64)
        ints = all(
            float(ds.get("RescaleSlope", 1)).is_integer()
            and float(ds.get("RescaleIntercept", 0)).is_integer()
            for ds in ref["datasets"]
        )
        assert rescaled.dtype.kind in ("iu" if ints else "f")
        if ints:
            np.testing.assert_array_equal(rescaled, expected)
        else:
            assert rescaled.dtype == np.float32
            np.testing.assert_allclose(rescaled, expected, rtol=1e-6, atol=1e-4)
    else:
        with pytest.raises(VolumeError) as err:
            series.volume()
        assert err.value.sop_instance_uids
        assert set(err.value.sop_instance_uids) <= {r["SOPInstanceUID"] for r in series.rows}
        assert err.value.sop_instance_uids[0] in str(err.value)
        volume = series.volume(subset=True)
        by_uid = {r["SOPInstanceUID"]: r for r in rows}
        part = _reference([by_uid[u]["source_path"] for u in volume.sop_instance_uids])
        assert part["consistent"], "the subset must be one regular stack"
        _check(volume, part)


def test_known_subsets(archive: Archive) -> None:
    """fMRI series (time points at the same positions) give one volume of every position."""
    checked = 0
    for series_uid in SERIES:
        rows = [r for r in archive.index.series(series_uid) if r.get("ImagePositionPatient")]
        distinct = {tuple(np.round(r["ImagePositionPatient"], 2)) for r in rows}
        if len(rows) >= 27 and len(distinct) < len(rows):
            volume = Series(archive, series_uid).volume(subset=True)
            assert len(volume.array) == len(distinct)
            checked += 1
    if not checked:
        pytest.skip("no series with repeated positions in the corpus")


def _consistent_series(archive: Archive) -> Series:
    for series_uid in SERIES:
        series = Series(archive, series_uid)
        try:
            volume = series.volume()
        except VolumeError:
            continue
        if len(volume.array) >= 6 and not volume.sheared:
            return series
    pytest.skip("no consistent series of >= 6 slices in the corpus")


def _sorted_rows(series: Series) -> list[dict]:
    order = series.volume().sop_instance_uids
    by_uid = {r["SOPInstanceUID"]: r for r in series.rows}
    return [copy.deepcopy(by_uid[u]) for u in order]


def test_series_frames_and_pixels(archive: Archive) -> None:
    series = _consistent_series(archive)
    assert len(series) == len(series.rows) == len(series.frames)
    for k in (0, len(series) - 1):
        row = series.frames.instance(k)
        np.testing.assert_array_equal(series.frames[k], archive.frames(row["SOPInstanceUID"])[0])
        np.testing.assert_array_equal(
            series.frames[k], pydicom.dcmread(row["source_path"]).pixel_array
        )
    assert {r["pixels"]["array"] for r in series.rows} == set(series.pixels)
    assert all(a.shape[1:] == series.frames[0].shape for a in series.pixels.values())
    np.testing.assert_array_equal(series.frames[-1], series.frames[len(series) - 1])
    with pytest.raises(IndexError, match=f"frame {len(series)} of a series of {len(series)}"):
        series.frames[len(series)]


def test_missing_middle_slice(archive: Archive) -> None:
    series = _consistent_series(archive)
    rows = _sorted_rows(series)
    middle = len(rows) // 2
    dropped = rows[:middle] + rows[middle + 1 :]
    series.rows = dropped
    with pytest.raises(VolumeError, match="irregular slice gaps") as err:
        series.volume()
    assert err.value.sop_instance_uids == [
        rows[middle - 1]["SOPInstanceUID"],
        rows[middle + 1]["SOPInstanceUID"],
    ]
    part = series.volume(subset=True)
    longest = max(middle, len(rows) - middle - 1)
    assert len(part.array) == longest
    expected = rows[:middle] if middle >= len(rows) - middle - 1 else rows[middle + 1 :]
    assert part.sop_instance_uids == [r["SOPInstanceUID"] for r in expected]


def test_duplicate_position(archive: Archive) -> None:
    series = _consistent_series(archive)
    rows = _sorted_rows(series)
    rows[2]["ImagePositionPatient"] = list(rows[1]["ImagePositionPatient"])
    series.rows = rows
    with pytest.raises(VolumeError, match="duplicated positions") as err:
        series.volume()
    assert set(err.value.sop_instance_uids) == {
        rows[1]["SOPInstanceUID"],
        rows[2]["SOPInstanceUID"],
    }
    part = series.volume(subset=True)  # slice 2 dropped, leaves a gap: the longer side is kept
    assert rows[2]["SOPInstanceUID"] not in part.sop_instance_uids
    assert part.sop_instance_uids == [r["SOPInstanceUID"] for r in rows[3:]]


def test_mixed_rows(archive: Archive) -> None:
    series = _consistent_series(archive)
    rows = _sorted_rows(series)
    rows[-1]["Rows"] = rows[-1]["Rows"] + 1
    series.rows = rows
    with pytest.raises(VolumeError, match="mixed geometry") as err:
        series.volume()
    assert err.value.sop_instance_uids == [rows[-1]["SOPInstanceUID"]]
    part = series.volume(subset=True)
    assert part.sop_instance_uids == [r["SOPInstanceUID"] for r in rows[:-1]]


# --- plan_volume on hand-built rows (no corpus needed) -------------------------------------


def _rows(positions: list[float], **extra) -> list[dict]:
    return [
        {
            "SOPInstanceUID": f"1.2.3.{k}",
            "InstanceNumber": k + 1,
            "Rows": 4,
            "Columns": 4,
            "SamplesPerPixel": 1,
            "BitsAllocated": 16,
            "PixelRepresentation": 0,
            "PhotometricInterpretation": "MONOCHROME2",
            "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
            "PixelSpacing": [0.5, 0.7],
            "ImagePositionPatient": [10.0, 20.0, z],
            "pixels": {"array": "a", "first_frame": k, "frames": 1},
            **extra,
        }
        for k, z in enumerate(positions)
    ]


def test_plan_sorts_by_position_and_builds_affine() -> None:
    rows = _rows([6.0, 0.0, 3.0, 9.0])
    plan = plan_volume(rows)
    assert [r["SOPInstanceUID"] for r in plan.rows] == ["1.2.3.1", "1.2.3.2", "1.2.3.0", "1.2.3.3"]
    assert plan.spacing == pytest.approx((3.0, 0.5, 0.7))
    expected = np.array([[0, 0, 0.7, 10], [0, 0.5, 0, 20], [3, 0, 0, 0], [0, 0, 0, 1]], float)
    assert np.allclose(plan.affine, expected)
    assert not plan.sheared


def test_plan_errors_name_instances() -> None:
    with pytest.raises(VolumeError, match=r"no position information|without ImagePosition"):
        plan_volume(_rows([0.0, 1.0, 2.0], ImagePositionPatient=None))
    multi = _rows([0.0, 1.0])
    multi[1]["pixels"]["frames"] = 5
    with pytest.raises(VolumeError, match="multi-frame") as err:
        plan_volume(multi)
    assert err.value.sop_instance_uids == ["1.2.3.1"]
    tilted = _rows([0.0, 1.0, 2.0])
    tilted[2]["ImageOrientationPatient"] = [1, 0, 0, 0, 0.8, 0.6]
    with pytest.raises(VolumeError, match="mixed geometry") as err:
        plan_volume(tilted)
    assert err.value.sop_instance_uids == ["1.2.3.2"]
    assert len(plan_volume(tilted, subset=True).rows) == 2
    gap = _rows([0.0, 1.0, 2.0, 3.0, 7.0, 8.0])
    with pytest.raises(VolumeError, match="irregular") as err:
        plan_volume(gap)
    assert err.value.sop_instance_uids == ["1.2.3.3", "1.2.3.4"]
    assert [r["SOPInstanceUID"] for r in plan_volume(gap, subset=True).rows] == [
        "1.2.3.0",
        "1.2.3.1",
        "1.2.3.2",
        "1.2.3.3",
    ]
    bent = _rows([0.0, 1.0, 2.0, 3.0])
    bent[2]["ImagePositionPatient"] = [15.0, 20.0, 2.0]
    with pytest.raises(VolumeError, match="not on one line") as err:
        plan_volume(bent)
    assert "1.2.3.2" in err.value.sop_instance_uids


def test_gaps_that_drift_name_where_the_regular_run_ends() -> None:
    """Each gap within 1 % of the median but not of the others: the error named no
    instance ("found  mm between the instances")."""
    gaps = [1.0, 1.009, 1.018, 1.0, 1.009, 1.018]
    drifting = _rows([0.0, *np.cumsum(gaps).tolist()])
    with pytest.raises(VolumeError, match=r"found \d") as err:
        plan_volume(drifting)
    assert err.value.sop_instance_uids  # the slices on either side of the break


def test_a_subset_keeps_the_longest_run_of_positions_on_one_line() -> None:
    """A slice at the regular gap but shifted in plane: `subset` leaves it out (it raised
    "not on one line" as without `subset`)."""
    shifted = _rows([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    shifted[6]["ImagePositionPatient"] = [40.0, 20.0, 6.0]
    with pytest.raises(VolumeError, match="not on one line"):
        plan_volume(shifted)
    kept = [r["SOPInstanceUID"] for r in plan_volume(shifted, subset=True).rows]
    assert kept == [f"1.2.3.{k}" for k in range(6)]
    bent = _rows([0.0, 1.0, 2.0, 3.0, 4.0])
    bent[1]["ImagePositionPatient"] = [15.0, 20.0, 1.0]
    kept = [r["SOPInstanceUID"] for r in plan_volume(bent, subset=True).rows]
    assert kept == ["1.2.3.2", "1.2.3.3", "1.2.3.4"]


@pytest.mark.parametrize(
    "orientation",
    [
        "1\\0\\0\\0\\1\\0",  # a string, not numbers
        [1, 0, 0, 0, 1],  # five values
        [1, 0, 0, 0, float("nan"), 0],
        [1, 0, 0, 1, 0, 0],  # parallel cosines
        [1, 0, 0, 0, "x", 0],
        [10**400, 0, 0, 0, 1, 0],  # too large for a float
        None,
    ],
    ids=["string", "five", "nan", "parallel", "text", "overflow", "none"],
)
def test_unusable_orientations_are_named_not_stacked(orientation: object) -> None:
    rows = _rows([0.0, 1.0, 2.0])
    rows[1]["ImageOrientationPatient"] = orientation
    with pytest.raises(VolumeError, match="without ImagePositionPatient") as err:
        plan_volume(rows)
    assert err.value.sop_instance_uids == ["1.2.3.1"]
    assert [r["SOPInstanceUID"] for r in plan_volume(rows, subset=True).rows] == [
        "1.2.3.0",
        "1.2.3.2",
    ]


def test_pydicom_and_numpy_values_plan_like_lists() -> None:
    """Rows built from pydicom data sets (MultiValue) or numpy arrays give the same plan."""
    rows = _rows([6.0, 0.0, 3.0])
    ds = pydicom.Dataset()
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.7]
    converted = [
        {
            **r,
            "ImageOrientationPatient": ds.ImageOrientationPatient,
            "PixelSpacing": ds.PixelSpacing,
            "ImagePositionPatient": np.asarray(r["ImagePositionPatient"]),
        }
        for r in rows
    ]
    ours, theirs = plan_volume(rows), plan_volume(converted)
    assert [r["SOPInstanceUID"] for r in ours.rows] == [r["SOPInstanceUID"] for r in theirs.rows]
    assert np.allclose(ours.affine, theirs.affine)
