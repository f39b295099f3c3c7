"""Training loops as written: a torch DataLoader on an archive against pydicom on the files.

Run from the repository root (the corpus's CT and `pacs-engine synth` CT, each a case):

    PACS_ENGINE_CORPUS=/work/shared/corpus .venv/bin/python -m pytest \\
        benchmarks/bench_training.py -q -s -p no:cacheprovider

Every rate comes from a real `torch.utils.data.DataLoader`: 2 workers, batch 16,
shuffled, float32 HU (`rescale=True`), default collate, over the training side of a
patient-level split (patients ordered by a hash of their PatientID, the first quarter
held out, as examples/train_ct.py does). Each loader first takes one untimed batch
per worker (their start is paid once per epoch); then `FRAME_BATCHES` batches of
frames (`BATCHES` of patches) are timed.
In the same run, per case:

- frames (512x512, `FrameDataset(shape=(512, 512))`, other sizes skipped) from the
  archive of record (default codec policy) and from a read-optimised copy
  (`codec="lz4", transcode=True`), against a pydicom Dataset over the same
  instances' original files (`dcmread`, `pixel_array`, `apply_modality_lut`,
  float32), and against the codec alone: the same frames' stored chunks (read
  beforehand) decoded by 2 processes (`run_tasks`; `decode_frame` into one array
  reused a shape, as the loader's batches decode into their block), and its CPU per frame in one
  process (the summary's CPU bound for the record: that CPU plus a blank item's);
- 32x128x128 patches (`PatchDataset`, HU) from both archives and from two tiled
  archives (`tile=64`, `ingest --tile 64`: a 512x512 frame in 64 chunks of 64x64, so
  a patch reads and decodes only the 9 to 16 chunks per slice it overlaps): the default
  policy (JPEG-LS tiles, still an archive of record) and an lz4 copy; from raw copies
  (`codec="raw", transcode=True`, whole frames and tiles of 64: a patch's slices are
  cut from the shard's bytes without a decode), the other training copy candidates;
  against pydicom reading only the 32 files of the slices a patch needs and cutting the
  patch out;
- the lz4 copy's frames and the tiled copy's patches as int16 HU (`dtype="int16"`,
  exact for CT's integer slope and intercept): half the bytes to collate;
- the record's and the copies' items with `pacs_engine.read.collate` as the loader's
  `collate_fn` (rows "..., collate"): the default collate's batch with its numeric
  keys in one shared-memory block, one file descriptor a batch instead of one a key;
  the datasets' `__getitems__` decodes a batch's items straight into that block, which
  `collate` hands over uncopied (a tree without `collate`, an ab_compare "before",
  runs those rows with the default collate; one without `__getitems__`, with the
  copying `collate`). Every other row uses the default collate, which copies the
  items (their `__getitems__` block included) into a batch of its own;
- what the DataLoader itself costs: the same loader over items made from nothing (a
  fresh float32 array of the frame's or the patch's shape, the loader's ceiling), the
  copy's frames with only the keys pydicom's items have (pixels, patient_id: what
  the metadata tensors cost) and without their geometry (`geometry=False`), and, in
  its workers, the default collate of one batch (`torch.stack` into a new
  shared-memory tensor) against `np.stack` of the same items (median ms per batch).

Beside each rate, the CPU the loader spent per item (its workers' threads and the main
process, from /proc: a figure the other engineers' load on the machine moves far
less than the rate). The bounds are rows too: the copy cannot beat pydicom by more
than blank items do (both pay the loader), nor the archive of record by more than the
codec alone does.

`test_patch_rates` gives the patch rows (`-k patch`): the loaders above, and per patch
in one process the CPU and calls of the tiled archive of record, of pydicom on the 32
files, and of the codec alone on the patch's chunks (bytes read beforehand), decoded
as the record decodes them (`decode_frame` with the patch's window: a tiled JPEG-LS
slice's overlapped tiles in one native call, an original bitstream, never tiled,
whole): pydicom's CPU over that is the most the tiled record can reach. A line says
what the decoded slices are stored as. Patch corners are random
(`PatchDataset.draw`), as in a training loop: a 128-wide window overlaps 3 tiles of
64 per axis but for 1 corner in 64.

`test_per_item_cost` gives the deterministic side with `num_workers=0`: per item, CPU
microseconds and Python function calls (cProfile) of `FrameDataset.__getitem__` on
both archives and of the pydicom Dataset, and pydicom's CPU per item by the original
files' transfer syntax (why the corpus and synth rows differ).

`-k "frame and not patch"` selects the frame rows of both cases (`test_frame_rates`).

Targets (issue 15): frames from the archive of record >= 80 % of the codec alone and
faster than pydicom (the summary gives the record with the default collate and with
`collate`); from the copy >= 5x pydicom; patches from the archive of record
>= 2x pydicom, from a training copy >= 20x. At the end of the run a summary gives each
target's figure beside its bound, both from this run: the codec alone for the archive
of record (frames: the rate of 2 processes decoding the frames' chunks, and by CPU
its CPU per frame plus a blank item's; patches: pydicom's CPU over the codec alone's
on the patch's chunks, in one process), blank items for the copies (the loader's own
cost, which both sides pay).
"""

