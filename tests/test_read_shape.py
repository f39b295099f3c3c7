"""A fixed frame shape for FrameDataset on corpus CT of mixed sizes: skip, pad, crop, resample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from conftest import CORPUS, require_corpus
from pydicom.pixels import apply_modality_lut
from torch.utils.data import DataLoader

from pacs_engine import Archive
from pacs_engine.read import FrameDataset
from pacs_engine.read.shape import FrameShape

# 512x512 axial CT, 256x512 Philips scouts and a 128x128 CT: three frame sizes.
FILES = [
    *(f"dcm_qa_ct/Philips/S21570/S2010/I{n}" for n in (10, 20, 30, 40)),
    *(f"dcm_qa_ct/Philips/S21570/S4010/I{n}" for n in (10, 20, 30)),
    "pydicom/test_files/CT_small.dcm",
]
SIZES = {(512, 512): 4, (256, 512): 3, (128, 128): 1}
TARGET = (256, 256)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, pydicom.Dataset]]:
    """An archive of the mixed-size CT, and each input's pydicom dataset by SOP UID."""
    require_corpus()
    files = [CORPUS / name for name in FILES]
    headers = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, files)}
    sizes = [(int(ds.Rows), int(ds.Columns)) for ds in headers.values()]
    assert {s: sizes.count(s) for s in set(sizes)} == SIZES
    root = tmp_path_factory.mktemp("shape") / "archive"
    with Archive.create(root) as archive:
        assert archive.ingest(files, workers=0).balanced
    return root, headers


def _hu(ds: pydicom.Dataset) -> np.ndarray:
    return apply_modality_lut(ds.pixel_array, ds).astype(np.float32)


def _position(ds: pydicom.Dataset, row: float, column: float) -> np.ndarray:
    """The LPS position of (fractional) pixel (row, column), from the header."""
    position = np.array(ds.ImagePositionPatient, float)
    orientation = np.array(ds.ImageOrientationPatient, float)
    spacing = np.array(ds.PixelSpacing, float)
    return position + orientation[:3] * spacing[1] * column + orientation[3:] * spacing[0] * row


def test_skip_leaves_out_other_sizes_and_says_so(mixed: tuple) -> None:
    path, headers = mixed
    dataset = FrameDataset(path, rescale=True, shape=(512, 512))
    assert len(dataset) == SIZES[(512, 512)]
    assert dataset.excluded == {
        "frame size 256x512, not 512x512": 3,
        "frame size 128x128, not 512x512": 1,
    }
    assert not dataset.fitted
    report = dataset.report()
    assert "frame size 512x512, other sizes: skip" in report
    assert "excluded: 3 instances, frame size 256x512, not 512x512" in report
    for k in range(len(dataset)):
        item = dataset[k]
        np.testing.assert_array_equal(item["pixels"], _hu(headers[item["sop_instance_uid"]]))


def test_crop_takes_the_centre_and_moves_the_affine(mixed: tuple) -> None:
    path, headers = mixed
    dataset = FrameDataset(path, rescale=True, shape=TARGET, on_mismatch="crop")
    assert len(dataset) == 7
    assert dataset.excluded == {"frame size 128x128 smaller than 256x256: cannot crop": 1}
    assert dataset.fitted == {
        "cropped from 512x512 to 256x256": 4,
        "cropped from 256x512 to 256x256": 3,
    }
    assert "fitted: 4 instances cropped from 512x512 to 256x256" in dataset.report()
    for k in range(len(dataset)):
        item = dataset[k]
        ds = headers[item["sop_instance_uid"]]
        top, left = (int(ds.Rows) - 256) // 2, (int(ds.Columns) - 256) // 2
        expected = _hu(ds)[top : top + 256, left : left + 256]
        np.testing.assert_array_equal(item["pixels"], expected)
        for j, i in [(0, 0), (255, 17), (100, 255)]:
            lps = item["affine_lps"] @ [0, j, i, 1]
            np.testing.assert_allclose(lps[:3], _position(ds, top + j, left + i), atol=1e-6)
        np.testing.assert_allclose(item["spacing"][1:], [float(v) for v in ds.PixelSpacing])


def test_pad_centres_smaller_frames_in_the_pad_value(mixed: tuple) -> None:
    path, headers = mixed
    dataset = FrameDataset(path, rescale=True, shape=TARGET, on_mismatch="pad", pad_value=-1024)
    assert len(dataset) == 1
    assert dataset.excluded == {
        "frame size 512x512 larger than 256x256: cannot pad": 4,
        "frame size 256x512 larger than 256x256: cannot pad": 3,
    }
    item = dataset[0]
    ds = headers[item["sop_instance_uid"]]
    expected = np.pad(_hu(ds), 64, constant_values=-1024)
    np.testing.assert_array_equal(item["pixels"], expected)
    lps = item["affine_lps"] @ [0, 64, 70, 1]
    np.testing.assert_allclose(lps[:3], _position(ds, 0, 6), atol=1e-6)


def test_resample_equals_torch_bilinear_and_scales_the_geometry(mixed: tuple) -> None:
    path, headers = mixed
    dataset = FrameDataset(path, rescale=True, shape=TARGET, on_mismatch="resample")
    assert len(dataset) == len(FILES) and not dataset.excluded
    assert sum(dataset.fitted.values()) == len(FILES)  # none is 256x256
    for k in range(len(dataset)):
        item = dataset[k]
        ds = headers[item["sop_instance_uid"]]
        hu = torch.from_numpy(_hu(ds))[None, None]
        expected = torch.nn.functional.interpolate(
            hu, size=TARGET, mode="bilinear", align_corners=False, antialias=False
        )[0, 0].numpy()
        np.testing.assert_allclose(item["pixels"], expected, rtol=1e-5, atol=2e-3)
        scale = np.array([int(ds.Rows), int(ds.Columns)]) / TARGET
        for j, i in [(0, 0), (255, 17), (100, 255)]:
            source = (np.array([j, i]) + 0.5) * scale - 0.5
            lps = item["affine_lps"] @ [0, j, i, 1]
            np.testing.assert_allclose(lps[:3], _position(ds, *source), atol=1e-6)
        spacing = np.array([float(v) for v in ds.PixelSpacing]) * scale
        np.testing.assert_allclose(item["spacing"][1:], spacing)


def test_resampled_mixed_sizes_batch_in_a_dataloader(mixed: tuple) -> None:
    path, _ = mixed
    dataset = FrameDataset(path, rescale=True, shape=TARGET, on_mismatch="resample")
    loader = DataLoader(dataset, batch_size=4, num_workers=2, shuffle=True)
    sops = []
    for batch in loader:
        assert batch["pixels"].dtype == torch.float32
        assert batch["pixels"].shape[1:] == TARGET
        sops += batch["sop_instance_uid"]
    assert sorted(sops) == sorted(dataset.instances)


def test_resample_keeps_integer_and_colour_frames_in_their_dtype() -> None:
    frame = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3)
    out = FrameShape((3, 8), "resample").apply(frame)
    assert out.shape == (3, 8, 3) and out.dtype == np.uint8
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(frame.astype(np.float32)).permute(2, 0, 1)[None],
        size=(3, 8),
        mode="bilinear",
        align_corners=False,
    )[0].permute(1, 2, 0)
    np.testing.assert_array_equal(out, np.rint(expected.numpy()).astype(np.uint8))


def test_bad_shape_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="on_mismatch must be one of"):
        FrameShape((4, 4), "stretch")
    with pytest.raises(ValueError, match="shape must be"):
        FrameShape((4,), "skip")  # type: ignore[arg-type]
