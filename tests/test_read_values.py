"""The read layer's pixel values equal pydicom's where the archive keeps what the file holds:
bits above Bits Stored (an overlay bit, a sign not extended) are corrected as pydicom does,
while `Archive.frames` keeps them (export and verify need them as written)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from pacs_engine import Archive, open_archive
from pacs_engine.read import Series
from pacs_engine.read.datasets import FrameDataset, PatchDataset, VolumeDataset

SLICES, SIZE = 3, 24


def _slice(series: str, study: str, k: int, raw: np.ndarray, signed: bool) -> Dataset:
    """One CT slice of 12 bits stored in 16 whose pixel data holds `raw` as written."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName, ds.Modality = "BITS-1", "Bits^Test", "CT"
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(k)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 1.0
    ds.Rows = ds.Columns = SIZE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = int(signed)
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = raw.astype("<u2").tobytes()
    return ds


@pytest.fixture(scope="module", params=["jpegls", "raw"])
def written(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two series: signed values whose sign is not extended over bits 12-15, and unsigned
    ones with an overlay bit in bit 15; archived with the codec of the param."""
    tmp = tmp_path_factory.mktemp("bits")
    rng = np.random.default_rng(7)
    study = generate_uid()
    series = {"signed": generate_uid(), "overlay": generate_uid()}
    for kind, uid in series.items():
        for k in range(SLICES):
            values = rng.integers(0, 1 << 12, (SIZE, SIZE), dtype=np.uint16)
            if kind == "overlay":
                values[4:9, 2:20] |= 0x8000
            # signed: a 12-bit two's complement value as written: bits 12-15 left clear
            written = _slice(uid, study, k, values, kind == "signed")
            written.save_as(tmp / f"{kind}{k}.dcm", enforce_file_format=True)
    archive = Archive.create(tmp / "archive", codec=request.param)
    archive.ingest([tmp / f"{kind}{k}.dcm" for kind in series for k in range(SLICES)], workers=0)
    archive.close()
    return {"archive": tmp / "archive", "series": series, "files": tmp}


def _pydicom(files: Path, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """pydicom's stored values and modality values of one series, by slice."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sets = [pydicom.dcmread(files / f"{kind}{k}.dcm") for k in range(SLICES)]
    stored = np.stack([ds.pixel_array for ds in sets])
    return stored, np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in sets])


@pytest.mark.parametrize("kind", ["signed", "overlay"])
def test_frames_volumes_and_patches_hold_pydicoms_values(written: dict, kind: str) -> None:
    stored, modality = _pydicom(written["files"], kind)
    assert stored.min() < 0 if kind == "signed" else stored.max() < 1 << 12  # what is tested
    uid = written["series"][kind]
    with open_archive(written["archive"]) as archive:
        rows = sorted(archive.index.series(uid), key=lambda r: r["InstanceNumber"])
        kept = np.stack([archive.frames(r["SOPInstanceUID"])[0] for r in rows])
        assert not np.array_equal(kept, stored)  # the archive keeps the bits as written
        series = Series(archive, uid)
        assert np.array_equal(series.volume().array, stored)
        assert np.array_equal(series.volume(rescale=True).array, modality)
        assert np.array_equal(np.stack(list(series.frames)), stored)
    frames = FrameDataset(written["archive"], series_uids=[uid])
    assert np.array_equal(np.stack([frames[k]["pixels"] for k in range(SLICES)]), stored)
    batch = frames.__getitems__(list(range(SLICES)))
    assert np.array_equal(np.stack([item["pixels"] for item in batch]), stored)
    rescaled = FrameDataset(written["archive"], series_uids=[uid], rescale=True)
    assert np.allclose(np.stack([rescaled[k]["pixels"] for k in range(SLICES)]), modality)
    volumes = VolumeDataset(written["archive"], series_uids=[uid], dtype="float32")
    assert np.allclose(volumes[0]["pixels"], modality)
    patches = PatchDataset(written["archive"], (SLICES, 8, 8), 4, series_uids=[uid])
    for k in range(len(patches)):
        item = patches[k]
        z, y, x = (int(v) for v in item["offset"])
        assert np.array_equal(item["pixels"], stored[z : z + SLICES, y : y + 8, x : x + 8])


def _series_files(folder: Path, slices: list[np.ndarray], rgb: bool = False) -> list[str]:
    """One series of `slices` (uint16 grey, or uint8 RGB), 1 mm apart; their SOP UIDs."""
    folder.mkdir()
    study, series, uids = generate_uid(), generate_uid(), []
    for k, values in enumerate(slices):
        ds = _slice(series, study, k, np.zeros((SIZE, SIZE), np.uint16), signed=False)
        ds.BitsStored, ds.HighBit = 16, 15
        if rgb:
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "RGB"
            ds.PlanarConfiguration, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 0, 8, 8, 7
            del ds.RescaleSlope, ds.RescaleIntercept
        ds.PixelData = values.tobytes()
        ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)
        uids.append(str(ds.SOPInstanceUID))
    return uids