from __future__ import annotations

import cProfile
import hashlib
import math
import pstats
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from benchmarks.conftest import corpus_inputs
from pacs_engine import Archive, open_archive
from pacs_engine.archive.pixel_store import decode_frame, window_shape
from pacs_engine.read.bench import original_file, run_tasks
from pacs_engine.read.datasets import FrameDataset, PatchDataset
from pacs_engine.read.volume import plan_volume

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
from torch.utils.data import DataLoader, Dataset, RandomSampler, default_collate  # noqa: E402

try:
    from pacs_engine.read.collation import collate
except ImportError:  # a tree before it (ab_compare's "before"): its rows take the default
    collate = default_collate

WORKERS = 2
BATCH = 16
BATCHES = 12  # timed batches of patches per loader
FRAME_BATCHES = 36  # timed batches of frames per loader (CPU per item steadier than at 12)
ITEMS = 256  # reads per dataset in the per-item figures (num_workers=0)
WARM = 32  # reads before them
PATCH = (32, 128, 128)
PATCH_BATCHES = 6  # timed batches of slow patch loaders (pydicom: 32 files a patch, whose cost
# differs 18x between the synth series' syntaxes: fewer batches left the mix of series to chance)
TILE = 64
ARCHIVES = {
    "record": {},
    "copy": {"codec": "lz4", "transcode": True},
    "record tiled": {"tile": TILE},
    "copy tiled": {"codec": "lz4", "transcode": True, "tile": TILE},
    "raw copy": {"codec": "raw", "transcode": True},
    "raw copy tiled": {"codec": "raw", "transcode": True, "tile": TILE},
}
#: Archives only the patch rates read: ingested there, not for every test of a case (each
#: raw copy holds 4.6 times the bytes of the archive of record).
PATCHES_ONLY = {"raw copy", "raw copy tiled"}
FRAME = (512, 512)
SYNTH = {"studies": 4, "series_per_study": 1, "slices": 64}
#: The summary's rows, per target: (label, figure (rate, CPU), bound (rate, CPU)).
SUMMARY: list[tuple[str, tuple[float, float], tuple[float, float]]] = []


def train_series(archive_path: Path) -> list[str]:
    """The CT series of the patients on the training side of the split."""
    by_patient: dict[str, list[str]] = defaultdict(list)
    with open_archive(archive_path) as archive:
        for record in archive.query(level="series", Modality="CT"):
            by_patient[str(record["PatientID"] or "")].append(str(record["SeriesInstanceUID"]))
    patients = sorted(by_patient, key=lambda p: hashlib.sha256(p.encode()).hexdigest())
    held_out = max(1, math.floor(len(patients) / 4)) if len(patients) > 1 else 0
    return [uid for p in patients[held_out:] for uid in by_patient[p]]


def _hu(ds: pydicom.Dataset, pixels: np.ndarray) -> np.ndarray:
    return apply_modality_lut(pixels, ds).astype(np.float32)


class PydicomFrames(Dataset):
    """Frames as a pydicom training loop reads them: one file per item, HU in float32."""

    def __init__(self, where: Sequence[tuple[str, int]]) -> None:
        self.where = list(where)

    def __len__(self) -> int:
        return len(self.where)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, frame = self.where[i]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
        if int(ds.get("NumberOfFrames") or 1) > 1:
            pixels = pixels[frame]
        return {"pixels": _hu(ds, pixels), "patient_id": str(ds.get("PatientID", ""))}


