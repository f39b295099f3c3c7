"""Realistic synthetic CT and MR series, to test throughput and scale without a real archive.

Each series images a smooth anatomy-like phantom (an elliptical body with fat, lungs, liver,
kidneys, aorta and spine) in patient coordinates, so any slice orientation works and the
images change from slice to slice. CT is in Hounsfield units stored as signed 16-bit
integers with Gaussian noise; MR is unsigned 16-bit with Rician noise. Everything,
UIDs included, follows from the seed: the same arguments write byte-identical files.
Series are written one slice at a time, so memory does not grow with the slice count.

CT is padded with one value outside its circular reconstruction field, as scanners do.

Written fast enough for sustained-ingest sets of tens of thousands of 512 x 512 files:
the phantom is evaluated every PHANTOM_STEP pixels and interpolated (it is smooth at that
scale: edges EDGE_MM wide, textures of centimetres); each slice's noise is the sum of two
windows, at seeded offsets, of a noise bank drawn once per series (Gaussian, correlated
over about a pixel as a reconstruction kernel leaves it, and different in every slice);
files in a native syntax are written from header bytes encoded once per series with only
the per-slice elements encoded per file, the same bytes pydicom writes for the slice's
Dataset. (Before, every pixel of every slice was evaluated and drawn: other pixel values
for the same seed, about 4x the time.)
"""

from __future__ import annotations

import datetime
import functools
import math
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.pixels import get_encoder
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
)


def _has_plugin(uid: UID, plugin: str) -> bool:
    try:
        return plugin in get_encoder(uid).available_plugins
    except (NotImplementedError, ValueError):
        return False


#: The root of UUID-derived UIDs (DICOM PS3.5 B.2).
UID_ROOT = "2.25."
#: Transfer syntaxes by short name: (UID, pydicom encoding plugin, or None when written native).
SYNTAXES: dict[str, tuple[UID, str | None]] = {
    "explicit": (ExplicitVRLittleEndian, None),
    "implicit": (ImplicitVRLittleEndian, None),
    "deflate": (DeflatedExplicitVRLittleEndian, None),
    "rle": (RLELossless, "pylibjpeg" if _has_plugin(RLELossless, "pylibjpeg") else "pydicom"),
    "jpegls": (JPEGLSLossless, "pyjpegls"),
    "j2k": (JPEG2000Lossless, "pylibjpeg"),
}
#: The mix written when none is asked for: every syntax above, one series after another.
DEFAULT_SYNTAXES: tuple[str, ...] = ("explicit", "implicit", "rle", "jpegls", "j2k", "deflate")
MODALITIES: tuple[str, ...] = ("CT", "MR")
DEFAULT_SIZE = 512

SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage}
BITS_ALLOCATED = 16
#: CT series alternate between these BitsStored values.
CT_BITS_STORED = (12, 16)
MR_BITS_STORED = 16
#: RescaleIntercept of CT series by BitsStored: 12-bit signed stores HU as is (HU -2048..2047),
#: 16-bit stores HU + 1024.
CT_INTERCEPT = {12: 0, 16: -1024}
HU_AIR = -1000.0
HU_MIN = -1024
HU_BONE_MAX_12_BIT = 2047
CT_NOISE_HU = 12.0
MR_NOISE = 18.0
#: Field of view (mm) across the larger image dimension.
FOV_MM = {"CT": 400.0, "MR": 380.0}
CT_THICKNESS_MM = (5.0, 2.5, 1.25)
MR_THICKNESS_MM = (4.0, 5.0, 3.0)
#: Width (mm) of the smooth edge of every region.
EDGE_MM = 3.0
#: Amplitude of the smooth tissue texture, in units of the region contrast scale.
TEXTURE_AMPLITUDE = {"CT": 8.0, "MR": 40.0}
#: Length scales (mm) of the texture: sin(x/a + z/b) * cos(y/c - z/d).
TEXTURE_WAVELENGTHS_MM = ((9.0, 13.0), (7.0, 17.0))
#: The phantom is evaluated every PHANTOM_STEP pixels along rows and columns and
#: interpolated bilinearly: 16x fewer evaluations; the grid (3.1 mm at 512 x 512 CT) is
#: about EDGE_MM, so edges stay about as smooth as evaluated at every pixel.
PHANTOM_STEP = 4
#: Attributes that differ between the slices of a series (everything else follows from
#: the study and the series plan).
PER_SLICE = ("SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "SliceLocation")
#: The native syntaxes, written from per-series header bytes (`_NativeSeriesWriter`).
TEMPLATED_SYNTAXES = ("explicit", "implicit")
DICOM_PREAMBLE = b"\x00" * 128 + b"DICM"
GROUP_LENGTH_TAG = Tag("FileMetaInformationGroupLength")
PIXEL_DATA_TAG = Tag("PixelData")
FIRST_STUDY_DATE = datetime.date(2020, 1, 1)
STUDY_DATE_SPAN_DAYS = 5 * 365
#: A progress callback: called with each file written and its size in bytes.
Progress = Callable[[Path, int], None]

# Orientations (ImageOrientationPatient: row direction then column direction, LPS).
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
_OBLIQUE_DEGREES = 15.0
_C, _S = np.cos(np.radians(_OBLIQUE_DEGREES)), np.sin(np.radians(_OBLIQUE_DEGREES))
OBLIQUE_AXIAL = (float(_C), float(_S), 0.0, float(-_S), float(_C), 0.0)
ORIENTATIONS = {
    "CT": (("AX", AXIAL), ("COR", CORONAL), ("SAG", SAGITTAL)),
    "MR": (("AX", AXIAL), ("COR", CORONAL), ("SAG", SAGITTAL), ("OBL AX", OBLIQUE_AXIAL)),
}
MR_CONTRASTS = ("T1", "T2")


@dataclass(frozen=True)
class Region:
    """An ellipsoid of one tissue: centre and semi-axes in mm (LPS), and its values."""

    name: str
    centre: tuple[float, float, float]
    axes: tuple[float, float, float]
    hu: float
    t1: float
    t2: float


# Painted in order, each over the ones before it. Positions: x to the patient's left,
# y posterior, z superior; z = 0 is about the diaphragm.
PHANTOM: tuple[Region, ...] = (
    Region("fat", (0, 0, 0), (175, 125, 420), -100, 1300, 1000),
    Region("soft tissue", (0, 0, 0), (160, 110, 410), 40, 600, 500),
    Region("right lung", (-75, 5, 130), (60, 80, 150), -850, 40, 30),
    Region("left lung", (75, 5, 130), (55, 78, 145), -850, 40, 30),
    Region("heart", (25, -15, 70), (55, 50, 60), 45, 650, 700),
    Region("liver", (-60, 0, -60), (85, 75, 90), 60, 500, 350),
    Region("stomach gas", (55, -30, -30), (35, 25, 30), -950, 30, 30),
    Region("right kidney", (-70, 55, -130), (28, 22, 55), 30, 700, 900),
    Region("left kidney", (70, 55, -125), (28, 22, 55), 30, 700, 900),
    Region("aorta", (10, 25, 0), (12, 12, 600), 180, 300, 200),
    Region("vertebral bodies", (0, 75, 0), (22, 20, 600), 700, 250, 150),
    Region("spinal canal", (0, 100, 0), (9, 8, 600), 10, 400, 1600),
    Region("right femur", (-90, 10, -430), (20, 20, 120), 1200, 200, 100),
    Region("left femur", (90, 10, -430), (20, 20, 120), 1200, 200, 100),
)


@dataclass(frozen=True)
class SeriesPlan:
    """Everything that is the same across the slices of one series."""

    modality: str
    syntax: str
    rows: int
    columns: int
    spacing: float
    thickness: float
    orientation: tuple[float, ...]
    first_position: np.ndarray
    normal: np.ndarray
    bits_stored: int
    contrast: str
    description: str
    number: int


def _uid(seed: int, *parts: object) -> UID:
    """A deterministic UUID-derived UID (2.25.<name-based UUID>) of the seed and parts.

    pydicom's generate_uid(prefix=None, entropy_srcs=...) ignores the entropy and returns a
    random UUID, and with a prefix it joins the sources without a separator (so ("1", "23")
    and ("12", "3") collide); a name-based UUID of the '/'-joined parts has neither problem.
    """
    name = "/".join(map(str, ("pacs_engine.synth", seed, *parts)))
    return UID(f"{UID_ROOT}{uuid.uuid5(uuid.NAMESPACE_OID, name).int}")


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """The unit normal of a slice: the cross product of its row and column directions."""
    row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, column)
    return normal / np.linalg.norm(normal)


