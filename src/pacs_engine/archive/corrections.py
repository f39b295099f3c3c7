"""Corrections: patient merge, demographic correction, series move, delete to a trash, undo.

A correction never rewrites what is stored. It writes a new *version* of each instance it
changes (archive/versions.py): the file is rebuilt, its attributes set with pydicom, and
the new file split again into a header blob (one pack per series folder,
`headers/<series>/correction-<id>.pack`); the pixel reference stays the old one, so the
pixel store is neither touched nor copied, and the new frames are checked to be the old
ones. A delete removes rows from the index and moves the series folders it empties into
`trash/<id>/` (a part of a series stays where it is, kept from `tidy` by its record);
`empty_trash` really removes them.

Crash safety: the new packs are written first (a crash then leaves packs no row uses,
which `tidy` removes), then the correction record (`corrections/<id>.json`, state
"pending", with every row before and after), then what must exist before the commit
(for a restore, folders moved back from the trash), then ONE index transaction
commits the rows with a marker of the correction in the journal database. Whatever
follows the commit (rows files beside the packs, folders moved to the trash, the record
marked "done") is replayed by `recover` on the next correction: a record whose marker
is in the index is finished, one without it is rolled back (its moves reversed, its
packs removed). Readers see the index before or after the transaction, never between.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pacs_engine.archive.archive import _disk_bytes
from pacs_engine.archive.blobs import (
    PACK_SUFFIX,
    dump_rows,
    load_rows,
    mark_committed,
    pending_sidecar,
    place_blobs,
    rows_sidecar,
)
from pacs_engine.archive.format import ArchiveError
from pacs_engine.archive.input_keys import split_archive_key
from pacs_engine.archive.prepare import (
    Prepared,
    PrepareError,
    hash_kind,
    prepare,
)
from pacs_engine.archive.versions import (
    INSTANCE_FIELDS,
    own_stored_bytes,
    version_rows,
    with_version,
)
from pacs_engine.errors import ScanError
from pacs_engine.index.keys import identity_key
from pacs_engine.index.query import PATIENT_KEYWORDS
from pacs_engine.index.rows import Row
from pacs_engine.scanning import HEADER_KEYWORDS, STUDY_KEYWORDS, scan
from pacs_engine.storage import fsync_dir, make_dirs_durable, series_folders, write_atomic

if TYPE_CHECKING:
    import pydicom

    from pacs_engine.archive.archive import Archive

RECORDS, TRASH = "corrections", "trash"
#: The journal key that says a correction's transaction committed ("x": no ingest prefix).
_MARK = b"x\0correction\0"
#: Patient-level attributes: what a merge copies from the target patient and a demographic
#: correction may set (PatientAge is the age at a study, so it stays with the study).
PATIENT_ATTRIBUTES = tuple(k for k in PATIENT_KEYWORDS if k != "PatientAge")
#: Fault injection for the crash tests: "before-commit" or "after-commit" ends the process.
FAULT_VARIABLE = "PACS_ENGINE_CORRECTION_FAULT"
DEFAULT_KEEP_DAYS = 30
#: The `source_path` of a version a correction made: this and the correction's id.
CORRECTION_SOURCE = "correction:"


class CorrectionError(ArchiveError):
    """A correction cannot be made (unknown patient or UID, nothing to undo, ...)."""


@dataclass
class Correction:
    """One correction as planned or made: what it changes, and how to put it back."""

    id: str
    kind: str
    reason: str
    actor: str
    time: str
    target: dict[str, Any] = field(default_factory=dict)  # the ids and UIDs it was given
    attributes: list[str] = field(default_factory=list)  # keywords it sets
    values: dict[str, Any] = field(default_factory=dict)  # keyword -> value set
    before: dict[str, Row] = field(default_factory=dict)  # SOP UID -> row before
    after: dict[str, Row] = field(default_factory=dict)  # SOP UID -> row after (not delete)
    new_packs: list[str] = field(default_factory=list)  # packs of corrected headers
    pre_moves: list[list[str]] = field(default_factory=list)  # [from, to] before the commit
    post_moves: list[list[str]] = field(default_factory=list)  # [from, to] after it
    post_remove: list[str] = field(default_factory=list)  # files removed after it
    undoes: str | None = None
    undone_by: str | None = None
    keep_until: str | None = None  # delete: when `empty_trash` may remove it
    emptied: str | None = None  # delete: when the trash removed it
    state: str = "pending"
    # When its rows were committed (set before the commit): the time its rows files carry,
    # which orders its versions among the others for rebuild-index, even when a crash left
    # them to be written later (None: records made before it was kept)
    written_ns: int | None = None

    @property
    def studies(self) -> list[str]:
        """The studies it touches (before and after), by UID."""
        rows = [*self.before.values(), *self.after.values()]
        return sorted({row["StudyInstanceUID"] for row in rows})

    @property
    def series(self) -> list[str]:
        """The series it touches, by UID."""
        return sorted({row["SeriesInstanceUID"] for row in self.before.values()})

    def summary(self) -> dict[str, Any]:
        """What it did, without values: counts, UIDs and attribute keywords."""
        return {
            "id": self.id,
            "kind": self.kind,
            "time": self.time,
            "actor": self.actor,
            "state": self.state,
            "instances": len(self.before),
            "series": self.series,
            "studies": self.studies,
            "attributes": self.attributes,
            "undoes": self.undoes,
            "undone_by": self.undone_by,
            "keep_until": self.keep_until,
            "emptied": self.emptied,
        }

    def to_json(self) -> bytes:
        """The record as stored (values included: the archive's own correction log)."""
        return json.dumps(self.__dict__, indent=1, ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Correction:
        """A stored record."""
        return cls(**json.loads(data))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _fault(point: str) -> None:
    """End the process here when the crash tests ask for it (FAULT_VARIABLE)."""
    if os.environ.get(FAULT_VARIABLE) == point:
        os._exit(70)


def reason_of(correction: Correction) -> str:
    """The `current_reason` of the versions a correction made."""
    return f"correction {correction.id}: {correction.kind}"


def load_records(root: Path) -> list[Correction]:
    """Every correction record of the archive at `root`, oldest first."""
    folder = root / RECORDS
    if not folder.is_dir():
        return []
    return [Correction.from_json(p.read_bytes()) for p in sorted(folder.glob("*.json"))]


def trashed_rows(root: Path, folders: Iterable[str]) -> Iterator[Row]:
    """Rows deleted but kept in place (part of a series) in the series folders `folders`.

    `tidy` counts them as used, so a restore finds their bytes where they were.
    """
    by_folder = _trashed_by_folder(root)
    for name in folders:
        yield from by_folder.get(f"headers/{name}", [])


def deleted_packs(root: Path) -> dict[str, set[str]]:
    """SOP Instance UID -> the header packs of its versions that the delete in force on it
    (done, not undone, not emptied) took out of the index.

    A rebuild leaves out its rows in the rows files written up to the last of those packs'
    (a part of a series is deleted in place: its rows files still list it); rows written
    later are of the instance received again. Rows files only are compared, each stamped by
    the writer's main process: no clock of a record or a worker (archive/rebuild.py).
    """
    packs: dict[str, set[str]] = {}
    for record in load_records(root):
        # An emptied delete's rows are out of the rows files already.
        in_force = record.state == "done" and not (record.undone_by or record.emptied)
        if record.kind == "delete" and in_force:
            for sop, row in record.before.items():
                found = packs.setdefault(sop, set())
                found.update(version["header"]["pack"] for version in version_rows(row))
    return packs


def shows_commit(root: Path, correction: Correction) -> bool:
    """Whether a step that follows the correction's commit (`finish`) was made: a folder
    moved (into the trash), a rows file beside a new pack, a file removed, the undone record
    marked."""
    if correction.undoes:
        undone = root / RECORDS / f"{correction.undoes}.json"
        if Correction.from_json(undone.read_bytes()).undone_by == correction.id:
            return True
    return (
        any((root / to).exists() for _, to in correction.post_moves)
        or any((root / rows_sidecar(pack)).exists() for pack in correction.new_packs)
        or any(not (root / name).exists() for name in correction.post_remove)
    )


def recover_pending(root: Path, committed: Callable[[Correction], bool]) -> list[Correction]:
    """Finish each pending correction (a crash interrupted it) that `committed` says went
    through, roll back the others; those dealt with: state "done" (finished) or "pending"
    (rolled back). `Corrections.recover` asks the index's markers; a rebuilt index has none,
    so `rebuild_index` asks the disk (`shows_commit`) before it reads the rows files."""
    dealt = []
    for correction in load_records(root):
        if correction.state == "pending":
            dealt.append(correction)
            if committed(correction):
                finish(root, correction)
            else:
                roll_back(root, correction)
    return dealt


def finish(root: Path, correction: Correction) -> None:
    """What follows a correction's commit (idempotent: `recover_pending` replays it)."""
    for pack in correction.new_packs:
        sidecar = root / rows_sidecar(pack)
        if not sidecar.exists() and (root / pack).exists():
            rows = [
                _current_only(row)
                for row in correction.after.values()
                if row["header"]["pack"] == pack
            ]
            write_atomic(sidecar, dump_rows(rows, correction.written_ns))
    for frm, to in correction.post_moves:
        _move(root, frm, to)
    for name in correction.post_remove:
        (root / name).unlink(missing_ok=True)
    if correction.undoes:
        emptied = root / TRASH / correction.undoes  # a restore's folders, left empty
        if emptied.is_dir() and not any(p.is_file() for p in emptied.rglob("*")):
            shutil.rmtree(emptied)
        path = root / RECORDS / f"{correction.undoes}.json"
        original = Correction.from_json(path.read_bytes())
        if original.undone_by != correction.id:
            original.undone_by = correction.id
            write_atomic(path, original.to_json())
    correction.state = "done"
    write_atomic(root / RECORDS / f"{correction.id}.json", correction.to_json())


def roll_back(root: Path, correction: Correction) -> None:
    """Take back what a correction that never committed wrote: its moves, packs and record."""
    for frm, to in reversed(correction.pre_moves):
        _move(root, to, frm)
    for pack in correction.new_packs:
        (root / pack).unlink(missing_ok=True)
    (root / RECORDS / f"{correction.id}.json").unlink()


_TRASHED: dict[Path, tuple[int, dict[str, list[Row]]]] = {}


def _trashed_by_folder(root: Path) -> dict[str, list[Row]]:
    """The rows of deletes not restored nor emptied, by header folder; read again only when
    the records folder changed (a tidy asks once per series folder)."""
    try:
        stamp = (root / RECORDS).stat().st_mtime_ns
    except FileNotFoundError:
        return {}
    cached = _TRASHED.get(root)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    by_folder: dict[str, list[Row]] = {}
    for record in load_records(root):
        # Pending deletes too (unlike `deleted_packs`): their frames stay reserved until
        # the delete is finished or rolled back.
        if record.kind == "delete" and not record.undone_by and not record.emptied:
            for row in _kept_in_place(record):
                by_folder.setdefault(_header_folder(row), []).append(row)
    _TRASHED[root] = (stamp, by_folder)
    return by_folder


def _kept_in_place(delete: Correction) -> list[Row]:
    """The rows of a delete's instances left where they were (part of a series): those
    whose header folder it did not move to the trash."""
    moved = {frm for frm, _ in delete.post_moves}
    return [row for row in delete.before.values() if _header_folder(row) not in moved]


def _header_folder(row: Row) -> str:
    """The folder of the row's header pack, `headers/<series folder>`."""
    return str(Path(row["header"]["pack"]).parent)


def correction_pack(folder: str, correction_id: str) -> str:
    """The pack of the header blobs the correction `correction_id` wrote in `folder`."""
    return f"{folder}/{_correction_pack_name(correction_id)}"


def _correction_pack_name(correction_id: str) -> str:
    """The file name of every pack the correction `correction_id` writes."""
    return f"correction-{correction_id}{PACK_SUFFIX}"


def made_by_correction(row: Row) -> bool:
    """Whether `row` is of a version a correction made: its source names the correction and
    its header blob's pack file is named for that correction (a source alone could be any
    text)."""
    source = row.get("source_path", "")
    if not source.startswith(CORRECTION_SOURCE):
        return False
    correction_id = source.removeprefix(CORRECTION_SOURCE)
    return Path(row["header"]["pack"]).name == _correction_pack_name(correction_id)


class Corrections:
    """The corrections of one archive, open for writing (its writer lock held)."""

    def __init__(self, archive: Archive) -> None:
        if archive.readonly:
            raise ArchiveError(f"{archive.path}: opened read-only")
        self.archive = archive
        self.root = archive.path

    # --- planning ---------------------------------------------------------------------

    def _new(self, kind: str, reason: str, actor: str, target: dict[str, Any]) -> Correction:
        if not reason.strip():
            raise CorrectionError("a correction needs a reason (--reason)")
        # Microseconds: ids sort in the order made (undo checks what came later).
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return Correction(f"{stamp}-{uuid.uuid4().hex[:4]}", kind, reason, actor, _now(), target)

    def _patient_rows(self, patient_id: str) -> list[Row]:
        """Every row of the patient (exactly this Patient ID: no wildcard matching)."""
        studies = self.archive.index.query("study", PatientID=patient_id)
        uids = [s["StudyInstanceUID"] for s in studies if s.get("PatientID") == patient_id]
        rows = [
            row
            for uid in uids
            for row in self.archive.index.study(uid)
            if row.get("PatientID") == patient_id  # a study's stray instance of another
        ]
        if not rows:
            raise CorrectionError("no study of that Patient ID in the archive")
        return rows

    def merge_patient(self, source: str, target: str, reason: str, actor: str) -> Correction:
        """Plan: every study of patient `source` filed under patient `target`."""
        if source == target:
            raise CorrectionError("--from and --to name the same Patient ID")
        correction = self._new("merge-patient", reason, actor, {"from": source, "to": target})
        rows = self._patient_rows(source)
        studies = [
            s
            for s in self.archive.index.query("study", PatientID=target)
            if s.get("PatientID") == target
        ]
        if not studies:
            raise CorrectionError("the target Patient ID (--to) has no study in the archive")
        values = {k: studies[0].get(k) for k in PATIENT_ATTRIBUTES}
        return self._plan_headers(correction, rows, values)

    def correct_patient(
        self, patient_id: str, values: dict[str, str], reason: str, actor: str
    ) -> Correction:
        """Plan: new values of patient attributes on every instance of the patient."""
        unknown = sorted(set(values) - set(PATIENT_ATTRIBUTES))
        if unknown or not values:
            raise CorrectionError(
                f"{', '.join(unknown) or 'nothing'}: not a patient attribute to set; "
                f"valid: {', '.join(PATIENT_ATTRIBUTES)}"
            )
        correction = self._new("patient", reason, actor, {"patient": patient_id})
        return self._plan_headers(correction, self._patient_rows(patient_id), dict(values))

    def move_series(self, series_uid: str, study_uid: str, reason: str, actor: str) -> Correction:
        """Plan: the series filed under the study `study_uid`, with its study attributes."""
        correction = self._new(
            "move-series", reason, actor, {"series": series_uid, "study": study_uid}
        )
        rows = self.archive.index.series(series_uid)
        if not rows:
            raise CorrectionError(f"{series_uid}: no series with that UID in the archive")
        study = self.archive.index.study_record(study_uid)
        if study is None:
            raise CorrectionError(f"{study_uid}: no study with that UID in the archive")
        if rows[0]["StudyInstanceUID"] == study_uid:
            raise CorrectionError(f"{series_uid}: already in study {study_uid}")
        record = cast(dict[str, Any], study)
        values = {k: record.get(k) for k in STUDY_KEYWORDS}  # its UID and attributes
        return self._plan_headers(correction, rows, values)

    def delete(
        self,
        reason: str,
        actor: str,
        study: str | None = None,
        series: str | None = None,
        sop: str | None = None,
        keep_days: float = DEFAULT_KEEP_DAYS,
    ) -> Correction:
        """Plan: an instance, a series or a study out of the index and into the trash."""
        index = self.archive.index
        if study is not None:
            rows = index.study(study)
            target = {"study": study}
        elif series is not None:
            rows = index.series(series)
            target = {"series": series}
        elif sop is not None:
            row = index.get(sop)
            rows = [] if row is None else [row]
            target = {"instance": sop}
        else:
            raise CorrectionError("delete needs --study, --series or --uid")
        if not rows:
            raise CorrectionError(f"{next(iter(target.values()))}: not in the archive")
        correction = self._new("delete", reason, actor, target)
        correction.before = {row["SOPInstanceUID"]: row for row in rows}
        correction.keep_until = time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + keep_days * 86400)
        )
        for series_uid in correction.series:
            # A series the delete empties leaves with its folders; a part of one stays.
            whole = {r["SOPInstanceUID"] for r in index.iter_series(series_uid)}
            if whole <= set(correction.before):
                for folder in self._folders(series_uid):
                    correction.post_moves.append([folder, f"{TRASH}/{correction.id}/{folder}"])
        return correction

    def undo(self, correction_id: str, reason: str, actor: str) -> Correction:
        """Plan: the instances of a correction as they were before it (a delete: restored)."""
        done = {c.id: c for c in load_records(self.root)}
        original = done.get(correction_id)
        if original is None or original.state != "done":
            raise CorrectionError(f"{correction_id}: no such correction (correct --list)")
        if original.kind == "undo":
            raise CorrectionError(f"{correction_id}: an undo; make the correction again instead")
        if original.undone_by:
            raise CorrectionError(f"{correction_id}: undone already by {original.undone_by}")
        if original.emptied:
            raise CorrectionError(f"{correction_id}: its trash was emptied on {original.emptied}")
        later = [
            c.id
            for c in done.values()
            if c.id > original.id
            and c.kind != "undo"
            and not c.undone_by
            and set(c.before) & set(original.before)
        ]
        if later:
            raise CorrectionError(
                f"{correction_id}: later corrections changed its instances; undo them first: "
                + ", ".join(later)
            )
        correction = self._new("undo", reason, actor, {"correction": correction_id})
        correction.undoes, correction.attributes = correction_id, original.attributes
        correction.before = {}
        index = self.archive.index
        for sop, before in original.before.items():
            current = index.get(sop)
            if original.kind == "delete":
                if current is not None:
                    raise CorrectionError(f"{sop}: in the archive again since; cannot restore")
            elif current is None or _version_key(current) != _version_key(original.after[sop]):
                raise CorrectionError(
                    f"{sop}: changed since the correction (a new version came in); not undone"
                )
            correction.after[sop] = before
            if current is not None:
                correction.before[sop] = current
        if original.kind == "delete":
            correction.before = dict(original.before)  # what the restore brings back
            moved = {to: frm for frm, to in original.post_moves}
            for row in original.before.values():
                for version in version_rows(row):
                    pack = version["header"]["pack"]
                    if (
                        not any(pack.startswith(f"{frm}/") for frm in moved.values())
                        and not (self.root / pack).is_file()
                    ):
                        raise CorrectionError(
                            f"{row['SOPInstanceUID']}: its files are no longer where they were "
                            "(a later delete took its series: restore that one first)"
                        )
            correction.pre_moves = [[to, frm] for frm, to in original.post_moves]
            for _, to in correction.pre_moves:
                if (self.root / to).exists():
                    raise CorrectionError(f"{to}: exists again since the delete; cannot restore")
        else:
            correction.post_remove = [
                p for pack in original.new_packs for p in (pack, rows_sidecar(pack))
            ]
        return correction

    def _folders(self, series_uid: str) -> list[str]:
        """The series' folders (pixels/ and headers/) that exist."""
        return [
            f"{part}/{name}"
            for name in sorted(series_folders(series_uid))
            for part in ("pixels", "headers")
            if (self.root / part / name).is_dir()
        ]

    def _plan_headers(
        self, correction: Correction, rows: list[Row], values: dict[str, Any]
    ) -> Correction:
        """Plan new versions of `rows` with `values` set: their corrected rows, not written."""
        correction.attributes, correction.values = sorted(values), values
        for row in rows:
            if row.get("transcoded"):
                raise CorrectionError(
                    f"{row['SOPInstanceUID']}: transcoded (no original file to correct)"
                )
            correction.before[row["SOPInstanceUID"]] = row
        return correction

    # --- applying ---------------------------------------------------------------------

    def apply(self, correction: Correction) -> Correction:
        """Make a planned correction: packs, record, one index transaction, then the rest."""
        self.recover()
        records = self.root / RECORDS
        make_dirs_durable(records)
        if correction.kind in ("merge-patient", "patient", "move-series"):
            # The index holds these rows, so their parts committed: a copy's part killed
            # before renaming its rows files has them renamed now, or a rebuild of the index
            # would leave it out and hold the new versions alone (docs/archive.md).
            mark_committed(_pending_rows_files(self.root, correction.before.values()))
            self._write_versions(correction)
        correction.written_ns = time.time_ns()
        write_atomic(records / f"{correction.id}.json", correction.to_json())
        for frm, to in correction.pre_moves:
            _move(self.root, frm, to)
        _fault("before-commit")
        remove: list[str] = []
        journal: dict[bytes, bytes | None] = {_MARK + correction.id.encode(): b"1"}
        if correction.kind == "delete":
            remove = list(correction.before)
            # A catch-up ingest skips a file it read before, unchanged, as archived; a deleted
            # instance's files are not any more: they are read again (docs/corrections.md).
            sources = {key for row in correction.before.values() for key in _source_keys(row)}
            journal |= dict.fromkeys(map(identity_key, sources), None)
        with self.archive.index.writing() as writer:
            writer.add(list(correction.after.values()), remove, journal)
        _fault("after-commit")
        finish(self.root, correction)
        return correction

    def _write_versions(self, correction: Correction) -> None:
        """The corrected files' header blobs in new packs, and their rows in `after`."""
        by_folder: dict[str, list[tuple[Row, bytes, Row]]] = {}
        for row in correction.before.values():
            new_row, blob = self._corrected(row, correction.values, correction.id)
            folder = _header_folder(row)
            by_folder.setdefault(folder, []).append((row, blob, new_row))
        for folder, items in sorted(by_folder.items()):
            pack = correction_pack(folder, correction.id)
            data = [blob for _, blob, _ in items]
            place_blobs(pack, [new_row for _, _, new_row in items], data)
            for row, _, new_row in items:
                merged = cast(dict[str, Any], with_version(row, new_row))
                merged["current_reason"] = reason_of(correction)
                correction.after[row["SOPInstanceUID"]] = cast(Row, merged)
            write_atomic(self.root / pack, data)
            correction.new_packs.append(pack)

    def _corrected(self, row: Row, values: dict[str, Any], correction_id: str) -> tuple[Row, bytes]:
        """The row of a new version of `row` with `values` set, and its header blob."""
        import pydicom  # here: an ingest's tidy imports this module, and needs no pydicom
        from pydicom.tag import Tag

        sop = row["SOPInstanceUID"]
        data = self.archive.export_bytes(sop)  # checked against its sha256
        dataset = pydicom.dcmread(BytesIO(data), force=True)
        changed_groups = set()
        for keyword, value in values.items():
            if value is None or value == "" or value == []:
                if keyword not in dataset:
                    continue  # absent stays absent: nothing to empty
                value = ""
            if _needs_unicode(dataset, keyword, value):
                # The default repertoire is ASCII, which UTF-8 extends: other values read the same.
                dataset.SpecificCharacterSet = "ISO_IR 192"
                changed_groups.add(Tag("SpecificCharacterSet").group)
            setattr(dataset, keyword, value)
            changed_groups.add(Tag(keyword).group)
        for group in changed_groups:  # a retired group length would now be wrong
            dataset.pop(Tag(group, 0), None)
        out = BytesIO()
        dataset.save_as(out, enforce_file_format=False)
        new = out.getvalue()
        try:
            header = scan(new)
            source = f"{CORRECTION_SOURCE}{correction_id}"
            prepared = prepare(source, new, header, decode=False)
        except (ScanError, PrepareError) as error:
            raise CorrectionError(f"{sop}: the corrected file cannot be split: {error}") from None
        self._check_same_pixels(row, prepared)
        new_row: dict[str, Any] = {
            k: v for k, v in row.items() if k not in INSTANCE_FIELDS and k not in HEADER_KEYWORDS
        }
        blob = prepared.blob.to_bytes()
        new_row |= dict(header.attributes)
        new_row |= {
            "source_path": source,
            "source_sha256": hashlib.sha256(new).hexdigest(),
            "file_size": len(new),
            "stored_bytes": 0,  # the old pixels: only its blob, counted when packed
            "ingested_at": _now(),
            "run": f"correction-{correction_id}",
        }
        return cast(Row, new_row), blob

    def _check_same_pixels(self, row: Row, prepared: Prepared) -> None:
        """Refuse a corrected file whose pixel data is not the stored one's."""
        sop, pixels, storage = row["SOPInstanceUID"], row.get("pixels"), prepared.storage
        same = storage == row.get("pixel_storage", storage)
        if same and pixels and storage == "bitstream":
            first = pixels["first_frame"]
            stored = self.archive.pixels.read_bitstreams(
                pixels["array"], first, first + pixels["frames"]
            )
            same = stored == prepared.bitstreams
        elif same and pixels and row.get("frame_hashes") is not None:
            # Hashed as the row's were: prepare's BLAKE3, or again for rows written before.
            recorded = row["frame_hashes"]
            kind = hash_kind(recorded[0] if recorded else None)
            same = prepared.frame_hashes_of(kind) == recorded
        if not same:
            raise CorrectionError(f"{sop}: the corrected file's pixel data differs; nothing done")

    def recover(self) -> list[Correction]:
        """Finish the corrections a crash interrupted after their commit; roll back the others.

        Returns those it dealt with: state "done" (finished) or "pending" (rolled back).
        """
        index = self.archive.index
        return recover_pending(
            self.root, lambda c: bool(index.journal_get([_MARK + c.id.encode()]))
        )

    # --- the trash --------------------------------------------------------------------

    def empty_trash(self, older_than_days: float | None = None) -> tuple[list[Correction], int]:
        """Remove for good what deletes put in the trash: those past their keep time, or (with
        `older_than_days`) deleted longer ago than that. Returns (those deletes, bytes freed)."""
        self.recover()
        now = time.time()
        emptied, freed = [], 0
        for correction in load_records(self.root):
            if correction.kind != "delete" or correction.undone_by or correction.emptied:
                continue
            deleted = _epoch(correction.time)
            due = (
                now - deleted >= older_than_days * 86400
                if older_than_days is not None
                else now >= _epoch(correction.keep_until or correction.time)
            )
            if not due:
                continue
            folder = self.root / TRASH / correction.id
            freed += _disk_bytes(folder)
            shutil.rmtree(folder, ignore_errors=True)
            freed += self._scrub(_kept_in_place(correction))
            correction.emptied = _now()
            correction.before = {sop: _uids_only(row) for sop, row in correction.before.items()}
            write_atomic(self.root / RECORDS / f"{correction.id}.json", correction.to_json())
            emptied.append(correction)
        gone: dict[str, str] = {}  # SOP UID -> the last emptied delete that removed it
        for correction in emptied:
            for sop in correction.before:
                gone[sop] = max(gone.get(sop, correction.id), correction.id)
        self._forget(gone)
        return emptied, freed

    def _forget(self, gone: dict[str, str]) -> None:
        """Keep only the UIDs of instances removed for good (`gone`: by the delete that removed
        them) in that delete's record and the earlier ones (their rows held values). Later
        records are of the instance received again: they stay whole, to be undone."""
        if not gone:
            return
        for record in load_records(self.root):
            changed = False
            for part in (record.before, record.after):
                # Ids sort in the order the corrections were made.
                for sop in (s for s in set(part) & gone.keys() if record.id <= gone[s]):
                    if part[sop] != _uids_only(part[sop]):
                        part[sop] = _uids_only(part[sop])
                        changed = True
            if changed:
                write_atomic(self.root / RECORDS / f"{record.id}.json", record.to_json())

    def _scrub(self, rows: list[Row]) -> int:
        """Remove the bytes of deleted instances kept in place: their chunks out of their
        shards, their header blobs zeroed, their rows out of the rows files. Bytes freed."""
        freed = 0
        live_frames = _live_frames(self.archive, {row["SeriesInstanceUID"] for row in rows})
        gone = {row["SOPInstanceUID"] for row in rows}
        for row in rows:
            for version in version_rows(row):
                reference = version.get("pixels")
                if reference:
                    freed += self._drop_frames(reference, live_frames)
                where = version["header"]
                pack = self.root / where["pack"]
                if pack.is_file():
                    with open(pack, "r+b") as f:
                        f.seek(where["offset"])
                        f.write(bytes(where["length"]))
                        os.fsync(f.fileno())
                # A copy's part killed between its commit and the rename keeps its rows
                # file under its pending name until a tidy renames it (archive/copies.py).
                for name in (rows_sidecar(where["pack"]), pending_sidecar(where["pack"])):
                    sidecar = self.root / name
                    if sidecar.is_file():
                        written, kept = load_rows(sidecar.read_bytes())
                        rest = [r for r in kept if r.get("SOPInstanceUID") not in gone]
                        if len(rest) != len(kept):
                            write_atomic(sidecar, dump_rows(rest, written))
        return freed

    def _drop_frames(self, reference: Any, live: dict[str, set[int]]) -> int:
        """Rewrite the shards of a deleted instance's frames without them (frames no live
        row uses); bytes freed."""
        pixels = self.archive.pixels
        path = reference["array"]
        if not pixels.exists(path):
            return 0
        per_shard = pixels.grid(path)[0]
        frames = set(
            range(reference["first_frame"], reference["first_frame"] + reference["frames"])
        )
        frames -= live.get(path, set())
        return sum(
            pixels.drop_frames(path, shard, frames)
            for shard in sorted({f // per_shard for f in frames})
        )


def _needs_unicode(dataset: pydicom.Dataset, keyword: str, value: Any) -> bool:
    """Whether `value` needs the data set's character set changed to UTF-8: it has none (the
    default repertoire, ASCII) and the value is not ASCII. CorrectionError (naming the
    keyword, not the value) when it has another that cannot write the value."""
    from pydicom.charset import convert_encodings, encode_string

    texts = [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]
    if all(text.isascii() for text in texts):
        return False
    declared = dataset.get("SpecificCharacterSet")
    if not declared:
        return True
    encodings = convert_encodings(declared)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom would write "?" for what it cannot encode
        try:
            for text in texts:
                encode_string(text, encodings)
        except (UserWarning, ValueError, LookupError):
            raise CorrectionError(
                f"{keyword}: the new value cannot be written in the instance's character set "
                f"({declared}); nothing done"
            ) from None
    return False


def _live_frames(archive: Archive, series: set[str]) -> dict[str, set[int]]:
    """The frames of each array that rows of `series` (any version) use."""
    live: dict[str, set[int]] = {}
    for uid in series:
        for row in archive.index.iter_series(uid):
            for version in version_rows(row):
                reference = version.get("pixels")
                if reference:
                    first = reference["first_frame"]
                    live.setdefault(reference["array"], set()).update(
                        range(first, first + reference["frames"])
                    )
    return live


def _source_keys(row: Row) -> Iterator[str]:
    """The input keys the instance was received from (each version's, its duplicates'), and
    the zips or tars holding them (a member's identity is its container's)."""
    keys = [v["source_path"] for v in version_rows(row)]
    keys += [d["path"] for d in row.get("duplicates", [])]
    for key in keys:
        yield key
        # By the name alone: an archive folder's instances have no identity entry, nor has
        # the folder, so there is no need to stat `<prefix>/archive.json` at each `::`.
        container, member = split_archive_key(key)
        if member is not None:
            yield container


def _version_key(row: Row) -> tuple[Any, Any]:
    """What tells one current version from another."""
    return row.get("source_sha256"), json.dumps(row.get("header"), sort_keys=True)


def _current_only(row: Row) -> Row:
    """The row of the current version alone, as a rows file keeps it: with its own
    `stored_bytes` (a rebuild adds the earlier versions' again, as an ingest's rows)
    and the correction as the reason it is current."""
    current = {k: v for k, v in row.items() if k != "versions"}
    return cast(Row, current | {"stored_bytes": own_stored_bytes(row)})


def _pending_rows_files(root: Path, rows: Iterable[Row]) -> list[Path]:
    """The pending rows files (`pending_sidecar`) of the packs of `rows`' versions."""
    packs = {version["header"]["pack"] for row in rows for version in version_rows(row)}
    files = (root / pending_sidecar(pack) for pack in sorted(packs))
    return [file for file in files if file.is_file()]


def _uids_only(row: Row) -> Row:
    """What an emptied trash keeps of a deleted row: its UIDs, nothing of the patient."""
    return cast(
        Row, {k: row[k] for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")}
    )


def _move(root: Path, frm: str, to: str) -> None:
    """Move a folder of the archive (idempotent: done already, nothing happens)."""
    source, destination = root / frm, root / to
    if not source.exists():
        return
    make_dirs_durable(destination.parent)  # trash/<id>/...: what an undo moves back
    os.rename(source, destination)
    fsync_dir(destination.parent)
    fsync_dir(source.parent)


def _epoch(stamp: str) -> float:
    """Seconds since the epoch of a UTC stamp YYYY-MM-DDTHH:MM:SSZ."""
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