class PydicomPatches(Dataset):
    """The patches of a PatchDataset, read by pydicom from only the slices each needs."""

    def __init__(self, patches: PatchDataset, paths: list[list[str]]) -> None:
        self.patches, self.paths = patches, paths

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s, _, (z, y, x) = self.patches.draw(i)
        dz, dy, dx = self.patches.patch_size
        slices = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for path in self.paths[s][z : z + dz]:
                ds = pydicom.dcmread(path)
                slices.append(_hu(ds, ds.pixel_array[y : y + dy, x : x + dx]))
        return {"pixels": np.stack(slices)}


class PixelsOnly(Dataset):
    """A dataset's items cut to the keys pydicom's items have: pixels and patient_id."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        return {"pixels": item["pixels"], "patient_id": item["patient_id"]}


class CodecAlone:
    """Decodes chunk bytes read beforehand with their array's codec (a `run_tasks` reader),
    each frame into one array reused for its shape and dtype: the codec at its best, with
    no allocation a frame (the loader's batched path decodes into its block too)."""

    def read(self, part: Sequence[tuple[Any, list[bytes]]]) -> tuple[int, int]:
        frames = nbytes = 0
        outs: dict[tuple[Any, ...], np.ndarray] = {}
        for spec, chunks in part:
            key = (spec.frame_shape, spec.dtype)
            out = outs.get(key)
            if out is None:
                out = outs[key] = np.empty(spec.frame_shape, spec.dtype)
            decode_frame(spec, chunks, out)
            nbytes += out.nbytes
            frames += 1
        return frames, nbytes


class Blank(Dataset):
    """Items made from nothing: a new float32 array of `shape` (the DataLoader's own cost)."""

    def __init__(self, shape: tuple[int, ...], count: int, dtype: str = "float32") -> None:
        self.shape, self.count, self.dtype = shape, count, dtype

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"pixels": np.full(self.shape, i, self.dtype)}


def timed_collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """The default collate of `batch`, with its time and np.stack's of the same items (ms)."""
    started = time.perf_counter()
    out = default_collate(batch)
    collated = time.perf_counter()
    np.stack([item["pixels"] for item in batch])
    out["ms"] = torch.tensor([collated - started, time.perf_counter() - collated]) * 1000
    return out


def collate_ms(shape: tuple[int, ...], batches: int, dtype: str) -> tuple[float, float]:
    """Median ms per batch in a DataLoader worker: default collate, np.stack."""
    loader = DataLoader(
        Blank(shape, BATCH * batches, dtype),
        batch_size=BATCH,
        num_workers=WORKERS,
        collate_fn=timed_collate,
        multiprocessing_context="fork",
    )
    times = np.stack([batch["ms"].numpy() for batch in loader][WORKERS:])
    default, stacked = np.median(times, axis=0).tolist()
    return default, stacked


