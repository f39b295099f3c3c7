"""Checks that replaced what the type checker could not prove: clear errors, not crashes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from pacs_engine.archive.blobs import ENCAPSULATED, NATIVE, WHOLE, HeaderBlob
from pacs_engine.archive.pixel_store import array_spec
from pacs_engine.archive.prepare import Prepared, PrepareError, rebuild_file
from pacs_engine.codecs.sharding import write_shard
from pacs_engine.header import Header
from pacs_engine.storage import legacy_series_folder, series_folder, series_folders


def test_series_folders_are_todays_and_the_legacy_one() -> None:
    dicom_uid = "1.2.840.113619.2.55.3"
    assert series_folders(dicom_uid) == {dicom_uid}
    odd_uid = "study A"  # not of DICOM's form: a digest today, the UID itself before
    folders = series_folders(odd_uid)
    assert folders == {series_folder(odd_uid), "study A"}
    assert series_folder(odd_uid).startswith("uid-")
    unsafe = "../escaped"  # never a folder name, so no legacy folder
    assert legacy_series_folder(unsafe) is None
    assert series_folders(unsafe) == {series_folder(unsafe)}


def test_rebuild_file_names_what_is_missing() -> None:
    native = HeaderBlob(NATIVE, b"head", b"tail")
    with pytest.raises(PrepareError, match="native pixel data, but no frames"):
        rebuild_file(native, None, True, "OW", None, None)
    encapsulated = HeaderBlob(ENCAPSULATED, b"head", b"tail", fragment_lengths=((3,),))
    with pytest.raises(PrepareError, match="encapsulated pixel data, but no bitstreams"):
        rebuild_file(encapsulated, None, True, "OB", None, None)
    # A blob keeping the whole file needs neither.
    assert rebuild_file(HeaderBlob(WHOLE, b"file"), None, True, None, None, None) == b"file"


def test_prepared_without_pixels_has_no_layout_or_frames() -> None:
    header = Header(
        path="x.dcm",
        attributes={},
        transfer_syntax_uid=None,
        has_preamble=True,
        has_file_meta=True,
        dataset_offset=132,
        explicit_vr=True,
        little_endian=True,
        deflated=False,
        file_size=132,
        pixel=None,
        data_size=132,
    )
    prepared = Prepared("x.dcm", "0" * 64, 132, header, HeaderBlob(WHOLE, b""))
    with pytest.raises(PrepareError, match="no pixel data"):
        _ = prepared.pixel_layout
    with pytest.raises(PrepareError, match="no native frames"):
        _ = prepared.native_frames


def test_array_spec_refuses_an_unsharded_array(tmp_path: Path) -> None:
    array = zarr.create_array(tmp_path / "plain", shape=(2, 4, 4), chunks=(1, 4, 4), dtype="u2")
    with pytest.raises(ValueError, match="archive arrays are sharded"):
        array_spec(array.metadata.to_dict())


def test_write_shard_refuses_a_zarr_v2_array(tmp_path: Path) -> None:
    array = zarr.create_array(
        tmp_path / "v2", shape=(2, 4, 4), chunks=(1, 4, 4), dtype="u2", zarr_format=2
    )
    with pytest.raises(TypeError, match="zarr v3 array"):
        write_shard(array, (0, 0, 0), [np.zeros((4, 4), "u2").tobytes()])
