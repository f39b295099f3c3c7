"""`pacs-engine synth`: realistic synthetic CT/MR series for throughput and scale tests."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import run_cli

from pacs_engine import scan
from pacs_engine.synth import (
    HU_MIN,
    SYNTAXES,
    TEMPLATED_SYNTAXES,
    _NoiseBank,
    slice_normal,
    write_studies,
)

SIZE = 64
SLICES = 4
SERIES = 6
#: Tolerance (mm) of positions written as decimal strings.
POSITION_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("synth")
    return write_studies(out, 2, SERIES, SLICES, rows=SIZE, columns=SIZE + 16, seed=7)


@pytest.fixture(scope="module")
def datasets(written: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in written]


def test_layout_and_count(written: list[Path], datasets: list[pydicom.Dataset]) -> None:
    assert len(written) == 2 * SERIES * SLICES
    for path, ds in zip(written, datasets, strict=True):
        assert path.parts[-3:] == (
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            f"{ds.SOPInstanceUID}.dcm",
        )
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert ds.pixel_array.shape == (SIZE, SIZE + 16)
        for keyword in ("PatientID", "PatientName", "StudyDate", "AccessionNumber"):
            assert ds.get(keyword)


def test_every_syntax_appears(datasets: list[pydicom.Dataset]) -> None:
    found = {ds.file_meta.TransferSyntaxUID for ds in datasets}
    assert found == {uid for uid, _ in SYNTAXES.values()}


def test_ct_values_are_realistic_hounsfield_units(datasets: list[pydicom.Dataset]) -> None:
    ct = [ds for ds in datasets if ds.Modality == "CT"]
    assert ct
    assert {ds.BitsStored for ds in ct} == {12, 16}
    hu = np.stack(
        [ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in ct]
    )
    assert all(ds.pixel_array.dtype == np.int16 for ds in ct)
    assert hu.min() >= -1024
    assert np.percentile(hu, 5) < -900  # air around the body
    soft = hu[(hu > -50) & (hu < 150)]
    assert soft.size > hu.size // 10  # plenty of soft tissue
    assert hu.max() > 300  # bone
    air = hu[hu < -950]
    assert 3 < air.std() < 30  # noise


def test_mr_is_unsigned_with_rician_noise(datasets: list[pydicom.Dataset]) -> None:
    mr = [ds for ds in datasets if ds.Modality == "MR"]
    assert mr
    for ds in mr:
        pixels = ds.pixel_array
        assert pixels.dtype == np.uint16 and ds.PixelRepresentation == 0
        background = pixels[pixels < 100]
        assert background.size and background.mean() > 5  # Rician floor, not zero
        assert pixels.max() > 300


def test_ct_is_padded_outside_its_reconstruction_field(datasets: list[pydicom.Dataset]) -> None:
    """Like a scanner: one value (HU_MIN) outside the circle, noise and anatomy inside."""
    ct = [ds for ds in datasets if ds.Modality == "CT"]
    rows, columns = ct[0].pixel_array.shape
    i, j = np.ogrid[:rows, :columns]
    distance = np.hypot(i - (rows - 1) / 2, j - (columns - 1) / 2)
    for ds in ct:
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert set(np.unique(hu[distance > max(rows, columns) / 2])) == {HU_MIN}
        assert np.unique(hu[distance < max(rows, columns) / 2 - 1]).size > 100


def _max_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """The largest normalised circular cross-correlation of two flat arrays, over all shifts."""
    a, b = a - a.mean(), b - b.mean()
    cross = np.fft.irfft(np.fft.rfft(a) * np.fft.rfft(b).conj(), len(a))
    return float(np.abs(cross).max() / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_every_slice_draws_its_own_noise() -> None:
    """The per-series noise bank gives each slice unit-variance noise, correlated with its
    neighbour pixel as a reconstruction kernel leaves it, and no shift of one slice's noise
    is another's (half of it at most: the two windows are drawn from one bank)."""
    rows, columns = 64, 80
    bank = _NoiseBank(rows, columns, np.random.default_rng(1))
    draws = [bank.draw(np.random.default_rng([1, k])) for k in range(8)]
    for noise in draws:
        assert noise.shape == (rows * columns,)
        assert abs(float(noise.mean())) < 0.1 and float(noise.std()) == pytest.approx(1, abs=0.1)
        image = noise.reshape(rows, columns)
        along_rows = np.corrcoef(image[:, :-1].ravel(), image[:, 1:].ravel())[0, 1]
        assert along_rows == pytest.approx(0.5, abs=0.1)
        assert _max_correlation(noise, np.roll(noise, 777)) == pytest.approx(1.0)
    for i, first in enumerate(draws):
        for second in draws[i + 1 :]:
            assert _max_correlation(first, second) < 0.7


def test_native_files_are_the_bytes_pydicom_writes(
    written: list[Path], datasets: list[pydicom.Dataset]
) -> None:
    """Files in a native syntax are written from per-series header bytes: pydicom, reading
    one and writing it again, writes the same bytes."""
    native = {SYNTAXES[name][0] for name in TEMPLATED_SYNTAXES}
    checked = 0
    for path, ds in zip(written, datasets, strict=True):
        if ds.file_meta.TransferSyntaxUID not in native:
            continue
        again = io.BytesIO()
        ds.save_as(again, enforce_file_format=True)
        assert again.getvalue() == path.read_bytes(), path.name
        checked += 1
    assert checked == 2 * 2 * SLICES  # two native series per study