def _plan_series(
    modality: str,
    syntax: str,
    index: int,
    slices: int,
    rows: int,
    columns: int,
    rng: np.random.Generator,
) -> SeriesPlan:
    name, orientation = ORIENTATIONS[modality][index % len(ORIENTATIONS[modality])]
    spacing = FOV_MM[modality] / max(rows, columns)
    if modality == "CT":
        thickness = CT_THICKNESS_MM[index % len(CT_THICKNESS_MM)]
        bits_stored = CT_BITS_STORED[index % len(CT_BITS_STORED)]
        contrast = "HU"
        description = f"{name} {thickness:g}mm"
    else:
        thickness = MR_THICKNESS_MM[index % len(MR_THICKNESS_MM)]
        bits_stored = MR_BITS_STORED
        contrast = MR_CONTRASTS[index % len(MR_CONTRASTS)]
        description = f"{name} {contrast}"
    row, column = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = slice_normal(orientation)
    # Centre the image on the body (with a small shift) and the stack around z ~ 0.
    shift = rng.uniform(-20.0, 20.0, size=3)
    centre = np.array([0.0, 0.0, rng.uniform(-100.0, 100.0)]) + shift
    first = (
        centre
        - row * spacing * (columns - 1) / 2
        - column * spacing * (rows - 1) / 2
        - normal * thickness * (slices - 1) / 2
    )
    return SeriesPlan(
        modality=modality,
        syntax=syntax,
        rows=rows,
        columns=columns,
        spacing=spacing,
        thickness=thickness,
        orientation=tuple(float(v) for v in orientation),
        first_position=np.round(first, 4),
        normal=normal,
        bits_stored=bits_stored,
        contrast=contrast,
        description=description,
        number=index + 1,
    )