def _children() -> list[int]:
    """The process ids of this process's children (the DataLoader's workers)."""
    return [
        int(pid)
        for task in Path("/proc/self/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]


def _cpu_ns(pids: Sequence[int]) -> int:
    """CPU time (ns) of every thread of these processes so far (schedstat: ns, not ticks)."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, IndexError, ValueError):
                continue  # a thread that ended meanwhile
    return total


def loader_rate(
    dataset: Dataset,
    batches: int,
    dtype: torch.dtype = torch.float32,
    collate_fn: Callable[[list[Any]], Any] = default_collate,
) -> tuple[float, float]:
    """Items/s and CPU us per item of a shuffled 2-worker DataLoader after a warm-up.

    One epoch of as many shuffled passes over the dataset as the batches need (each pass
    a new permutation, `RandomSampler(num_samples=)`): the corpus's 88 frames make 5
    batches a pass, and an epoch's restart (the workers' queue drained, then filled
    again) each 5 batches would weigh in the rate as it never does on a training set of
    thousands of frames, where it comes once an epoch. The CPU is the workers' (every
    thread) and this process's, over the timed batches.
    """
    generator = torch.Generator().manual_seed(0)
    sampler = RandomSampler(
        dataset,  # type: ignore[arg-type]
        num_samples=BATCH * (WORKERS + batches),
        generator=generator,
    )
    loader = DataLoader(
        dataset,
        batch_size=BATCH,
        sampler=sampler,
        drop_last=True,
        num_workers=WORKERS,
        multiprocessing_context="fork",
        collate_fn=collate_fn,
    )
    assert len(dataset) >= BATCH, f"{len(dataset)} items: not one batch"  # type: ignore[arg-type]
    items, started = 0, 0.0
    workers: list[int] = []
    cpu = 0
    for k, batch in enumerate(loader, 1):
        if k <= WORKERS:  # one untimed batch per worker: their start
            workers = _children()
            cpu = _cpu_ns(workers) + time.process_time_ns()
            started = time.monotonic()
            continue
        assert batch["pixels"].dtype == dtype
        items += len(batch["pixels"])
        if k == WORKERS + batches:  # the workers' CPU read while they still run
            rate = items / (time.monotonic() - started)
            cpu = _cpu_ns(workers) + time.process_time_ns() - cpu
            return rate, cpu / items / 1000
    raise AssertionError(f"the loader gave {k} batches, not {WORKERS + batches}")


def codec_rate(frames: FrameDataset, count: int) -> tuple[float, float]:
    """Frames/s of 2 processes decoding `count` of the dataset's frames with their codec,
    and the CPU us per frame of decoding the same frames in this process."""
    pixels = open_archive(frames.archive_path).pixels
    rng = np.random.default_rng(0)
    part = []
    for i in rng.integers(0, len(frames), count).tolist():
        _, a, frame, _, _ = frames.table[i].tolist()
        chunks = pixels.read_chunks(frames.arrays[a], frame, frame + 1)
        part.append((pixels.spec(frames.arrays[a]), chunks))
    tasks = [("codec", CodecAlone(), [part[k::WORKERS] for k in range(WORKERS)])]
    (row,) = run_tasks(tasks, WORKERS, start_method="fork")
    started = time.process_time_ns()
    CodecAlone().read(part)
    cpu = (time.process_time_ns() - started) / len(part) / 1000
    return float(row["frames_per_s"]), cpu


@pytest.fixture(scope="module", params=["corpus", "synth"])
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One case's CT: its files, its archives (but PATCHES_ONLY's) and its train series."""
    root = tmp_path_factory.mktemp(f"training-{request.param}")
    if request.param == "corpus":
        files = corpus_inputs({"CT"}, lossless=True)
    else:
        from pacs_engine.synth import write_studies

        written = write_studies(root / "synth", **SYNTH, modalities=("CT",), seed=5)
        files = [str(p) for p in written]
    for path in files:  # page cache
        Path(path).read_bytes()
    archives = {name: ingest(root, name, files) for name in ARCHIVES if name not in PATCHES_ONLY}
    series = train_series(archives["record"])
    return {"name": request.param, "root": root, "files": files, **archives, "series": series}


def ingest(root: Path, name: str, files: list[str]) -> Path:
    """The archive `name` of ARCHIVES, created under `root` with `files` ingested."""
    path = root / name.replace(" ", "-")
    with Archive.create(path, **ARCHIVES[name]) as archive:
        assert archive.ingest(files, workers=0).balanced
    return path


@pytest.fixture(scope="module", autouse=True)
def summary() -> Iterator[None]:
    """Prints, after the module's tests, each target's figure beside its bound."""
    yield
    if not SUMMARY:
        return
    lines = [
        "",
        "summary, issue 15's targets: each figure beside its bound (ours / pydicom, or / the "
        "codec alone; by rate and by the baseline's CPU per item over ours)",
        f"  {'target':<56}  {'figure rate':>11}  {'figure CPU':>11}  "
        f"{'bound rate':>11}  {'bound CPU':>11}",
    ]
    for label, figure, bound in SUMMARY:
        cells = [f"{v:.2f}x" if not math.isnan(v) else "-" for v in (*figure, *bound)]
        lines.append(f"  {label:<56}  " + "  ".join(f"{c:>11}" for c in cells))
    print("\n".join(lines))


def frame_datasets(case: dict) -> tuple[dict[str, FrameDataset], PydicomFrames]:
    """The 512x512 HU frames of the training series from both archives, and pydicom's."""
    frames = {
        name: FrameDataset(case[name], case["series"], rescale=True, shape=FRAME, grayscale=True)
        for name in ("record", "copy")
    }
    where = [
        (original_file(frames["record"].archive_path, frames["record"].instances[i]), f)
        for _, _, _, i, f in frames["record"].table.tolist()
    ]
    return frames, PydicomFrames(where)


