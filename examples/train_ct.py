"""Train a tiny 2-D and a tiny 3-D model for a few steps on the CT of an archive.

    python examples/train_ct.py ARCHIVE [--steps 20] [--workers 2] [--batch 16]

The walk-through is docs/training.md. What it shows:

- the selection by a query (`from_query(archive, Modality="CT", ...)`), with the
  report of what each dataset holds and what it left out;
- a patient-level split: every series of a patient on one side (PatientID from the
  series records of `archive.query`), so no patient is seen in training and validation;
- float32 HU frames of one size (`shape=`, resampled) that PyTorch's default collate
  batches, read by a DataLoader with worker processes and shuffling;
- 3-D patches (8 x 64 x 64 HU) with their spacing and RAS affine;
- two tiny autoencoders (a Conv2d and a Conv3d one), a few Adam steps each, then
  the validation loss.

It prints one line per step and, last, a JSON summary (steps, losses, the split).
The guard `if __name__ == "__main__":` is needed: DataLoader workers started with
"spawn" import this file again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from pacs_engine import open_archive
from pacs_engine.read import FrameDataset, PatchDataset

FRAME_SHAPE = (128, 128)  # frames resampled to this size: small and fast for a demo
PATCH_SIZE = (8, 64, 64)  # (slices, rows, columns)
HU_SCALE = 1000.0  # HU / 1000: values of order one for the network


def patient_split(archive_path: str, validation: float = 0.25) -> tuple[list[str], list[str]]:
    """CT series UIDs for training and validation, every patient's series on one side.

    A patient goes to validation when the hash of its PatientID falls in the first
    `validation` of the range: stable across runs and archives, and at least one
    patient on each side when there are two.
    """
    by_patient: dict[str, list[str]] = defaultdict(list)
    with open_archive(archive_path) as archive:
        for record in archive.query(level="series", Modality="CT"):
            by_patient[str(record["PatientID"] or "")].append(str(record["SeriesInstanceUID"]))
    patients = sorted(by_patient, key=lambda p: hashlib.sha256(p.encode()).hexdigest())
    if len(patients) < 2:
        raise SystemExit(f"a patient-level split needs two CT patients, the archive has {patients}")
    held_out = max(1, math.floor(len(patients) * validation))
    train = [uid for p in patients[held_out:] for uid in by_patient[p]]
    val = [uid for p in patients[:held_out] for uid in by_patient[p]]
    return train, val


def autoencoder(dims: int) -> nn.Module:
    """A tiny convolutional autoencoder over 2-D or 3-D single-channel images."""
    conv, up = (nn.Conv2d, nn.ConvTranspose2d) if dims == 2 else (nn.Conv3d, nn.ConvTranspose3d)
    return nn.Sequential(
        conv(1, 8, 3, stride=2, padding=1), nn.ReLU(), up(8, 1, 4, stride=2, padding=1)
    )


def batches(loader: DataLoader, steps: int) -> Iterator[dict[str, Any]]:
    """`steps` batches, going round the loader again when it runs out."""
    taken = 0
    while taken < steps:
        for batch in loader:
            yield batch
            taken += 1
            if taken == steps:
                return


def train(
    model: nn.Module, loader: DataLoader, val_loader: DataLoader | None, steps: int, name: str
) -> dict[str, Any]:
    """`steps` Adam steps of reconstruction (MSE on HU / 1000), then the validation loss."""
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses, seen = [], set()
    model.train()
    for step, batch in enumerate(batches(loader, steps)):
        seen.update(batch["patient_id"])
        x = batch["pixels"][:, None] / HU_SCALE  # (batch, channel, [slices,] rows, columns)
        loss = nn.functional.mse_loss(model(x), x)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        patients = len(set(batch["patient_id"]))
        print(f"{name} step {step}: loss {losses[-1]:.4f} ({len(x)} items, {patients} patients)")
    val_loss, val_seen = None, set()
    if val_loader is not None:
        model.eval()
        with torch.no_grad():
            total = count = 0.0
            for batch in val_loader:
                val_seen.update(batch["patient_id"])
                x = batch["pixels"][:, None] / HU_SCALE
                total += float(nn.functional.mse_loss(model(x), x, reduction="sum"))
                count += x.numel()
        val_loss = total / count
        print(f"{name} validation loss {val_loss:.4f}")
    return {
        "steps": len(losses),
        "losses": losses,
        "val_loss": val_loss,
        "train_patients": sorted(seen),
        "val_patients": sorted(val_seen),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train both models on the archive's CT and return the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", help="the archive's folder")
    parser.add_argument("--steps", type=int, default=20, help="training steps per model (20)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (2)")
    parser.add_argument("--batch", type=int, default=16, help="batch size (16)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    train_uids, val_uids = patient_split(args.archive)
    loader_options = {"batch_size": args.batch, "num_workers": args.workers}

    # 2-D: every CT frame as float32 HU, resampled to one size so batches stack.
    frames = {
        side: FrameDataset(
            args.archive,
            series_uids=uids,
            rescale=True,
            grayscale=True,
            shape=FRAME_SHAPE,
            on_mismatch="resample",
            fields=("SeriesDescription",),
        )
        for side, uids in (("train", train_uids), ("val", val_uids))
    }
    for side, dataset in frames.items():
        print(f"2-D {side}: {dataset.report()}")
    summary: dict[str, Any] = {"train_series": train_uids, "val_series": val_uids}
    summary["2d"] = train(
        autoencoder(2),
        DataLoader(frames["train"], shuffle=True, **loader_options),
        DataLoader(frames["val"], **loader_options) if len(frames["val"]) else None,
        args.steps,
        "2-D",
    )

    # 3-D: random 8x64x64 HU patches of the training series that are one volume.
    patches = PatchDataset(
        args.archive,
        PATCH_SIZE,
        samples=args.steps * args.batch,
        series_uids=train_uids,
        rescale=True,
        subset=True,
    )
    print(f"3-D train: {patches.report()}")
    first = patches[0]
    print(f"a patch: spacing {first['spacing'].tolist()} mm, RAS affine\n{first['affine_ras']}")
    summary["3d"] = train(
        autoencoder(3), DataLoader(patches, shuffle=True, **loader_options), None, args.steps, "3-D"
    )
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
