"""One exception base: every exception class of pacs_engine is a PacsEngineError, pickles, keeps
its standard base."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil

import pytest

import pacs_engine
from pacs_engine import PacsEngineError
from pacs_engine.archive.archive import ArchiveError, ExportError, UnknownInstance
from pacs_engine.archive.blobs import BlobError
from pacs_engine.archive.corrections import CorrectionError
from pacs_engine.archive.pixel_store import ArrayMetadataError, ShardError
from pacs_engine.archive.prepare import NoDecoder, PrepareError
from pacs_engine.archive.verify_plan import VerifySelectionError
from pacs_engine.codecs import CodecError, NoDecoderError
from pacs_engine.codecs.native import LayoutError
from pacs_engine.deid.bytelevel import Fallback
from pacs_engine.deid.engine import DeidError
from pacs_engine.deid.key import KeyFileError
from pacs_engine.deid.profile import ProfileError
from pacs_engine.errors import ScanError
from pacs_engine.executors import ExecutorError
from pacs_engine.index.integrity import DamagedIndexError
from pacs_engine.index.query import QueryError
from pacs_engine.ingest.encode import Part
from pacs_engine.ingest.inputs import InputError, InputTooLarge, _NotRegular
from pacs_engine.ingest.run import IngestStopped, PartFailed
from pacs_engine.ingest.session import StaleSession
from pacs_engine.read import VolumeError
from pacs_engine.read.modality import ModalityError
from pacs_engine.serve.config import ConfigError
from pacs_engine.serve.find import QueryRefused
from pacs_engine.serve.migrate import MigrationError
from pacs_engine.serve.retrieve import NotSendable
from pacs_engine.serve.web.auth import InvalidCredentials, KeyStoreError
from pacs_engine.serve.web.qido import BadQuery
from pacs_engine.serve.web.render import RenderError
from pacs_engine.serve.web.stow import BodyTooLarge, MalformedBody

#: One instance of each exception class, built as the code builds it, with the standard
#: bases callers catch it by (`except ValueError`), which it had before PacsEngineError.
_PART = Part("1.2.3", base=0, span=64, keys=("a.dcm", "b.dcm"))
EXAMPLES: dict[type[BaseException], tuple[BaseException, tuple[type[BaseException], ...]]] = {
    PacsEngineError: (PacsEngineError("anything"), (Exception,)),
    ScanError: (ScanError("/in/x.dcm", 132, "truncated element"), (ValueError,)),
    InputError: (InputError("in.zip/x.dcm", "cannot read"), (Exception,)),
    InputTooLarge: (InputTooLarge("big.dcm", "too large"), (InputError,)),
    _NotRegular: (_NotRegular("/in/fifo is not a file"), (OSError,)),
    CodecError: (CodecError("8 bits needed"), (ValueError,)),
    NoDecoderError: (
        NoDecoderError("no decoder for RLE Lossless, Bits Allocated 1"),
        (CodecError,),
    ),
    IngestStopped: (IngestStopped("disk full"), (RuntimeError,)),
    ExecutorError: (ExecutorError("the Dask executor needs dask.distributed"), (RuntimeError,)),
    PartFailed: (PartFailed(_PART, ValueError("bad frame")), (RuntimeError,)),
    StaleSession: (StaleSession("replaced"), (RuntimeError,)),
    VolumeError: (VolumeError("gap", ["1.2.3.4", "1.2.3.5"]), (ValueError,)),
    ModalityError: (ModalityError("instance 1.2.3: its Modality LUT ..."), (ValueError,)),
    DamagedIndexError: (DamagedIndexError("index.lmdb: page 3"), (RuntimeError,)),
    LayoutError: (LayoutError("Rows is 'x'"), (ValueError,)),
    ArrayMetadataError: (ArrayMetadataError("zarr.json: not JSON"), (ValueError,)),
    ShardError: (ShardError("s/k: frame 3: its shard file is missing"), (ValueError,)),
    PrepareError: (PrepareError("no pixel data"), (ValueError,)),
    NoDecoder: (NoDecoder("no decoder for RLE Lossless, Bits Allocated 1"), (PrepareError,)),
    ArchiveError: (ArchiveError("locked"), (RuntimeError,)),
    ExportError: (ExportError("damaged shard"), (ArchiveError,)),
    UnknownInstance: (UnknownInstance("no instance 1.2.3"), (ExportError, KeyError)),
    BlobError: (BlobError("bad blob"), (ValueError,)),
    ConfigError: (ConfigError("serve.toml [dimse]: unknown key(s) prot"), (ValueError,)),
    QueryError: (QueryError("PatientId: not a keyword"), (ValueError,)),
    QueryRefused: (QueryRefused(0xA900, "StudyDate: not a date range"), (ValueError,)),
    NotSendable: (NotSendable("no context for 1.2.840.10008.1.2.4.80"), (ValueError,)),
    VerifySelectionError: (VerifySelectionError("--sample: 2.0 is not in (0, 1]"), (ValueError,)),
    MigrationError: (MigrationError("OLDPACS@10.0.0.5:104: connection refused"), (Exception,)),
    InvalidCredentials: (InvalidCredentials("JWT: expired"), (Exception,)),
    KeyStoreError: (KeyStoreError("no active key named 'x'"), (ValueError,)),
    BadQuery: (BadQuery("limit: a non-negative integer"), (ValueError,)),
    MalformedBody: (MalformedBody("no closing boundary"), (ValueError,)),
    BodyTooLarge: (BodyTooLarge("the body is over 4096 bytes"), (ValueError,)),
    RenderError: (RenderError("viewport is width,height in pixels"), (ValueError,)),
    DeidError: (DeidError("a date that does not parse"), (ValueError,)),
    Fallback: (Fallback("transfer syntax: not explicit or implicit VR little endian"), ()),
    KeyFileError: (KeyFileError("key.bin: not a key"), (ValueError,)),
    ProfileError: (ProfileError("unknown option 'clean-pixels'"), (ValueError,)),
    CorrectionError: (CorrectionError("undo 3: a later correction changed it"), (ArchiveError,)),
}


def _package_exceptions() -> set[type[BaseException]]:
    """Every exception class defined in a module of pacs_engine, found by importing them all."""
    found = set()
    modules = pkgutil.walk_packages(pacs_engine.__path__, "pacs_engine.")
    for name in sorted(info.name for info in modules):
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == name:
                found.add(cls)
    return found


def test_every_exception_class_is_a_pacs_engine_error() -> None:
    """Walk the package: each exception class subclasses PacsEngineError and has an example."""
    found = _package_exceptions()
    assert found == set(EXAMPLES)
    for cls in found:
        assert issubclass(cls, PacsEngineError), cls


@pytest.mark.parametrize("cls", EXAMPLES, ids=lambda cls: cls.__name__)
def test_keeps_its_old_bases(cls: type[BaseException]) -> None:
    """`except ValueError` (RuntimeError, KeyError, ...) callers still catch it."""
    error, bases = EXAMPLES[cls]
    assert type(error) is cls
    for base in bases:
        assert isinstance(error, base)


@pytest.mark.parametrize("cls", EXAMPLES, ids=lambda cls: cls.__name__)
def test_pickles_back_with_its_message_and_fields(cls: type[BaseException]) -> None:
    """What a worker process raises comes back whole: type, args, message, attributes."""
    error, _ = EXAMPLES[cls]
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is cls
    assert back.args == error.args
    assert str(back) == str(error)
    assert {k: repr(v) for k, v in vars(back).items()} == {
        k: repr(v) for k, v in vars(error).items()
    }


def test_fields_survive_pickle() -> None:
    """The fields callers read (path, offset, key, part ...) are there after the round trip."""
    scan = pickle.loads(pickle.dumps(EXAMPLES[ScanError][0]))
    assert (scan.path, scan.offset, scan.reason) == ("/in/x.dcm", 132, "truncated element")
    assert str(scan) == "/in/x.dcm: at byte 132: truncated element"
    volume = pickle.loads(pickle.dumps(EXAMPLES[VolumeError][0]))
    assert volume.sop_instance_uids == ["1.2.3.4", "1.2.3.5"]
    failed = pickle.loads(pickle.dumps(EXAMPLES[PartFailed][0]))
    assert failed.part == _PART and str(failed.error) == "bad frame"
    assert "series 1.2.3 (2 inputs from a.dcm)" in str(failed)
    unknown = pickle.loads(pickle.dumps(EXAMPLES[UnknownInstance][0]))
    assert str(unknown) == "no instance 1.2.3"  # not quoted as KeyError would


def test_exported_from_the_package() -> None:
    """`pacs_engine.PacsEngineError` is the base in errors.py."""
    assert "PacsEngineError" in pacs_engine.__all__
    assert pacs_engine.PacsEngineError is PacsEngineError
    assert PacsEngineError.__module__ == "pacs_engine.errors"
