"""Training items on corpus CT: fixed dtypes through a DataLoader, HU as pydicom, affines."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from conftest import CORPUS, corpus_files, require_corpus
from pydicom.pixels import apply_modality_lut
from torch.utils.data import DataLoader

from pacs_engine import Archive, open_archive
from pacs_engine.read import FrameDataset, PatchDataset, Series, VolumeDataset
from pacs_engine.read.datasets import GEOMETRY_KEYS
from pacs_engine.read.volume import convert, rescale_as

# 512x512 CT of mixed storage: unsigned 12-bit (Philips series) and signed 16-bit.
PHILIPS = "dcm_qa_ct/Philips/S21570/S2010/"
SIGNED = ["pydicom-data/693_J2KR.dcm", "pylibjpeg-data/JPEGLS/CT1_JLSN.dcm"]


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, pydicom.Dataset]]:
    """An archive of the chosen corpus CT, and each input's pydicom dataset by SOP UID."""
    require_corpus()
    files = [
        p
        for p in corpus_files()
        if str(p.relative_to(CORPUS)).startswith(PHILIPS) and p.name != "DIRFILE"  # DICOMDIR
    ]
    files += [CORPUS / name for name in SIGNED]
    assert len(files) >= 20
    root = tmp_path_factory.mktemp("items") / "archive"
    with Archive.create(root, codec="jpegls") as archive:
        archive.ingest(files, workers=0)
    return root, {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, files)}


def _series(headers: dict[str, pydicom.Dataset]) -> list[str]:
    return sorted({str(ds.SeriesInstanceUID) for ds in headers.values()})


def _patient_position(ds: pydicom.Dataset, row: float, column: float) -> np.ndarray:
    """The LPS position of pixel (row, column), from the header as the standard defines it."""
    position = np.array(ds.ImagePositionPatient, float)
    orientation = np.array(ds.ImageOrientationPatient, float)
    spacing = np.array(ds.PixelSpacing, float)
    return position + orientation[:3] * spacing[1] * column + orientation[3:] * spacing[0] * row


def test_dataloader_batches_mixed_ct_as_float32_hu(ct: tuple) -> None:
    path, ct = ct
    uids = _series(ct)
    stored = FrameDataset(path, uids)
    assert {str(stored[k]["pixels"].dtype) for k in range(len(stored))} == {"int16", "uint16"}
    dataset = FrameDataset(path, uids, rescale=True, fields=("SeriesDescription",))
    loader = DataLoader(dataset, batch_size=4, num_workers=2)
    seen = 0
    for batch in loader:
        assert batch["pixels"].dtype == torch.float32
        assert batch["pixels"].shape[1:] == (512, 512)
        for k, sop in enumerate(batch["sop_instance_uid"]):
            ds = ct[sop]
            expected = apply_modality_lut(ds.pixel_array, ds)  # float64 from pydicom
            np.testing.assert_array_equal(batch["pixels"][k].numpy(), expected.astype(np.float32))
            assert batch["patient_id"][k] == str(ds.get("PatientID", ""))
            assert batch["study_instance_uid"][k] == ds.StudyInstanceUID
            assert batch["SeriesDescription"][k] == str(ds.get("SeriesDescription", ""))
            seen += 1
    assert seen == len(dataset) == len(ct)


def test_rescale_as_equals_pydicom_for_fractional_coefficients(ct: tuple) -> None:
    ds = pydicom.dcmread(next(iter(ct[1].values())).filename)
    ds.RescaleSlope, ds.RescaleIntercept = "0.37", "-1000.5"
    row = {"SOPInstanceUID": ds.SOPInstanceUID, "RescaleSlope": 0.37, "RescaleIntercept": -1000.5}
    ours = rescale_as(ds.pixel_array[None], [row], np.float32)[0]
    assert ours.dtype == np.float32
    expected = apply_modality_lut(ds.pixel_array, ds)
    np.testing.assert_allclose(ours, expected, rtol=2**-23, atol=1e-3)
    with pytest.raises(ValueError, match="floating"):
        rescale_as(ds.pixel_array[None], [row], np.int32)