class _Phantom:
    """Evaluates the phantom on the pixels of one series, one slice at a time.

    The phantom is evaluated on a grid of every PHANTOM_STEP-th pixel (one more row and
    column past the image's end) and interpolated bilinearly to every pixel.
    """

    def __init__(self, plan: SeriesPlan) -> None:
        row = np.asarray(plan.orientation[:3], np.float32)
        column = np.asarray(plan.orientation[3:], np.float32)
        step = np.float32(plan.spacing * PHANTOM_STEP)
        i = np.arange(math.ceil(plan.rows / PHANTOM_STEP) + 1, dtype=np.float32) * step
        j = np.arange(math.ceil(plan.columns / PHANTOM_STEP) + 1, dtype=np.float32) * step
        # Offsets (mm) from the slice position, per patient axis: of every grid point, and
        # the parts due to the row index and to the column index.
        self.by_row = [column[a] * i for a in range(3)]
        self.by_column = [row[a] * j for a in range(3)]
        self.offsets = [self.by_row[a][:, None] + self.by_column[a][None, :] for a in range(3)]
        # Bilinear weights of the pixels between two grid points.
        self.fractions = np.arange(PHANTOM_STEP, dtype=np.float32) / np.float32(PHANTOM_STEP)
        self.plan = plan
        if plan.modality == "CT":
            self.values = [r.hu for r in PHANTOM]
            self.background = HU_AIR
        else:
            self.values = [r.t1 if plan.contrast == "T1" else r.t2 for r in PHANTOM]
            self.background = 0.0

    def _box(self, region: Region, position: np.ndarray) -> tuple[slice, slice] | None:
        """The rows and columns that may meet the region's bounding box (None: none do)."""
        margin = EDGE_MM
        rows = np.ones(len(self.by_row[0]), bool)
        columns = np.ones(len(self.by_column[0]), bool)
        for a in range(3):
            low = region.centre[a] - region.axes[a] - margin - position[a]
            high = region.centre[a] + region.axes[a] + margin - position[a]
            by_row, by_column = self.by_row[a], self.by_column[a]
            rows &= (by_row + by_column.min() <= high) & (by_row + by_column.max() >= low)
            columns &= (by_column + by_row.min() <= high) & (by_column + by_row.max() >= low)
        if not rows.any() or not columns.any():
            return None
        (i,), (j,) = np.nonzero(rows), np.nonzero(columns)
        return slice(i[0], i[-1] + 1), slice(j[0], j[-1] + 1)

    def _grid(self, position: np.ndarray) -> np.ndarray:
        """The noiseless image (float32) of the slice at this position, on the grid."""
        x, y, z = (self.offsets[a] + np.float32(position[a]) for a in range(3))
        image = np.full(x.shape, self.background, np.float32)
        for region, value in zip(PHANTOM, self.values, strict=True):
            box = self._box(region, position)
            if box is None:
                continue
            (cx, cy, cz), (ax, ay, az) = region.centre, region.axes
            r2 = ((x[box] - cx) / ax) ** 2 + ((y[box] - cy) / ay) ** 2 + ((z[box] - cz) / az) ** 2
            # A smooth edge about EDGE_MM wide: 1 inside, 0 outside.
            weight = np.clip((1.0 - r2) * (min(ax, ay, az) / (2 * EDGE_MM)) + 0.5, 0.0, 1.0)
            image[box] += weight * (np.float32(value) - image[box])
        inside = image != self.background
        (wx, wz1), (wy, wz2) = TEXTURE_WAVELENGTHS_MM
        texture = np.sin(x / wx + z / wz1) * np.cos(y / wy - z / wz2)
        image += inside * texture * np.float32(TEXTURE_AMPLITUDE[self.plan.modality])
        return image

    def slice(self, position: np.ndarray) -> np.ndarray:
        """The noiseless image (float32, rows x columns) of the slice at this position."""
        grid = self._grid(position)
        t = self.fractions
        # Along the columns on the small grid, then along the rows: one full-size pass.
        left, right = grid[:, :-1, None], grid[:, 1:, None]
        wide = (left + (right - left) * t).reshape(len(grid), -1)
        top, bottom = wide[:-1, None, :], wide[1:, None, :]
        full = (top + (bottom - top) * t[:, None]).reshape(-1, wide.shape[1])
        return full[: self.plan.rows, : self.plan.columns]


class _NoiseBank:
    """Unit-variance Gaussian noise for every slice of a series, from one bank per series.

    The bank (3 x pixels values) is white noise summed over 2 x 2 neighbourhoods: noise
    correlated over about a pixel, as a reconstruction kernel leaves it in real images. A
    slice's noise is the sum of two windows of the bank at seeded offsets (the first in
    [0, pixels), the second in [pixels, 2 x pixels): never the same window twice), so each
    slice's noise differs from every other's, for one addition instead of drawing every
    value.
    """

    def __init__(self, rows: int, columns: int, rng: np.random.Generator) -> None:
        self.pixels = rows * columns
        white = rng.standard_normal(3 * self.pixels + columns + 1, np.float32)
        below = columns  # the next row of a window
        bank = white[: -below - 1] + white[1:-below] + white[below:-1] + white[below + 1 :]
        # Each window: the 2 x 2 sum has variance 4, the sum of two windows twice that.
        self.bank = bank * np.float32(math.sqrt(1 / 8))

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """One slice's noise (float32, flat), at offsets drawn from `rng`."""
        first, second = rng.integers(self.pixels), self.pixels + rng.integers(self.pixels)
        return self.bank[first : first + self.pixels] + self.bank[second : second + self.pixels]


@functools.cache
def _outside_reconstruction(rows: int, columns: int) -> np.ndarray:
    """The pixels outside a CT scanner's circular reconstruction field (across the larger
    dimension), which it pads with one value (here the lowest, HU_MIN); read-only."""
    radius = max(rows, columns) / 2
    i = (np.arange(rows) - (rows - 1) / 2)[:, None]
    j = (np.arange(columns) - (columns - 1) / 2)[None, :]
    outside = np.asarray(i**2 + j**2 > radius**2)
    outside.flags.writeable = False  # shared by every slice of that size
    return outside


