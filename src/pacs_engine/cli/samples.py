"""`pacs-engine samples`: the folder of DICOM sample files shipped with pydicom."""

from __future__ import annotations

import argparse


def add_subparser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `samples`."""
    samples = commands.add_parser(
        "samples", help="print the folder of DICOM sample files shipped with pydicom"
    )
    samples.set_defaults(run=cmd_samples)


def cmd_samples(args: argparse.Namespace) -> int:
    """Print the folder of real DICOM sample files that ships with pydicom."""
    from pacs_engine.sources import sample_data_dir

    print(sample_data_dir())
    return 0
