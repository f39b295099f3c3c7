"""Modality values the index row does not hold: an enhanced multi-frame image's Rescale Slope
and Intercept in its functional groups (per frame or shared), and a Modality LUT Sequence.
Both came back as stored values labelled modality values (an Enhanced CT 1024 off its HU)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.sequence import Sequence
from pydicom.uid import (
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from pacs_engine import Archive, open_archive
from pacs_engine.read import Series
from pacs_engine.read.datasets import FrameDataset, PatchDataset, VolumeDataset, _handle
from pacs_engine.read.modality import ModalityError
from tests.conftest import require_corpus
from tests.test_read_values import SIZE, SLICES, _slice

#: Enhanced images of the corpus: shared coefficients (intercept -1024), per-frame ones that
#: differ between frames (two slopes, one intercept -500), per-frame ones of 1 and 0.
ENHANCED = (
    "pydicom-data/eCT_Supplemental.dcm",
    "dcm_qa_enh/Philips/IM_0027_fMAP.dcm",
    "dcm_qa_enh/Siemens/XA10/6_4.dcm",
)


def _read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _enhanced_modality_values(ds: Dataset) -> np.ndarray:
    """Each frame's stored values (pydicom) times its functional group's slope, plus its
    intercept: the Pixel Value Transformation of the frame, else the shared one."""
    frames = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns).astype(np.float64)
    shared = ds.SharedFunctionalGroupsSequence[0].get("PixelValueTransformationSequence")
    out = []
    for f, frame in enumerate(frames):
        own = ds.PerFrameFunctionalGroupsSequence[f].get("PixelValueTransformationSequence")
        item = (own or shared)[0]
        out.append(frame * float(item.RescaleSlope) + float(item.RescaleIntercept))
    return np.stack(out)


@pytest.fixture(scope="module")
def enhanced(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    corpus = require_corpus()
    archive = tmp_path_factory.mktemp("enhanced") / "archive"
    with Archive.create(archive) as a:
        a.ingest([corpus / name for name in ENHANCED], workers=0)
    return {"archive": archive, **{name: corpus / name for name in ENHANCED}}


@pytest.mark.parametrize("name", ENHANCED)
def test_enhanced_frames_hold_their_functional_groups_modality_values(
    enhanced: dict[str, Path], name: str
) -> None:
    ds = _read(enhanced[name])
    expected = _enhanced_modality_values(ds)
    assert "RescaleSlope" not in ds  # the index row has no coefficients: only the header
    frames = FrameDataset(enhanced["archive"], series_uids=[ds.SeriesInstanceUID], rescale=True)
    mine = [k for k in range(len(frames)) if frames[k]["sop_instance_uid"] == ds.SOPInstanceUID]
    assert [frames[k]["frame"] for k in mine] == list(range(len(expected)))
    got = np.stack([frames[k]["pixels"] for k in mine])
    assert got.dtype == np.float32
    assert np.allclose(got, expected.astype(np.float32), rtol=1e-6, atol=1e-3)
    batch = frames.__getitems__(mine)  # decoded into one block, rescaled there
    assert np.allclose(np.stack([i["pixels"] for i in batch]), got, rtol=0, atol=0)
    patches = PatchDataset(
        enhanced["archive"], (8, 8), 6, series_uids=[ds.SeriesInstanceUID], rescale=True
    )
    for k in range(len(patches)):
        item = patches[k]
        if item["sop_instance_uid"] != ds.SOPInstanceUID:
            continue
        y, x = (int(v) for v in item["offset"])
        window = expected[item["frame"], y : y + 8, x : x + 8].astype(np.float32)
        assert np.allclose(item["pixels"], window, rtol=1e-6, atol=1e-3)
    stored = FrameDataset(enhanced["archive"], series_uids=[ds.SeriesInstanceUID])
    raw = np.stack([stored[k]["pixels"] for k in mine])  # without rescale: as stored
    assert np.array_equal(raw, ds.pixel_array.reshape(raw.shape))


def test_the_enhanced_ct_is_in_hounsfield_units(enhanced: dict[str, Path]) -> None:
    """The case that was wrong by a constant: stored 0 is air, -1024 HU."""
    ds = _read(enhanced[ENHANCED[0]])
    frames = FrameDataset(enhanced["archive"], series_uids=[ds.SeriesInstanceUID], rescale=True)
    got = np.stack([frames[k]["pixels"] for k in range(len(frames))])
    assert np.array_equal(got, ds.pixel_array.astype(np.float32) - 1024)


def _lut_slice(
    series: str, study: str, k: int, values: np.ndarray, lut: np.ndarray, first: int, vr: str
) -> Dataset:
    """One Secondary Capture slice of `values` (12 bits unsigned) with a Modality LUT
    Sequence (US or OW data) and no Rescale Slope and Intercept."""
    ds = _slice(series, study, k, values, signed=False)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "OT"
    del ds.RescaleSlope, ds.RescaleIntercept
    item = Dataset()
    item.LUTDescriptor = [len(lut), first, 16]
    item.ModalityLUTType = "OD"
    if vr == "OW":
        item.add_new("LUTData", "OW", lut.astype("<u2").tobytes())
    else:
        item.add_new("LUTData", "US", [int(v) for v in lut])
    ds.ModalityLUTSequence = Sequence([item])
    return ds


@pytest.mark.parametrize("vr", ["US", "OW"])
def test_a_modality_lut_maps_frames_volumes_and_patches_as_pydicom_does(
    tmp_path: Path, vr: str
) -> None:
    """Values below the LUT's first mapped value take its first entry, values past its end
    its last, every other its own entry: pydicom's `apply_modality_lut`, slice by slice."""
    rng = np.random.default_rng(5)
    first, entries = 100, 3000
    lut = rng.integers(0, 60000, entries).astype(np.uint16)
    study, series, files = generate_uid(), generate_uid(), []
    for k in range(SLICES):
        values = rng.integers(0, 1 << 12, (SIZE, SIZE), dtype=np.uint16)
        values[0, :3] = (0, 99, 4095)  # below the table, its last value below, past its end
        path = tmp_path / f"{k}.dcm"
        _lut_slice(series, study, k, values, lut, first, vr).save_as(path, enforce_file_format=True)
        files.append(path)
    expected = np.stack([apply_modality_lut(_read(p).pixel_array, _read(p)) for p in files])
    stored = np.stack([_read(p).pixel_array for p in files])
    assert not np.array_equal(expected, stored)
    with Archive.create(tmp_path / "archive") as archive:
        archive.ingest(files, workers=0)
    with open_archive(tmp_path / "archive") as archive:
        volume = Series(archive, series).volume(rescale=True)
        assert np.array_equal(volume.array, expected) and volume.rescaled
        assert np.array_equal(
            Series(archive, series).volume(rescale=True, dtype="float32").array, expected
        )
        assert np.array_equal(Series(archive, series).volume().array, stored)
    frames = FrameDataset(tmp_path / "archive", rescale=True)
    by_uid = {frames[k]["sop_instance_uid"]: frames[k]["pixels"] for k in range(len(frames))}
    uids = [str(_read(p).SOPInstanceUID) for p in files]
    assert np.array_equal(np.stack([by_uid[u] for u in uids]), expected.astype(np.float32))
    batch = frames.__getitems__(list(range(len(frames))))
    got = {item["sop_instance_uid"]: item["pixels"] for item in batch}
    assert np.array_equal(np.stack([got[u] for u in uids]), expected.astype(np.float32))
    # Read once per instance, the series' one table held once (not a copy per instance).
    kept = _handle(frames.archive_path).transforms
    assert sorted(kept) == sorted(uids)
    assert len({id(kept[u].lut[1]) for u in uids}) == 1  # type: ignore[union-attr]
    assert np.array_equal(VolumeDataset(tmp_path / "archive")[0]["pixels"], expected)
    patches3 = PatchDataset(tmp_path / "archive", (SLICES, 8, 8), 3, rescale=True)
    patches2 = PatchDataset(tmp_path / "archive", (8, 8), 3, rescale=True)
    for k in range(3):
        _, y, x = (int(v) for v in patches3[k]["offset"])
        assert np.array_equal(patches3[k]["pixels"], expected[:, y : y + 8, x : x + 8])
        item = patches2[k]
        y, x = (int(v) for v in item["offset"])
        s = uids.index(item["sop_instance_uid"])
        assert np.array_equal(item["pixels"], expected[s, y : y + 8, x : x + 8])