def _pixels(
    plan: SeriesPlan, clean: np.ndarray, noise: _NoiseBank, rng: np.random.Generator
) -> np.ndarray:
    """Stored pixel values: noise added, rescaled and clipped to BitsStored; CT padded
    outside its reconstruction field."""
    shape = clean.shape
    if plan.modality == "CT":
        hu = clean + noise.draw(rng).reshape(shape) * np.float32(CT_NOISE_HU)
        stored = np.rint(hu) - CT_INTERCEPT[plan.bits_stored]
        low = HU_MIN - CT_INTERCEPT[plan.bits_stored]
        high = 2 ** (plan.bits_stored - 1) - 1
        np.copyto(stored, low, where=_outside_reconstruction(*shape))
        return np.clip(stored, low, high).astype(np.int16)
    real = clean + noise.draw(rng).reshape(shape) * np.float32(MR_NOISE)
    imaginary = noise.draw(rng).reshape(shape) * np.float32(MR_NOISE)
    magnitude = np.hypot(real, imaginary)  # Rician
    return np.clip(np.rint(magnitude), 0, 2**plan.bits_stored - 1).astype(np.uint16)


def _study_attributes(seed: int, study: int, rng: np.random.Generator) -> dict[str, object]:
    date = FIRST_STUDY_DATE + datetime.timedelta(days=int(rng.integers(STUDY_DATE_SPAN_DAYS)))
    seconds = int(rng.integers(7 * 3600, 19 * 3600))
    birth = datetime.date(int(rng.integers(1930, 2005)), 1, 1) + datetime.timedelta(
        days=int(rng.integers(365))
    )
    return {
        "PatientName": f"SYNTH^PATIENT{study + 1:06d}",
        "PatientID": f"SYN{seed % 10_000:04d}{study + 1:07d}",
        "PatientBirthDate": birth.strftime("%Y%m%d"),
        "PatientSex": "MF"[int(rng.integers(2))],
        "StudyInstanceUID": _uid(seed, "study", study),
        "FrameOfReferenceUID": _uid(seed, "frame of reference", study),
        "StudyDate": date.strftime("%Y%m%d"),
        "StudyTime": f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
        "StudyID": f"{study + 1}",
        "AccessionNumber": f"A{seed % 1000:03d}{study + 1:08d}",
        "ReferringPhysicianName": "SYNTH^REFERRER",
        "StudyDescription": "",
        "InstitutionName": "pacs_engine synthetic hospital",
        "Manufacturer": "pacs_engine",
        "ManufacturerModelName": "synth",
        "BodyPartExamined": "CHEST",
    }


def _slice_attributes(plan: SeriesPlan, sop_uid: UID, k: int) -> dict[str, object]:
    """The PER_SLICE attributes of slice `k`."""
    position = plan.first_position + plan.normal * plan.thickness * k
    return {
        "SOPInstanceUID": sop_uid,
        "InstanceNumber": k + 1,
        "ImagePositionPatient": [round(float(v), 4) for v in position],
        "SliceLocation": round(float(np.dot(position, plan.normal)), 4),
    }