def test_frame_and_2d_patch_affines_match_the_header(ct: tuple) -> None:
    path, ct = ct
    frames = FrameDataset(path, _series(ct))
    points = [(0, 0), (0, 511), (511, 0), (200, 333)]
    for k in range(len(frames)):
        item = frames[k]
        ds = ct[item["sop_instance_uid"]]
        for j, i in points:
            lps = item["affine_lps"] @ [0, j, i, 1]
            np.testing.assert_allclose(lps[:3], _patient_position(ds, j, i), atol=1e-6)
            ras = item["affine_ras"] @ [0, j, i, 1]
            np.testing.assert_allclose(ras[:3], lps[:3] * [-1, -1, 1], atol=1e-9)
        np.testing.assert_allclose(item["spacing"][1:], [float(v) for v in ds.PixelSpacing])
    patches = PatchDataset(path, (32, 48), samples=10, seed=4)
    for k in range(len(patches)):
        item = patches[k]
        y, x = item["offset"]
        ds = ct[item["sop_instance_uid"]]
        lps = item["affine_lps"] @ [0, 5, 7, 1]
        np.testing.assert_allclose(lps[:3], _patient_position(ds, y + 5, x + 7), atol=1e-6)


def test_volume_and_3d_patch_affines_match_the_header(ct: tuple) -> None:
    path, ct = ct
    dataset = VolumeDataset(path, skip_invalid=True, fields=("BodyPartExamined",))
    volume = max((dataset[k] for k in range(len(dataset))), key=lambda v: len(v["pixels"]))
    assert volume["pixels"].dtype == np.float32
    n = volume["pixels"].shape[0]
    assert n >= 20
    for k in (0, n // 2, n - 1):
        ds = ct[volume["sop_instance_uids"][k]]
        lps = volume["affine_lps"] @ [k, 100, 300, 1]
        np.testing.assert_allclose(lps[:3], _patient_position(ds, 100, 300), atol=1e-3)
        ras = volume["affine_ras"] @ [k, 100, 300, 1]
        np.testing.assert_allclose(ras[:3], lps[:3] * [-1, -1, 1], atol=1e-9)
        assert volume["BodyPartExamined"] == str(ds.get("BodyPartExamined", ""))
    uid = volume["series_instance_uid"]
    patches = PatchDataset(path, (4, 32, 32), samples=6, seed=2, series_uids=[uid])
    for k in range(len(patches)):
        item = patches[k]
        z, y, x = item["offset"]
        ds = ct[volume["sop_instance_uids"][z + 3]]
        lps = item["affine_lps"] @ [3, 1, 2, 1]
        np.testing.assert_allclose(lps[:3], _patient_position(ds, y + 1, x + 2), atol=1e-3)
        np.testing.assert_array_equal(item["spacing"], volume["spacing"])


def test_items_without_geometry_are_the_same_items_less_its_keys(ct: tuple) -> None:
    path, ct = ct
    uids = _series(ct)
    makers = [
        partial(FrameDataset, path, uids, rescale=True),
        partial(PatchDataset, path, (32, 48), samples=6, seed=4, rescale=True),
        partial(PatchDataset, path, (4, 32, 32), samples=6, seed=2, series_uids=uids),
    ]
    for make in makers:
        full, slim = make(), make(geometry=False)
        for k in range(6):
            want, got = full[k], slim[k]
            assert set(GEOMETRY_KEYS) <= set(want)
            assert set(got) == set(want) - set(GEOMETRY_KEYS)
            for key, value in got.items():
                np.testing.assert_array_equal(value, want[key])
    loader = DataLoader(FrameDataset(path, uids, rescale=True, geometry=False), batch_size=4)
    batch = next(iter(loader))
    assert batch["pixels"].dtype == torch.float32
    assert not set(GEOMETRY_KEYS) & set(batch)


def test_series_and_datasets_take_an_archive_or_its_path(ct: tuple) -> None:
    path, ct = ct
    archive = open_archive(path)
    try:
        for uid in _series(ct):
            by_path = Series(str(path), uid)
            by_archive = Series(archive, uid)
            assert [r["SOPInstanceUID"] for r in by_path.rows] == [
                r["SOPInstanceUID"] for r in by_archive.rows
            ]
            np.testing.assert_array_equal(by_path.frames[0], by_archive.frames[0])
        for make in (
            lambda a: FrameDataset(a),
            lambda a: VolumeDataset(a, skip_invalid=True),
            lambda a: PatchDataset(a, (16, 16), samples=3),
        ):
            given_archive, given_path = make(archive), make(path)
            assert given_archive.archive_path == given_path.archive_path == str(path)
            assert len(given_archive) == len(given_path)
            np.testing.assert_array_equal(given_archive[0]["pixels"], given_path[0]["pixels"])
    finally:
        archive.close()
    with pytest.raises(ValueError, match="not attributes the index holds"):
        FrameDataset(path, fields=("NoSuchKeyword",))


def test_integer_hu_equals_pydicom(ct: tuple) -> None:
    """dtype="int16"/"int32" HU (integer arithmetic) equal pydicom's modality values."""
    path, ct = ct
    for dtype in ("int16", "int32"):
        dataset = FrameDataset(path, _series(ct), rescale=True, dtype=dtype)
        for k in range(len(dataset)):
            item = dataset[k]
            ds = ct[item["sop_instance_uid"]]
            expected = apply_modality_lut(ds.pixel_array, ds)  # float64 from pydicom
            assert item["pixels"].dtype == np.dtype(dtype)
            np.testing.assert_array_equal(item["pixels"], expected)


@pytest.mark.parametrize(
    ("stored", "values", "slopes", "intercepts", "target"),
    [
        ("int16", (-2000, 3000), [1], [-1024], "int16"),  # CT as stored: in place
        ("uint16", (0, 65535), [1], [-1024], "int32"),  # beyond int16 on the way
        ("int16", (15000, 16500), [2], [-3000], "int16"),  # value * 2 overflows int16
        ("uint16", (1024, 4095), [1], [-1024], "uint16"),  # the intercept does not fit
        ("int16", (-100, 100), [1, 2], [0, 0], "int16"),  # per-slice slopes: general path
        ("int16", (-100, 100), [0.5], [10], "int32"),  # fractional slope: general path
    ],
)
def test_integer_rescale_equals_the_float_route(
    stored: str, values: tuple, slopes: list, intercepts: list, target: str
) -> None:
    rng = np.random.default_rng(7)
    frames = rng.integers(*values, size=(2, 8, 8), endpoint=True).astype(stored)
    frames[0, 0, :2] = values  # both ends present
    if slopes == [0.5]:
        frames -= frames % 2  # whole values after the slope: castable to an integer dtype
    rows = [
        {"SOPInstanceUID": f"1.2.{k}", "RescaleSlope": slopes[k % len(slopes)],
         "RescaleIntercept": intercepts[k % len(intercepts)], "BitsStored": 16,
         "PixelRepresentation": int(stored == "int16")}
        for k in range(2)
    ]  # fmt: skip
    got = convert(frames, rows, True, target)
    float_route = frames.astype(np.float64) * np.array(slopes * (2 // len(slopes)))[:, None, None]
    float_route += np.array(intercepts * (2 // len(intercepts)))[:, None, None]
    assert got.dtype == np.dtype(target)
    np.testing.assert_array_equal(got, float_route)


def test_integer_rescale_out_of_range_names_the_values_and_instance() -> None:
    frames = np.array([[[0, 4095]]], np.uint16)
    rows = [{"SOPInstanceUID": "1.2.3", "RescaleSlope": 1, "RescaleIntercept": -1024}]
    with pytest.raises(
        ValueError, match=r"values -1024\.\.3071 of instance 1\.2\.3 do not fit uint8"
    ):
        convert(frames, rows, True, "uint8")
    halves = [{**rows[0], "RescaleSlope": 0.5, "RescaleIntercept": 0}]
    with pytest.raises(ValueError, match=r"0\.0\.\.2047\.5 of instance 1\.2\.3 are not all whole"):
        convert(frames, halves, True, "int16")  # they fit int16: not the reason