def test_rows_that_give_their_modality_transform_read_no_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A classic MR image (its IOD has no Modality LUT) and a slice with top-level Rescale
    Slope and Intercept are rescaled from their index rows: no header is read for them."""
    rng = np.random.default_rng(9)
    study, files = generate_uid(), []
    for k in range(2):
        ds = _lut_slice(
            generate_uid(), study, k, rng.integers(0, 4096, (SIZE, SIZE)), np.arange(4), 0, "US"
        )
        del ds.ModalityLUTSequence
        if k == 0:
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
            ds.Modality = "MR"
        else:
            ds.RescaleSlope, ds.RescaleIntercept = 2, -10
        files.append(tmp_path / f"{k}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    with Archive.create(tmp_path / "archive") as archive:
        archive.ingest(files, workers=0)

    def refused(*args: object) -> None:
        raise AssertionError("a header was read")

    monkeypatch.setattr(Archive, "header_dataset", refused)
    frames = FrameDataset(tmp_path / "archive", rescale=True)
    for k in range(len(frames)):
        item = frames[k]
        path = files[[str(_read(p).SOPInstanceUID) for p in files].index(item["sop_instance_uid"])]
        ds = _read(path)
        assert np.array_equal(
            item["pixels"], apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
        )


def test_a_lut_of_32768_entries_or_more_in_an_implicit_vr_file_of_signed_pixels(
    tmp_path: Path,
) -> None:
    """Its LUT Descriptor reads as SS there (pydicom corrects the ambiguous VR by the Pixel
    Representation), so 40000 entries came out -25536 and the read failed in struct with no
    instance named; the number of entries is always US. Each value v maps to entry v - first."""
    from pydicom.uid import ImplicitVRLittleEndian

    rng = np.random.default_rng(1)
    first, entries = -20000, 40000
    lut = rng.integers(0, 1 << 16, entries).astype(np.uint16)
    values = rng.integers(-2000, 2000, (SIZE, SIZE)).astype(np.int16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a negative first mapped value in a US descriptor
        ds = _lut_slice(generate_uid(), generate_uid(), 0, values.view(np.uint16), lut, first, "US")
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(tmp_path / "0.dcm", enforce_file_format=True)
    assert _read(tmp_path / "0.dcm").ModalityLUTSequence[0].LUTDescriptor[0] < 0  # as read
    with Archive.create(tmp_path / "archive") as archive:
        archive.ingest([tmp_path / "0.dcm"], workers=0)
    item = FrameDataset(tmp_path / "archive", rescale=True)[0]
    assert np.array_equal(item["pixels"], lut[values.astype(np.int64) - first].astype(np.float32))


def test_a_lut_that_cannot_be_applied_is_an_error_naming_the_instance(tmp_path: Path) -> None:
    """A LUT Data shorter than its descriptor says (an IndexError inside pydicom's mapping)."""
    ds = _lut_slice(
        generate_uid(), generate_uid(), 0, np.zeros((SIZE, SIZE)), np.arange(9), 0, "US"
    )
    ds.ModalityLUTSequence[0].LUTDescriptor = [4096, 0, 16]
    ds.save_as(tmp_path / "0.dcm", enforce_file_format=True)
    with Archive.create(tmp_path / "archive") as archive:
        archive.ingest([tmp_path / "0.dcm"], workers=0)
    frames = FrameDataset(tmp_path / "archive", rescale=True)
    with pytest.raises(ModalityError, match=rf"instance {ds.SOPInstanceUID}: its Modality LUT"):
        frames[0]
    assert np.array_equal(FrameDataset(tmp_path / "archive")[0]["pixels"], np.zeros((SIZE, SIZE)))