def test_colour_volumes_and_patches_are_read_as_stored_where_grey_ones_are_rescaled(
    tmp_path: Path,
) -> None:
    """Colour frames have no modality values: a VolumeDataset (which rescales by default)
    and 3-D patches of a colour series read them as stored (every item raised "rescaling
    needs one sample per pixel")."""
    rng = np.random.default_rng(3)
    slices = [rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(SLICES)]
    _series_files(tmp_path / "rgb", slices, rgb=True)
    with Archive.create(tmp_path / "archive") as archive:
        archive.ingest([tmp_path / "rgb"], workers=0)
        (uid,) = {r["SeriesInstanceUID"] for r in archive.index}
        volume = Series(archive, uid).volume(rescale=True)
        assert np.array_equal(volume.array, np.stack(slices)) and not volume.rescaled
    item = VolumeDataset(tmp_path / "archive")[0]
    assert np.array_equal(item["pixels"], np.stack(slices))
    patches = PatchDataset(tmp_path / "archive", (SLICES, 8, 8), 2, rescale=True)
    _, y, x = (int(v) for v in patches[0]["offset"])
    assert np.array_equal(patches[0]["pixels"], np.stack(slices)[:, y : y + 8, x : x + 8])


def test_values_that_do_not_fit_name_the_instances_that_hold_them(tmp_path: Path) -> None:
    """The error names the slice whose values do not fit the dtype asked for (it named the
    first slice of the volume, whatever held them)."""
    slices = [np.full((SIZE, SIZE), 100, np.uint16) for _ in range(4)]
    slices[2][5, 5] = 40000
    uids = _series_files(tmp_path / "grey", slices)
    with Archive.create(tmp_path / "archive") as archive:
        archive.ingest([tmp_path / "grey"], workers=0)
        series = Series(archive, archive.index.get(uids[0])["SeriesInstanceUID"])
        with pytest.raises(ValueError, match=rf"of instance {uids[2]} do not fit int16"):
            series.volume(dtype="int16")
        with pytest.raises(ValueError, match=rf"of instance {uids[2]} do not fit int16"):
            series.volume(rescale=True, dtype="int16")  # intercept -1024: 38976


@pytest.mark.parametrize("pad_value", [-1024, -1024.0, 0.5, 70000])
def test_a_pad_value_the_frames_cannot_hold_is_an_error_naming_the_instance(
    tmp_path: Path, pad_value: float
) -> None:
    """-1024.0 padded uint16 frames with 64512, -1024 raised numpy's OverflowError naming
    no instance."""
    uids = _series_files(tmp_path / "grey", [np.full((SIZE, SIZE), 7, np.uint16)])
    with Archive.create(tmp_path / "archive") as archive:
        archive.ingest([tmp_path / "grey"], workers=0)
    frames = FrameDataset(
        tmp_path / "archive", shape=(SIZE + 4, SIZE + 4), on_mismatch="pad", pad_value=pad_value
    )
    with pytest.raises(ValueError, match=rf"instance {uids[0]}: pad_value .* uint16"):
        frames[0]
    fitting = FrameDataset(
        tmp_path / "archive", shape=(SIZE + 4, SIZE + 4), on_mismatch="pad", pad_value=9
    )
    assert fitting[0]["pixels"][0, 0] == 9 and fitting[0]["pixels"][2, 2] == 7


def test_a_frame_that_cannot_be_read_is_an_error_naming_its_instance(tmp_path: Path) -> None:
    """A shard cut short: every reader's error names the instance (and the frame) whose
    frames it could not read, not only the array and its frame number."""
    from pacs_engine.archive.pixel_store import ShardError

    slices = [np.full((SIZE, SIZE), 100 + k, np.uint16) for k in range(SLICES)]
    uids = _series_files(tmp_path / "grey", slices)
    with Archive.create(tmp_path / "archive") as archive:
        archive.ingest([tmp_path / "grey"], workers=0)
        series_uid = archive.index.get(uids[0])["SeriesInstanceUID"]
    shards = [p for p in (tmp_path / "archive" / "pixels").rglob("c/*/*/*") if p.is_file()]
    assert len(shards) == 1
    shards[0].write_bytes(shards[0].read_bytes()[:-40])  # its index cut
    named = rf"instances? ({'|'.join(uids)})"
    frames = FrameDataset(tmp_path / "archive")
    with pytest.raises(ShardError, match=rf"{named} frame 0: "):
        frames[0]
    with pytest.raises(ShardError, match=named):
        frames.__getitems__([0, 1])
    with pytest.raises(ShardError, match=named):
        next(iter(frames.iter_chunks()))
    with pytest.raises(ShardError, match=rf"{named} frame 0: "):
        PatchDataset(tmp_path / "archive", (8, 8), 1)[0]
    with pytest.raises(ShardError, match=named):
        PatchDataset(tmp_path / "archive", (SLICES, 8, 8), 1)[0]
    with open_archive(tmp_path / "archive") as archive:
        series = Series(archive, series_uid)
        with pytest.raises(ShardError, match=named):
            series.frames[0]
        with pytest.raises(ShardError, match=named):
            series.volume()