def _dataset(
    plan: SeriesPlan, study: dict[str, object], series_uid: UID, sop_uid: UID, k: int
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SOP_CLASSES[plan.modality]
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = SYNTAXES[plan.syntax][0]
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if plan.modality == "CT" else "OTHER"]
    ds.SOPClassUID = SOP_CLASSES[plan.modality]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study["StudyDate"]
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = study["StudyTime"]
    ds.Modality = plan.modality
    for keyword, value in study.items():
        setattr(ds, keyword, value)
    ds.StudyDescription = f"{plan.modality} CHEST ABDOMEN"
    ds.SeriesDescription = plan.description
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = plan.number
    ds.AcquisitionNumber = 1
    ds.PatientPosition = "HFS"
    ds.ImageOrientationPatient = [round(v, 6) for v in plan.orientation]
    ds.SliceThickness = plan.thickness
    ds.SpacingBetweenSlices = plan.thickness
    ds.PositionReferenceIndicator = ""
    ds.PixelSpacing = [round(plan.spacing, 6), round(plan.spacing, 6)]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = plan.rows
    ds.Columns = plan.columns
    ds.BitsAllocated = BITS_ALLOCATED
    ds.BitsStored = plan.bits_stored
    ds.HighBit = plan.bits_stored - 1
    if plan.modality == "CT":
        ds.PixelRepresentation = 1
        ds.KVP = 120
        ds.ConvolutionKernel = "STANDARD"
        ds.RescaleIntercept = CT_INTERCEPT[plan.bits_stored]
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
    else:
        ds.PixelRepresentation = 0
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.MagneticFieldStrength = 1.5
        ds.RepetitionTime = 500 if plan.contrast == "T1" else 4000
        ds.EchoTime = 15 if plan.contrast == "T1" else 100
        ds.EchoTrainLength = 1 if plan.contrast == "T1" else 16
        ds.WindowCenter = 600
        ds.WindowWidth = 1200
    for keyword, value in _slice_attributes(plan, sop_uid, k).items():
        setattr(ds, keyword, value)
    return ds