def per_item(dataset: Dataset, indices: list[int]) -> tuple[float, float]:
    """CPU us and Python function calls per item of reading `indices`, in this process."""
    started = time.process_time_ns()
    for i in indices:
        dataset[i]
    cpu = (time.process_time_ns() - started) / len(indices) / 1000
    profile = cProfile.Profile()
    profile.enable()
    for i in indices:
        dataset[i]
    profile.disable()
    return cpu, pstats.Stats(profile).total_calls / len(indices)  # type: ignore[attr-defined]


def test_per_item_cost(case: dict) -> None:
    frames, pydicom_frames = frame_datasets(case)
    rng = np.random.default_rng(0)
    order = rng.permutation(np.resize(np.arange(len(pydicom_frames)), ITEMS)).tolist()
    datasets = {
        "frames record, one process": frames["record"],
        "frames copy, one process": frames["copy"],
        "frames pydicom, one process": pydicom_frames,
    }
    # Row labels unique across the cases: ab_compare.py names the figures by them.
    tag = f"{case['name']}: "
    lines = [
        "",
        f"per item, {case['name']} CT, num_workers=0, {ITEMS} shuffled reads after a warm-up",
        f"  {'dataset':<48}  {'CPU us/item':>12}  {'calls/item':>12}",
    ]
    for name, dataset in datasets.items():
        for i in order[:WARM]:
            dataset[i]  # the process's handles, caches and page cache
        cpu, calls = per_item(dataset, order)
        lines.append(f"  {tag + name:<48}  {cpu:>12,.1f}  {calls:>12,.1f}")
    by_syntax: dict[str, list[int]] = defaultdict(list)
    for k, (path, _) in enumerate(pydicom_frames.where):
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        by_syntax[str(meta.TransferSyntaxUID.name)].append(k)
    lines.append(f"  {'pydicom by original syntax':<48}  {'CPU us/item':>12}  {'items':>12}")
    for syntax, ks in sorted(by_syntax.items()):
        cpu, _ = per_item(pydicom_frames, ks)
        lines.append(f"  {tag + syntax:<48}  {cpu:>12,.1f}  {len(ks):>12}")
    print("\n".join(lines))


