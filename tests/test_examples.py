"""examples/train_ct.py runs as written on corpus CT: a few steps, patients split, finite losses."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CORPUS, ROOT, require_corpus

from pacs_engine import Archive, open_archive

# Three CT patients: two Philips volumes (one patient), two single 512x512 slices
# (another) and a 128x128 slice (a third), with 256x512 scouts and colour captures.
FOLDERS = [
    "dcm_qa_ct/Philips/S21570/S2010",
    "dcm_qa_ct/Philips/S21610/S3010",
    "dcm_qa_ct/Philips/S21570/S4010",
]
FILES = [
    "pydicom/test_files/CT_small.dcm",
    "pydicom-data/693_J2KR.dcm",
    "pylibjpeg-data/JPEGLS/CT1_JLSN.dcm",
]
STEPS = 2


@pytest.fixture(scope="module")
def ct_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_corpus()
    files = [p for d in FOLDERS for p in sorted((CORPUS / d).iterdir()) if p.name != "DIRFILE"]
    files += [CORPUS / name for name in FILES]
    root = tmp_path_factory.mktemp("example") / "archive"
    with Archive.create(root) as archive:
        assert archive.ingest(files, workers=0).balanced
    return root


def test_train_ct_example_trains_both_models_on_split_patients(ct_archive: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, str(ROOT / "examples" / "train_ct.py"), str(ct_archive)]
    command += ["--steps", str(STEPS), "--batch", "4", "--workers", "2"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    # Each dataset's report is printed: the colour captures left out, other sizes resampled.
    assert "excluded: 3 instances, not grayscale (SamplesPerPixel > 1)" in done.stdout
    assert "frame size 128x128, other sizes: resample" in done.stdout
    for model in ("2d", "3d"):
        assert summary[model]["steps"] == STEPS
        assert all(math.isfinite(loss) for loss in summary[model]["losses"])
    assert math.isfinite(summary["2d"]["val_loss"])
    # The split is by patient: the series of each side belong to disjoint patients,
    # and together they are every CT series of the archive.
    with open_archive(ct_archive) as archive:
        series = {
            r["SeriesInstanceUID"]: r["PatientID"] for r in archive.query("series", Modality="CT")
        }
    train, val = summary["train_series"], summary["val_series"]
    assert sorted(train + val) == sorted(series)
    assert train and val
    assert not {series[uid] for uid in train} & {series[uid] for uid in val}
    seen_train = set(summary["2d"]["train_patients"]) | set(summary["3d"]["train_patients"])
    assert seen_train <= {series[uid] for uid in train}
    assert set(summary["2d"]["val_patients"]) == {series[uid] for uid in val}