def test_one_file_of_every_syntax_passes_dciodvfy(
    written: list[Path], datasets: list[pydicom.Dataset], tmp_path: Path
) -> None:
    """dciodvfy (dicom3tools) finds no error; it cannot read deflate, so that file is
    inflated by dcmconv (dcmtk) first."""
    first: dict[str, Path] = {}
    for path, ds in zip(written, datasets, strict=True):
        first.setdefault(ds.file_meta.TransferSyntaxUID, path)
    assert len(first) == len(SYNTAXES)
    for syntax, path in first.items():
        if syntax == SYNTAXES["deflate"][0]:
            inflated = tmp_path / "inflated.dcm"
            subprocess.run(["dcmconv", "+te", str(path), str(inflated)], check=True)
            path = inflated
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in (run.stdout + run.stderr).splitlines() if "Error" in line]
        assert errors == [], (syntax, errors)


def test_geometry(datasets: list[pydicom.Dataset]) -> None:
    by_series: dict[str, list[pydicom.Dataset]] = {}
    for ds in datasets:
        by_series.setdefault(ds.SeriesInstanceUID, []).append(ds)
    frames = {}
    for series in by_series.values():
        series.sort(key=lambda ds: ds.InstanceNumber)
        assert [ds.InstanceNumber for ds in series] == list(range(1, SLICES + 1))
        normal = slice_normal([float(v) for v in series[0].ImageOrientationPatient])
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in series])
        step = float(series[0].SliceThickness)
        expected = positions[0] + np.outer(np.arange(SLICES), normal * step)
        np.testing.assert_allclose(positions, expected, atol=POSITION_TOLERANCE)
        for ds, position in zip(series, positions, strict=True):
            assert float(ds.SliceLocation) == pytest.approx(position @ normal, abs=1e-3)
            assert len(ds.PixelSpacing) == 2 and float(ds.PixelSpacing[0]) > 0
            assert ds.FrameOfReferenceUID == series[0].FrameOfReferenceUID
        frames.setdefault(series[0].StudyInstanceUID, set()).add(series[0].FrameOfReferenceUID)
    assert all(len(uids) == 1 for uids in frames.values())
    assert len({uids.pop() for uids in frames.values()}) == len(frames)


def test_uids_are_unique(datasets: list[pydicom.Dataset]) -> None:
    sops = [ds.SOPInstanceUID for ds in datasets]
    assert len(set(sops)) == len(sops)
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 2 * SERIES
    assert len({ds.StudyInstanceUID for ds in datasets}) == 2
    assert not {ds.StudyInstanceUID for ds in datasets} & {ds.SeriesInstanceUID for ds in datasets}


def test_same_seed_same_bytes(tmp_path: Path, written: list[Path]) -> None:
    again = write_studies(tmp_path, 2, SERIES, SLICES, rows=SIZE, columns=SIZE + 16, seed=7)
    assert [p.relative_to(tmp_path) for p in again] == [
        p.relative_to(written[0].parents[2]) for p in written
    ]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(again, written, strict=True))
    other = write_studies(tmp_path / "other", 1, 1, 1, rows=SIZE, columns=SIZE, seed=8)
    assert other[0].name not in {p.name for p in written}


def test_threads_write_the_same_files(tmp_path: Path, written: list[Path]) -> None:
    threaded = write_studies(
        tmp_path, 2, SERIES, SLICES, rows=SIZE, columns=SIZE + 16, seed=7, threads=3
    )
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(threaded, written, strict=True))


def test_native_scanner_agrees(written: list[Path], datasets: list[pydicom.Dataset]) -> None:
    for path, ds in zip(written, datasets, strict=True):
        header = scan(path)
        assert header.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
        for keyword in ("Rows", "Columns", "SeriesInstanceUID", "SOPInstanceUID", "Modality"):
            assert header[keyword] == ds[keyword].value, keyword


def test_progress_and_bad_arguments(tmp_path: Path) -> None:
    seen: list[tuple[Path, int]] = []
    paths = write_studies(
        tmp_path, 1, 2, 2, rows=16, columns=16, syntaxes=["rle"], progress=lambda *a: seen.append(a)
    )
    assert [p for p, _ in seen] == paths
    assert all(size == p.stat().st_size for p, size in seen)
    with pytest.raises(ValueError, match="nope"):
        write_studies(tmp_path, 1, 1, 1, syntaxes=["nope"])
    with pytest.raises(ValueError):
        write_studies(tmp_path, 0, 1, 1)


def test_cli(tmp_path: Path) -> None:
    result = run_cli(
        "synth",
        str(tmp_path),
        "--studies=1",
        "--series-per-study=2",
        "--slices=3",
        "--rows=32",
        "--columns=32",
        "--modalities=MR",
        "--syntaxes=jpegls,implicit",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    files = sorted(tmp_path.rglob("*.dcm"))
    assert len(files) == 6
    assert f"{len(files)} files" in result.stdout
    syntaxes = {pydicom.dcmread(f).file_meta.TransferSyntaxUID for f in files}
    assert syntaxes == {SYNTAXES["jpegls"][0], SYNTAXES["implicit"][0]}
    assert run_cli("synth", str(tmp_path), "--syntaxes=bogus").returncode == 2


def test_cli_help_lists_the_options() -> None:
    result = run_cli("synth", "--help")
    assert result.returncode == 0
    for option in (
        "--studies",
        "--series-per-study",
        "--slices",
        "--rows",
        "--columns",
        "--seed",
        "--syntaxes",
        "--modalities",
        "--progress",
    ):
        assert option in result.stdout
    assert "synth" in run_cli("--help").stdout