def test_frame_rates(case: dict) -> None:
    series = case["series"]
    rates: dict[str, tuple[float, float]] = {}
    frames, pydicom_frames = frame_datasets(case)
    rates["frames record"] = loader_rate(frames["record"], FRAME_BATCHES)
    rates["frames record, collate"] = loader_rate(
        frames["record"], FRAME_BATCHES, collate_fn=collate
    )
    rates["frames copy"] = loader_rate(frames["copy"], FRAME_BATCHES)
    rates["frames copy, collate"] = loader_rate(frames["copy"], FRAME_BATCHES, collate_fn=collate)
    rates["frames pydicom"] = loader_rate(pydicom_frames, FRAME_BATCHES)
    rates["frames codec alone"] = codec_rate(frames["record"], BATCH * FRAME_BATCHES)
    rates["frames, blank items"] = loader_rate(Blank(FRAME, len(frames["record"])), FRAME_BATCHES)
    rates["frames copy, pixels only"] = loader_rate(PixelsOnly(frames["copy"]), FRAME_BATCHES)
    slim = FrameDataset(
        case["copy"], series, rescale=True, shape=FRAME, grayscale=True, geometry=False
    )
    rates["frames copy, geometry=False"] = loader_rate(slim, FRAME_BATCHES)
    # Items half the bytes: HU as int16 (exact for CT's integer slope and intercept).
    int16 = FrameDataset(case["copy"], series, rescale=True, dtype="int16", shape=FRAME)
    rates["frames copy, int16"] = loader_rate(int16, FRAME_BATCHES, torch.int16)
    blank = Blank(FRAME, len(frames["record"]), "int16")
    rates["frames, blank items int16"] = loader_rate(blank, FRAME_BATCHES, torch.int16)
    # (ours, baseline): the rate ratio, and the baseline's CPU per item over ours.
    pairs = {
        "record / codec alone (>= 0.8)": ("frames record", "frames codec alone"),
        "record, collate / codec alone (>= 0.8)": ("frames record, collate", "frames codec alone"),
        "record / pydicom, frames (> 1)": ("frames record", "frames pydicom"),
        "record, collate / pydicom, frames (> 1)": ("frames record, collate", "frames pydicom"),
        "bound: codec alone / pydicom, frames": ("frames codec alone", "frames pydicom"),
        "copy / pydicom, frames (>= 5)": ("frames copy", "frames pydicom"),
        "copy, collate / pydicom, frames (>= 5)": ("frames copy, collate", "frames pydicom"),
        "bound: blank items / pydicom, frames": ("frames, blank items", "frames pydicom"),
        "copy pixels only / pydicom, frames": ("frames copy, pixels only", "frames pydicom"),
        "copy geometry=False / pydicom, frames": (
            "frames copy, geometry=False",
            "frames pydicom",
        ),
        "copy / blank items, frames": ("frames copy", "frames, blank items"),
        "copy int16 / pydicom, frames": ("frames copy, int16", "frames pydicom"),
        "bound: blank int16 / pydicom, frames": ("frames, blank items int16", "frames pydicom"),
    }
    ratios = {
        name: (rates[ours][0] / rates[base][0], rates[base][1] / rates[ours][1])
        for name, (ours, base) in pairs.items()
    }
    lines = [
        "",
        f"training loop, {case['name']} CT: {len(frames['record'])} frames of 512x512 "
        f"in {len(series)} training series; DataLoader {WORKERS} workers, batch {BATCH}",
    ]
    print("\n".join(lines + _table(case["name"], rates, ratios, FRAME)))
    tag = f"{case['name']}: frames "
    # A loader item of the record costs at least the codec's CPU plus a blank item's.
    floor = rates["frames codec alone"][1] + rates["frames, blank items"][1]
    codec = (1.0, rates["frames codec alone"][1] / floor)
    for name in ("record / codec alone (>= 0.8)", "record, collate / codec alone (>= 0.8)"):
        SUMMARY.append((tag + name, ratios[name], codec))
    bound = (ratios["bound: codec alone / pydicom, frames"][0], rates["frames pydicom"][1] / floor)
    for name in ("record / pydicom, frames (> 1)", "record, collate / pydicom, frames (> 1)"):
        SUMMARY.append((tag + name.replace(", frames", ""), ratios[name], bound))
    for name in (
        "copy / pydicom, frames (>= 5)",
        "copy, collate / pydicom, frames (>= 5)",
        "copy geometry=False / pydicom, frames",
    ):
        label = tag + name.replace(", frames", "")
        SUMMARY.append((label, ratios[name], ratios["bound: blank items / pydicom, frames"]))


def _table(
    case_name: str,
    rates: dict[str, tuple[float, float]],
    ratios: dict[str, tuple[float, float]],
    shape: tuple[int, ...],
) -> list[str]:
    """The lines of the rates, the ratios and the collate times of items of `shape`."""
    collate = {dtype: collate_ms(shape, BATCHES, dtype) for dtype in ("float32", "int16")}
    lines = []
    # Row labels unique across the cases: ab_compare.py names the figures by them.
    tag = f"{case_name}: "
    lines.append(f"  {'loader':<48}  {'items/s':>10}  {'CPU us/item':>12}")
    lines += [
        f"  {tag + name:<48}  {rate:>10,.1f}  {'-' if math.isnan(cpu) else f'{cpu:,.0f}':>12}"
        for name, (rate, cpu) in rates.items()
    ]
    lines.append(f"  {'ratio':<48}  {'rate':>10}  {'CPU':>12}")
    lines += [
        f"  {tag + name:<48}  {rate:>9.2f}x  {'-' if math.isnan(cpu) else f'{cpu:.2f}x':>12}"
        for name, (rate, cpu) in ratios.items()
    ]
    lines += [
        f"  collate {BATCH} x {shape} {dtype} in a worker: default {ms[0]:.1f} ms, "
        f"np.stack {ms[1]:.1f} ms"
        for dtype, ms in collate.items()
    ]
    return lines