def _write(ds: Dataset, pixels: np.ndarray, syntax: str, path: Path) -> int:
    uid, plugin = SYNTAXES[syntax]
    if plugin is None:
        ds.PixelData = pixels.tobytes()
    else:
        ds.compress(uid, pixels, encoding_plugin=plugin, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
    return path.stat().st_size


def _encoded(elements: Sequence[DataElement], implicit: bool) -> bytes:
    """`elements` as pydicom writes them, little endian, in implicit or explicit VR."""
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, implicit
    for element in elements:
        write_data_element(out, element)
    return out.getvalue()


class _NativeSeriesWriter:
    """Writes the files of one series in a native syntax: the bytes pydicom writes for each
    slice's Dataset (`_write`), with everything but the PER_SLICE elements (and the file
    meta's SOP Instance UID and group length) encoded once per series."""

    def __init__(self, first: Dataset, pixel_bytes: int) -> None:
        meta = FileMetaDataset(first.file_meta)
        validate_file_meta(meta, enforce_standard=True)  # what save_as adds
        self.implicit = first.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        sop_tag = meta["MediaStorageSOPInstanceUID"].tag
        rest = [e for e in meta if e.tag not in (sop_tag, GROUP_LENGTH_TAG)]
        self.meta_before = _encoded([e for e in rest if e.tag < sop_tag], implicit=False)
        self.meta_after = _encoded([e for e in rest if e.tag > sop_tag], implicit=False)
        self.sop_tag = sop_tag
        # The data set: runs of elements that are the same for every slice, between the
        # PER_SLICE ones; the last run ends with the Pixel Data element's header.
        self.per_slice = sorted(first[keyword].tag for keyword in PER_SLICE)
        runs: list[list[DataElement]] = [[]]
        for element in first:  # in tag order, as written
            if element.tag in self.per_slice:
                runs.append([])
            else:
                runs[-1].append(element)
        runs[-1].append(DataElement(PIXEL_DATA_TAG, "OW", b"\0" * pixel_bytes))
        self.runs = [_encoded(run, self.implicit) for run in runs]
        self.runs[-1] = self.runs[-1][:-pixel_bytes]

    def write(self, attributes: dict[str, object], pixels: np.ndarray, path: Path) -> int:
        """Write one slice (its PER_SLICE `attributes` and pixels) to `path`; its size."""
        slice_ds = Dataset()
        for keyword, value in attributes.items():
            setattr(slice_ds, keyword, value)
        sop = _encoded([DataElement(self.sop_tag, "UI", attributes["SOPInstanceUID"])], False)
        meta = self.meta_before + sop + self.meta_after
        group_length = _encoded([DataElement(GROUP_LENGTH_TAG, "UL", len(meta))], implicit=False)
        parts = [DICOM_PREAMBLE, group_length, meta, self.runs[0]]
        for tag, run in zip(self.per_slice, self.runs[1:], strict=True):
            parts += [_encoded([slice_ds[tag]], self.implicit), run]
        parts.append(pixels.tobytes())
        with open(path, "wb") as out:
            out.writelines(parts)
        return sum(map(len, parts))


def write_series(
    out: Path,
    seed: int,
    study: int,
    series: int,
    slices: int,
    *,
    modality: str,
    syntax: str,
    rows: int = DEFAULT_SIZE,
    columns: int = DEFAULT_SIZE,
    progress: Progress | None = None,
) -> list[Path]:
    """Write one series of the study numbered `study` under `out`, slice by slice."""
    study_rng = np.random.default_rng([seed, study])
    attributes = _study_attributes(seed, study, study_rng)
    plan_rng = np.random.default_rng([seed, study, series])
    plan = _plan_series(modality, syntax, series, slices, rows, columns, plan_rng)
    series_uid = _uid(seed, "series", study, series)
    folder = Path(out) / str(attributes["StudyInstanceUID"]) / series_uid
    folder.mkdir(parents=True, exist_ok=True)
    phantom = _Phantom(plan)
    noise = _NoiseBank(rows, columns, np.random.default_rng([seed, study, series, 1]))
    native: _NativeSeriesWriter | None = None
    written = []
    for k in range(slices):
        sop_uid = _uid(seed, "instance", study, series, k)
        clean = phantom.slice(plan.first_position + plan.normal * plan.thickness * k)
        pixels = _pixels(plan, clean, noise, np.random.default_rng([seed, study, series, k, 1]))
        path = folder / f"{sop_uid}.dcm"
        if syntax not in TEMPLATED_SYNTAXES:
            size = _write(_dataset(plan, attributes, series_uid, sop_uid, k), pixels, syntax, path)
        else:
            if native is None:
                first = _dataset(plan, attributes, series_uid, sop_uid, k)
                native = _NativeSeriesWriter(first, pixels.nbytes)
            size = native.write(_slice_attributes(plan, sop_uid, k), pixels, path)
        written.append(path)
        if progress is not None:
            progress(path, size)
    return written


def write_studies(
    out: str | os.PathLike[str],
    studies: int,
    series_per_study: int,
    slices: int,
    *,
    rows: int = DEFAULT_SIZE,
    columns: int = DEFAULT_SIZE,
    seed: int = 0,
    syntaxes: Sequence[str] | None = None,
    modalities: Sequence[str] = MODALITIES,
    progress: Progress | None = None,
    threads: int = 1,
) -> list[Path]:
    """Write studies x series x slices files as OUT/<study>/<series>/<instance>.dcm."""
    syntaxes = tuple(syntaxes or DEFAULT_SYNTAXES)
    unknown = [s for s in syntaxes if s not in SYNTAXES] + [
        m for m in modalities if m not in SOP_CLASSES
    ]
    if unknown:
        raise ValueError(f"unknown transfer syntax or modality: {', '.join(unknown)}")
    if not modalities:
        raise ValueError("no modality to write")
    if min(studies, series_per_study, slices, rows, columns) < 1:
        raise ValueError("studies, series, slices, rows and columns must be at least 1")
    jobs = [
        (study, series, modalities[study % len(modalities)], syntaxes[number % len(syntaxes)])
        for number, (study, series) in enumerate(
            (study, series) for study in range(studies) for series in range(series_per_study)
        )
    ]
    lock = threading.Lock()

    def report(path: Path, size: int) -> None:
        if progress is not None:
            with lock:
                progress(path, size)

    def run(job: tuple[int, int, str, str]) -> list[Path]:
        study, series, modality, syntax = job
        return write_series(
            Path(out),
            seed,
            study,
            series,
            slices,
            modality=modality,
            syntax=syntax,
            rows=rows,
            columns=columns,
            progress=report,
        )

    written: list[Path] = []
    if threads <= 1:
        for job in jobs:
            written += run(job)
        return written
    with ThreadPoolExecutor(threads) as pool:
        for paths in pool.map(run, jobs):
            written += paths
    return written


__all__ = [
    "DEFAULT_SYNTAXES",
    "MODALITIES",
    "SYNTAXES",
    "slice_normal",
    "write_series",
    "write_studies",
]