class ChunksAlone:
    """The codec alone on a patch's chunks, as the record decodes them: per slice, the
    frame's stored chunks (read beforehand) through `decode_frame` with the patch's
    window, into one array of the patch's stack. A tiled JPEG-LS frame decodes only the
    tiles the window overlaps, in one native call (`decode_tiles`); an untiled frame (an
    original bitstream, never tiled) decodes whole and is cut."""

    def __init__(self, patches: PatchDataset, count: int) -> None:
        pixels = open_archive(patches.archive_path).pixels
        chunks: dict[tuple[int, int], list[bytes]] = {}  # a frame's chunks, read once
        self.work: list[tuple[list[tuple[Any, list[bytes]]], tuple[slice, slice]]] = []
        for i in range(count):
            s, _, (z, y, x) = patches.draw(i)
            dz, dy, dx = patches.patch_size
            slices = []
            for a, f in patches.where[s][z : z + dz].tolist():
                if (a, f) not in chunks:
                    chunks[a, f] = pixels.read_chunks(patches.arrays[a], f, f + 1)
                slices.append((pixels.spec(patches.arrays[a]), chunks[a, f]))
            self.work.append((slices, (slice(y, y + dy), slice(x, x + dx))))

    def __len__(self) -> int:
        return len(self.work)

    def __getitem__(self, i: int) -> int:
        slices, window = self.work[i]
        first = slices[0][0]
        out = np.empty((len(slices), *window_shape(first, window)), first.dtype)
        for k, (spec, chunks) in enumerate(slices):
            decode_frame(spec, chunks, out[k], window)
        return out.size

    def layout(self) -> str:
        """What the slices decoded are stored as, and chunks decoded per slice (mean)."""
        kinds: Counter[str] = Counter()
        decoded = []
        for slices, (rows, columns) in self.work:
            for spec, _ in slices:
                _, r, c, *_ = spec.chunk_shape
                tiled = f"tiles of {r}" if spec.tile is not None else "whole"
                kinds[f"{spec.codec_name} {tiled}"] += 1
                down = -(-rows.stop // r) - rows.start // r
                decoded.append(down * (-(-columns.stop // c) - columns.start // c))
        shares = ", ".join(f"{kind} {n / sum(kinds.values()):.0%}" for kind, n in kinds.items())
        return f"slices stored as {shares}; {np.mean(decoded):.1f} chunks decoded a slice"


def test_patch_rates(case: dict) -> None:
    """32x128x128 HU patches at random corners (as `PatchDataset` draws them) through the
    loader, and per patch in one process: CPU and calls of the tiled archive of record,
    of pydicom reading the patch's 32 files, and of the codec alone on the patch's chunks
    (the bound of the tiled record: it cannot beat pydicom by more)."""
    series = case["series"]
    for name in PATCHES_ONLY:
        case[name] = ingest(case["root"], name, case["files"])
    patches = {
        name: PatchDataset(
            case[name],
            PATCH,
            samples=BATCH * (BATCHES + WORKERS),
            seed=1,
            series_uids=series,
            rescale=True,
            subset=True,
        )
        for name in ARCHIVES
    }
    rates: dict[str, tuple[float, float]] = {}
    with open_archive(case["record"]) as archive:
        paths = [
            [
                original_file(str(case["record"]), str(row["SOPInstanceUID"]))
                for row in plan_volume(archive.index.series(uid), subset=True).rows
            ]
            for uid in patches["record"].series_uids
        ]
    rates["patches record"] = loader_rate(patches["record"], PATCH_BATCHES)
    rates["patches copy"] = loader_rate(patches["copy"], BATCHES)
    rates["patches record tiled"] = loader_rate(patches["record tiled"], PATCH_BATCHES)
    rates["patches copy tiled"] = loader_rate(patches["copy tiled"], BATCHES)
    rates["patches raw copy"] = loader_rate(patches["raw copy"], BATCHES)
    rates["patches raw copy tiled"] = loader_rate(patches["raw copy tiled"], BATCHES)
    rates["patches copy, collate"] = loader_rate(patches["copy"], BATCHES, collate_fn=collate)
    rates["patches copy tiled, collate"] = loader_rate(
        patches["copy tiled"], BATCHES, collate_fn=collate
    )
    rates["patches, blank items"] = loader_rate(Blank(PATCH, len(patches["copy"])), BATCHES)
    int16_patches = PatchDataset(
        case["copy tiled"],
        PATCH,
        samples=BATCH * (BATCHES + WORKERS),
        seed=1,
        series_uids=series,
        rescale=True,
        subset=True,
        dtype="int16",
    )
    rates["patches copy tiled, int16"] = loader_rate(int16_patches, BATCHES, torch.int16)
    blank = Blank(PATCH, len(patches["copy"]), "int16")
    rates["patches, blank items int16"] = loader_rate(blank, BATCHES, torch.int16)
    rates["patches pydicom"] = loader_rate(PydicomPatches(patches["record"], paths), PATCH_BATCHES)
    # Per patch, in this process (num_workers=0): what the loader's rates are made of.
    alone = ChunksAlone(patches["record tiled"], ITEMS // 4)
    order = list(range(len(alone)))
    per_patch = {
        "record tiled, one process": patches["record tiled"],
        "pydicom, one process": PydicomPatches(patches["record"], paths),
        "codec alone on its chunks, one process": alone,
    }
    lines = [
        "",
        f"patches {PATCH}, {case['name']} CT: {len(series)} training series; "
        f"tiles of {TILE}, random corners; DataLoader {WORKERS} workers, batch {BATCH}",
        f"  {'per patch, num_workers=0':<48}  {'CPU ms':>10}  {'calls':>12}",
    ]
    cost = {}
    for name, dataset in per_patch.items():
        for i in order[:4]:
            dataset[i]  # the process's handles, caches and page cache
        cost[name] = per_item(dataset, order)
        cpu, calls = cost[name]
        lines.append(f"  {case['name'] + ': ' + name:<48}  {cpu / 1000:>10.2f}  {calls:>12,.0f}")
    pydicom_cpu = cost["pydicom, one process"][0]
    for name in ("record tiled, one process", "codec alone on its chunks, one process"):
        label = f"{case['name']}: pydicom / {name.split(',')[0]}, CPU per patch"
        lines.append(f"  {label:<48}  {pydicom_cpu / cost[name][0]:>9.2f}x")
    lines.append(f"  ({case['name']}, tiled record: {alone.layout()})")
    pairs = {
        "record / pydicom, patches (>= 2)": ("patches record", "patches pydicom"),
        "copy / pydicom, patches (>= 20)": ("patches copy", "patches pydicom"),
        "record tiled / pydicom, patches (>= 2)": ("patches record tiled", "patches pydicom"),
        "copy tiled / pydicom, patches (>= 20)": ("patches copy tiled", "patches pydicom"),
        "raw copy / pydicom, patches (>= 20)": ("patches raw copy", "patches pydicom"),
        "raw copy tiled / pydicom, patches (>= 20)": (
            "patches raw copy tiled",
            "patches pydicom",
        ),
        "copy, collate / pydicom, patches (>= 20)": ("patches copy, collate", "patches pydicom"),
        "copy tiled, collate / pydicom, patches (>= 20)": (
            "patches copy tiled, collate",
            "patches pydicom",
        ),
        "bound: blank items / pydicom, patches": ("patches, blank items", "patches pydicom"),
        "copy tiled / blank items, patches": ("patches copy tiled", "patches, blank items"),
        "copy tiled int16 / pydicom, patches": ("patches copy tiled, int16", "patches pydicom"),
    }
    ratios = {
        name: (rates[ours][0] / rates[base][0], rates[base][1] / rates[ours][1])
        for name, (ours, base) in pairs.items()
    }
    print("\n".join(lines + _table(case["name"], rates, ratios, PATCH)))
    tag = f"{case['name']}: patches "
    codec_bound = (math.nan, pydicom_cpu / cost["codec alone on its chunks, one process"][0])
    one_process = (math.nan, pydicom_cpu / cost["record tiled, one process"][0])
    record = ratios["record tiled / pydicom, patches (>= 2)"]
    SUMMARY.append((tag + "record tiled / pydicom (>= 2)", record, codec_bound))
    SUMMARY.append((tag + "record tiled / pydicom, one process", one_process, codec_bound))
    for name in (
        "copy / pydicom, patches (>= 20)",
        "copy tiled / pydicom, patches (>= 20)",
        "raw copy / pydicom, patches (>= 20)",
        "raw copy tiled / pydicom, patches (>= 20)",
        "copy, collate / pydicom, patches (>= 20)",
        "copy tiled, collate / pydicom, patches (>= 20)",
    ):
        label = tag + name.replace(", patches", "")
        SUMMARY.append((label, ratios[name], ratios["bound: blank items / pydicom, patches"]))
