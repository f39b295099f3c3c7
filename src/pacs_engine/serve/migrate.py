"""Migration from a live legacy PACS over DIMSE: list its studies, retrieve each, check counts.

`Migration.run` does it in three steps:

1. **Listing.** C-FIND (Study Root, STUDY level) in StudyDate windows. A window whose
   answer looks capped (at least `max_results` answers, a round number of 100 or more,
   or a warning/out-of-resources status instead of the last answers) is halved, down
   to one day; a day still capped is queried once per modality (ModalitiesInStudy), and a
   day and modality still capped is reported.
   Without a date filter one query first asks for everything; only when it looks capped
   are the windows walked (1900-01-01 to 2100-12-31), plus one query for an empty
   StudyDate ('""', PS3.4 C.2.2.2.1 empty value matching; a PACS that does not support
   it answers nothing, and its undated studies are then only found when the first
   query is not capped).
2. **Retrieval.** Each study by C-MOVE to the Storage SCP this process runs (a
   `DimseServer` admitting the legacy AE with the "store" right), or by C-GET on the
   requesting association; both take every instance through `DimseServer.on_store`:
   durable in the spool before it is acknowledged. `parallel` studies in flight, the
   rate limit between them.
3. **Check.** The distinct SOP instances received for a study are counted against the
   count the PACS reported (NumberOfStudyRelatedInstances, else an IMAGE-level C-FIND);
   a short study, or one whose retrieval fails (association refused or dropped, a
   failure status), is retried `retries` times, then reported: incomplete when some of
   its instances arrived, failed when none did.

The journal, in `ARCHIVE/migrations/` (id: a hash of the source and filters):
`<id>.json` holds the listing (studies and their instance counts), written once,
atomically; `<id>.log` gets one line per study outcome, appended and fsynced (so the
journal costs the same per study for a hundred studies or a million). A study is
logged complete only once all its instances are acknowledged, that is durable in the
spool, so a run killed at any moment and started again fetches only what was not
complete; the spool's `Drain` ingests what the killed run left.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, StoragePresentationContexts, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacs_engine.archive import Archive, IngestReport
from pacs_engine.errors import PacsEngineError
from pacs_engine.serve.config import Peer, ServeConfig, parse_peer
from pacs_engine.serve.dimse import STORAGE_SYNTAXES, DimseServer, no_delay
from pacs_engine.storage import write_atomic

LOG = logging.getLogger(__name__)

#: C-FIND statuses (PS3.4 C.4.1.1.4).
_PENDING = (0xFF00, 0xFF01)
_SUCCESS = 0x0000
#: Statuses a PACS may end a listing with when it stopped early: cancelled, a warning,
#: out of resources (some say so when a query matches more than they answer).
_CAPPED = (0xFE00, 0xB000, 0xA700)
#: The C-MOVE/C-GET statuses that end a retrieval that went through (some may have failed).
_RETRIEVED = (0x0000, 0xB000)
#: The window walked when no StudyDate filter bounds it.
FIRST_DAY, LAST_DAY = date(1900, 1, 1), date(2100, 12, 31)
#: What a capped day is split by: the Modality defined terms (PS3.3 C.7.3.1.1.1), current
#: and retired. A study whose every series has a private modality is not found this way.
# fmt: off
MODALITIES = (
    "ANN", "AR", "ASMT", "AU", "BDUS", "BI", "BMD", "CFM", "CR", "CT", "CTPROTOCOL", "DMS",
    "DG", "DOC", "DX", "ECG", "EEG", "EMG", "EOG", "EPS", "ES", "FID", "GM", "HC", "HD", "IO",
    "IOL", "IVOCT", "IVUS", "KER", "KO", "LEN", "LS", "M3D", "MG", "MR", "NM", "OAM", "OCT",
    "OP", "OPM", "OPT", "OPTBSV", "OPTENF", "OPV", "OSS", "OT", "PLAN", "POS", "PR", "PT",
    "PX", "REG", "RESP", "RF", "RG", "RTDOSE", "RTIMAGE", "RTINTENT", "RTPLAN", "RTRAD",
    "RTRECORD", "RTSEGANN", "RTSTRUCT", "RWV", "SEG", "SM", "SMR", "SR", "SRF", "STAIN",
    "TEXTUREMAP", "TG", "US", "VA", "XA", "XAPROTOCOL", "XC",
    # Retired, still found in old archives.
    "AS", "CD", "CF", "CP", "CS", "DD", "DF", "DM", "DS", "EC", "FA", "FS", "LP", "MA", "MS",
    "OPR", "ST", "VF",
)
# fmt: on
#: Study-level filters named by what users call them.
_FILTER_KEYS = {"Modality": "ModalitiesInStudy"}
JOURNAL_FORMAT = 1
#: Seconds before the first retry of a study, twice that before the second, and so on.
RETRY_PAUSE = 1.0
#: The storage classes a C-GET offers to receive when the PACS does not say which a study
#: holds: pynetdicom's 120 most used (an association has at most 128 presentation
#: contexts; one is the C-GET's own), each in one context listing every syntax we keep.
_GET_STORAGE_CLASSES = [str(cx.abstract_syntax) for cx in StoragePresentationContexts]
#: The presentation contexts an association may propose (PS3.8 9.3.2.2: odd ids 1-255).
_MAX_CONTEXTS = 128
INGEST_COUNTS = ("inputs", "archived", "duplicates", "conflicts", "quarantined")


class MigrationError(PacsEngineError):
    """The legacy PACS cannot be used (down, refuses us, a failure status), or bad options."""


@dataclass(frozen=True)
class Filters:
    """What to migrate: a StudyDate range (inclusive, None: unbounded) and other study keys."""

    first: date | None = None
    last: date | None = None
    keys: tuple[tuple[str, str], ...] = ()

    @property
    def dated(self) -> bool:
        """True when a StudyDate filter bounds the listing."""
        return self.first is not None or self.last is not None


def parse_filters(texts: Sequence[str]) -> Filters:
    """`--filter KEY=VALUE` options: StudyDate=YYYYMMDD[-YYYYMMDD], Modality=CT, any study key."""
    first: date | None = None
    last: date | None = None
    keys: list[tuple[str, str]] = []
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key or not value:
            raise MigrationError(f"--filter {text!r}: write KEY=VALUE, e.g. Modality=CT")
        if key == "StudyDate":
            low, dash, high = value.partition("-")
            first = _day(low, text) if low else None
            last = (_day(high, text) if high else None) if dash else first
            if first is not None and last is not None and last < first:
                raise MigrationError(f"--filter {text!r}: the range ends before it starts")
        else:
            keyword = _FILTER_KEYS.get(key, key)
            tag = tag_for_keyword(keyword)
            if tag is None or dictionary_VR(tag) == "SQ":
                raise MigrationError(f"--filter {text!r}: {key} is not a DICOM keyword to match")
            keys.append((keyword, value))
    return Filters(first, last, tuple(keys))


def _day(text: str, where: str) -> date:
    if not re.fullmatch(r"\d{8}", text):
        raise MigrationError(f"--filter {where!r}: a date is YYYYMMDD, not {text!r}")
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise MigrationError(f"--filter {where!r}: no such date {text!r}") from None


def parse_source(text: str) -> Peer:
    """`--from AET@HOST:PORT` as a peer with an address."""
    peer = parse_peer(text.partition("=")[0])
    if peer.address is None:
        raise MigrationError(f"--from {text!r}: write AET@HOST:PORT")
    return peer


@dataclass(frozen=True)
class RateLimit:
    """At most `studies_per_minute` study starts and `bytes_per_second` on average (None: none)."""

    studies_per_minute: float | None = None
    bytes_per_second: float | None = None


def parse_rate_limit(text: str | None) -> RateLimit:
    """`--rate-limit`: `N/min` (studies per minute) or `N MB/s` (megabytes per second)."""
    if text is None:
        return RateLimit()
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(/min|MB/s)\s*", text)
    if match is None or float(match[1]) <= 0:
        raise MigrationError(f"--rate-limit {text!r}: write e.g. 30/min (studies) or 20MB/s")
    value = float(match[1])
    if match[2] == "/min":
        return RateLimit(studies_per_minute=value)
    return RateLimit(bytes_per_second=value * 1e6)


def _peer_name(peer: Peer) -> str:
    return f"{peer.ae_title}@{peer.host}:{peer.port}"


class Legacy:
    """The legacy PACS as seen from our requesting AE: associations, C-FIND, C-MOVE, C-GET."""

    def __init__(self, peer: Peer, ae_title: str, timeout: float) -> None:
        self.peer = peer
        self.name = _peer_name(peer)
        self.ae = AE(ae_title=ae_title)
        # C-GET brings the instances on our association: PDUs as large as our Storage
        # SCP's take (pynetdicom's default, 16 KB, costs a Python loop turn per 16 KB).
        self.ae.maximum_pdu_size = ServeConfig.max_pdu
        self.ae.acse_timeout = timeout
        self.ae.dimse_timeout = timeout
        self.ae.network_timeout = timeout

    @contextmanager
    def association(
        self, contexts: list[Any], roles: Sequence[Any] = (), handlers: Sequence[Any] = ()
    ) -> Iterator[Association]:
        """An association with the PACS, released on exit; MigrationError naming why not."""
        host, port = self.peer.address or ("", 0)
        assoc = self.ae.associate(
            host,
            port,
            contexts=contexts,
            ae_title=self.peer.ae_title,
            ext_neg=list(roles),
            evt_handlers=[(evt.EVT_CONN_OPEN, no_delay), *handlers],
        )
        if not assoc.is_established:
            raise MigrationError(f"legacy PACS {self.name}: {self._refusal(assoc)}")
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def _refusal(self, assoc: Association) -> str:
        """Why an association was not made, in words."""
        if assoc.is_rejected:
            primitive = assoc.acceptor.primitive
            reason = primitive.reason_str if primitive is not None else "no reason given"
            return f"association rejected: {reason}"
        if assoc.rejected_contexts and not assoc.accepted_contexts:
            # The PACS answered, accepting none: pynetdicom then aborts, from our side.
            classes = dict.fromkeys(
                UID(c.abstract_syntax or "").name for c in assoc.rejected_contexts
            )
            return f"it accepted none of the presentation contexts asked ({', '.join(classes)})"
        # pynetdicom says "aborted" also when no connection was made: try one to tell why.
        host, port = self.peer.address or ("", 0)
        try:
            with socket.create_connection((host, port), timeout=5):
                pass
        except OSError as error:
            return f"cannot connect: {error.strerror or error}"
        if assoc.is_aborted:
            return "the association was aborted by the peer"
        return "no answer to the association request"

    def find(self, assoc: Association, query: Dataset) -> tuple[list[Dataset], bool]:
        """The answers of one C-FIND, and whether the PACS said it stopped early."""
        answers: list[Dataset] = []
        responses = assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
        for status, identifier in responses:
            if not status:  # pynetdicom's sign of a lost association
                raise MigrationError(
                    f"legacy PACS {self.name}: the association ended in a C-FIND "
                    f"(does the PACS admit our AE title {self.ae.ae_title}?)"
                )
            code = int(status.Status)
            if code in _PENDING and identifier is not None:
                answers.append(identifier)
            elif code in _CAPPED:
                return answers, True
            elif code != _SUCCESS:
                raise MigrationError(f"legacy PACS {self.name}: C-FIND failed, status 0x{code:04X}")
        return answers, False


@dataclass
class StudyState:
    """One study of the journal: what the PACS reported and how far it got."""

    expected: int | None
    state: str = "pending"  # pending, complete, incomplete, failed
    received: int = 0
    reason: str | None = None


@dataclass
class MigrationReport:
    """What a migration did: studies by state (with reasons) and the ingest's counts."""

    found: int = 0
    complete: int = 0
    skipped: int = 0  # complete in an earlier run
    incomplete: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    listing_problems: list[str] = field(default_factory=list)
    instances: int = 0
    bytes: int = 0
    seconds: float = 0.0
    spool_failure: str | None = None  # why what was received is not all ingested yet
    #: What the ingest of the received instances counted: inputs, archived, duplicates,
    #: conflicts, quarantined (inputs = the sum of the other four).
    ingest: dict[str, int] = field(default_factory=lambda: dict.fromkeys(INGEST_COUNTS, 0))

    def add_ingest(self, part: IngestReport) -> None:
        """Add the counts of one ingest run over the spool."""
        for name in INGEST_COUNTS:
            self.ingest[name] += getattr(part, name)

    @property
    def ok(self) -> bool:
        """True when every study found is complete and ingested, and the listing is trusted."""
        return not (self.incomplete or self.failed or self.listing_problems or self.spool_failure)


class Migration:
    """One migration from a legacy PACS into an archive (`run`)."""

    def __init__(
        self,
        archive: Archive,
        server: DimseServer,
        legacy: Legacy,
        filters: Filters,
        *,
        method: str = "move",
        parallel: int = 1,
        max_results: int = 1000,
        retries: int = 2,
        rate: RateLimit = RateLimit(),
        progress: Callable[[int, int], Any] | None = None,
    ) -> None:
        self.archive = archive
        self.server = server
        self.legacy = legacy
        self.filters = filters
        self.method = method
        self.parallel = parallel
        self.max_results = max_results
        self.retries = retries
        self.rate = rate
        self.progress = progress
        self.journal_path = Path(archive.path) / "migrations" / f"{self.journal_id()}.json"
        self._lock = threading.Lock()
        self._received: dict[str, set[str]] = {}
        self._bytes = 0
        self._next_start = 0.0
        self._started = time.monotonic()
        self.studies: dict[str, StudyState] = {}
        self.listing_problems: list[str] = []  # capped days: studies the listing may miss
        server.on_stored = self._stored

    def journal_id(self) -> str:
        """The journal's name: the same source and filters resume the same journal."""
        text = json.dumps([_peer_name(self.legacy.peer), self._filter_text()])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _filter_text(self) -> list[str]:
        dates = [f"StudyDate={_text(self.filters.first)}-{_text(self.filters.last)}"]
        return [*dates, *(f"{k}={v}" for k, v in self.filters.keys)]

    # --- journal ------------------------------------------------------------------------

    def _load_journal(self) -> bool:
        """The listing and study outcomes of an earlier run; False when there is none."""
        try:
            listing = json.loads(self.journal_path.read_bytes())
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as error:
            raise MigrationError(f"{self.journal_path}: cannot be read: {error}") from None
        if listing.get("format") != JOURNAL_FORMAT:
            raise MigrationError(
                f"{self.journal_path}: unknown journal format {listing.get('format')}"
            )
        self.listing_problems = list(listing["listing_problems"])
        self.studies = read_journal(self.journal_path)
        return True

    def _save_listing(self) -> None:
        """Write the listing (atomically) and an empty outcome log: the journal's start."""
        data = {
            "format": JOURNAL_FORMAT,
            "source": _peer_name(self.legacy.peer),
            "filters": self._filter_text(),
            "listing_problems": self.listing_problems,
            "studies": {uid: state.expected for uid, state in self.studies.items()},
        }
        # The log first: a listing is never without its log (a kill between the two
        # leaves an empty log, which the next listing replaces).
        write_atomic(_log_path(self.journal_path), b"")
        write_atomic(self.journal_path, json.dumps(data, indent=1).encode())

    def _log_outcome(self, study: str, state: StudyState) -> None:
        """Append one study's outcome to the log, fsynced (under the lock)."""
        entry = {"study": study, **{k: v for k, v in vars(state).items() if k != "expected"}}
        with open(_log_path(self.journal_path), "ab") as log:
            # A line of its own even after a line a kill cut short (then skipped).
            log.write(b"\n" + json.dumps(entry).encode() + b"\n")
            log.flush()
            os.fsync(log.fileno())

    # --- the run ------------------------------------------------------------------------

    def run(self) -> MigrationReport:
        """List (or resume), retrieve what is not complete, and count; the report."""
        self.prepare()
        return self.retrieve()

    def prepare(self) -> None:
        """The studies of the journal, else of a listing, then journalled."""
        if self._load_journal():
            return
        studies, self.listing_problems = self.list_studies()
        self.studies = {uid: StudyState(expected) for uid, expected in studies.items()}
        with self._lock:
            self._save_listing()

    def retrieve(self) -> MigrationReport:
        """Retrieve every study of the journal that is not complete; the report."""
        report = MigrationReport(listing_problems=list(self.listing_problems))
        report.found = len(self.studies)
        todo = [uid for uid, state in self.studies.items() if state.state != "complete"]
        report.skipped = report.found - len(todo)
        tell = self.progress or (lambda done, total: None)
        tell(0, len(todo))
        with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="migrate") as pool:
            for _ in pool.map(self._migrate_study, todo):
                tell(1, len(todo))
        for uid, state in self.studies.items():
            if state.state == "complete":
                report.complete += 1
            elif state.state == "incomplete":
                report.incomplete[uid] = state.reason or ""
            else:
                report.failed[uid] = state.reason or "not retrieved"
        report.instances, report.bytes = self.received_totals()
        report.seconds = time.monotonic() - self._started
        return report

    def received_totals(self) -> tuple[int, int]:
        """(instances, bytes) acknowledged so far in this run."""
        with self._lock:
            return sum(len(s) for s in self._received.values()), self._bytes

    def _stored(self, study: str | None, sop: str, size: int) -> None:
        """Count one instance made durable (called from the receiving thread)."""
        with self._lock:
            self._received.setdefault(study or "", set()).add(sop)
            self._bytes += size

    # --- listing ------------------------------------------------------------------------

    def list_studies(self) -> tuple[dict[str, int | None], list[str]]:
        """{study UID: instances the PACS reports}, and what the listing may have missed."""
        found: dict[str, int | None] = {}
        problems: list[str] = []
        contexts = [build_context(StudyRootQueryRetrieveInformationModelFind)]
        undated: set[str] = set()
        answered: list[int] = []  # how many answers each query had
        with self.legacy.association(contexts) as assoc:

            def query(dates: str, modality: str | None = None) -> bool:
                answers, stopped = self.legacy.find(assoc, self._study_query(dates, modality))
                for answer in answers:
                    uid = str(answer.get("StudyInstanceUID", "") or "")
                    if uid:
                        found[uid] = _int(answer.get("NumberOfStudyRelatedInstances"))
                        if not answer.get("StudyDate"):
                            undated.add(uid)
                answered.append(len(answers))
                return self._capped(len(answers), stopped)

            if not self.filters.dated:
                if not query(""):
                    return found, problems
                query('""')  # empty value matching: the undated studies, where supported
                if undated and not answered[-1]:
                    # The capped answer shows undated studies, no date window can find
                    # them, and the PACS does not match empty values: some may be missing.
                    problems.append(
                        "studies without StudyDate: the PACS caps its answer and does not "
                        'match empty values ("") so some may be missing (list them with '
                        "another --filter, e.g. PatientID=...)"
                    )
            windows = [(self.filters.first or FIRST_DAY, self.filters.last or LAST_DAY)]
            while windows:  # depth first, oldest first
                first, last = windows.pop()
                if not query(f"{_text(first)}-{_text(last)}"):
                    continue
                if first == last:
                    # One day still capped: by modality, unless the filters fix it already.
                    day = _text(first)
                    if any(keyword == "ModalitiesInStudy" for keyword, _ in self.filters.keys):
                        capped = [day]
                    else:
                        capped = [f"{day} {m}" for m in MODALITIES if query(f"{day}-{day}", m)]
                    problems += [
                        f"{where}: the answer is capped even for one day; studies may be "
                        "missing (narrow it with --filter)"
                        for where in capped
                    ]
                    continue
                middle = first + (last - first) // 2
                windows += [(middle + timedelta(days=1), last), (first, middle)]
        for uid, expected in found.items():
            if expected is None:
                found[uid] = self._count_instances(uid)
        return found, problems

    def _capped(self, count: int, stopped: bool) -> bool:
        """Whether an answer may be truncated: a stop status, the cap, or a round number."""
        return stopped or count >= self.max_results or (count >= 100 and count % 100 == 0)

    def _study_query(self, dates: str, modality: str | None = None) -> Dataset:
        """The study-level C-FIND identifier: the filters, a StudyDate and perhaps a modality."""
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        with warnings.catch_warnings():  # '""' (empty value matching) is not a valid DA
            warnings.simplefilter("ignore")
            query.StudyDate = dates
        query.NumberOfStudyRelatedInstances = ""
        for keyword, value in self.filters.keys:
            setattr(query, keyword, value)
        if modality is not None:
            query.ModalitiesInStudy = modality
        return query

    def _count_instances(self, study: str) -> int | None:
        """The study's instances by an IMAGE-level C-FIND (a PACS that does not compute
        NumberOfStudyRelatedInstances); None when it does not answer that either."""
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = study
        query.SeriesInstanceUID = ""
        query.SOPInstanceUID = ""
        contexts = [build_context(StudyRootQueryRetrieveInformationModelFind)]
        try:
            with self.legacy.association(contexts) as assoc:
                answers, stopped = self.legacy.find(assoc, query)
        except MigrationError as error:
            LOG.warning("%s", error)
            return None
        return None if stopped else len(answers)

    def _study_classes(self, study: str) -> list[str]:
        """The SOP classes of a study by a STUDY-level C-FIND (SOPClassesInStudy); [] when
        the PACS does not return them."""
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study
        query.SOPClassesInStudy = ""
        contexts = [build_context(StudyRootQueryRetrieveInformationModelFind)]
        with self.legacy.association(contexts) as assoc:
            answers, _ = self.legacy.find(assoc, query)
        found: set[str] = set()
        for answer in answers:
            value = answer.get("SOPClassesInStudy") or []
            found.update([value] if isinstance(value, str) else value)  # one value: a str
        return sorted(found)

    # --- retrieval ----------------------------------------------------------------------

    def _migrate_study(self, study: str) -> None:
        """Retrieve one study until its count is right or the retries are spent; journal it."""
        state = self.studies[study]
        for attempt in range(1 + self.retries):
            if attempt:
                time.sleep(RETRY_PAUSE * attempt)  # a PACS that dropped us may be busy
            self._wait_for_rate()
            try:
                problem = self._retrieve(study)
            except MigrationError as error:
                problem = str(error)
            except (RuntimeError, OSError) as error:  # pynetdicom's, or the network's
                problem = f"legacy PACS {self.legacy.name}: {type(error).__name__}: {error}"
            with self._lock:
                state.received = len(self._received.get(study, ()))
            short = state.expected is not None and state.received < state.expected
            if problem is None and not short:
                state.state, state.reason = "complete", None
                break
            state.reason = problem or f"{state.received} of {state.expected} instances received"
            state.state = "incomplete" if state.received else "failed"
        with self._lock:
            self._log_outcome(study, state)

    def _retrieve(self, study: str) -> str | None:
        """One C-MOVE or C-GET of the study; why it did not go through, or None."""
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study
        if self.method == "move":
            contexts = [build_context(StudyRootQueryRetrieveInformationModelMove)]
            with self.legacy.association(contexts) as assoc:
                responses = assoc.send_c_move(
                    query,
                    self.server.ctx.config.ae_title,
                    StudyRootQueryRetrieveInformationModelMove,
                )
                return self._final(responses, "C-MOVE")
        # C-GET: the instances come back on this association, into the same handler.
        model = StudyRootQueryRetrieveInformationModelGet
        contexts = [build_context(model)]
        classes = self._study_classes(study)
        if classes and len(classes) * len(STORAGE_SYNTAXES) < _MAX_CONTEXTS:
            # One context per class and syntax: the SCP accepts one syntax per context, so
            # this lets it send every instance as stored, not transcoded (Orthanc cannot
            # transcode JPEG 2000, and fails such a sub-operation instead).
            for uid in classes:
                contexts += [build_context(uid, [syntax]) for syntax in STORAGE_SYNTAXES]
        else:
            classes = _GET_STORAGE_CLASSES
            contexts += [build_context(uid, list(STORAGE_SYNTAXES)) for uid in classes]
        roles = [build_role(uid, scp_role=True) for uid in classes]
        handlers = [(evt.EVT_C_STORE, self.server.on_store)]
        with self.legacy.association(contexts, roles, handlers) as assoc:
            return self._final(assoc.send_c_get(query, model), "C-GET")

    def _final(self, responses: Iterator[tuple[Dataset, Any]], what: str) -> str | None:
        """Why a retrieval's responses did not end in success, or None."""
        code = None
        for status, _ in responses:
            if not status:
                return f"legacy PACS {self.legacy.name}: the association ended during the {what}"
            code = int(status.Status)
        if code is None or code not in _RETRIEVED:
            shown = "none" if code is None else f"0x{code:04X}"
            hint = ""
            if code == 0xA801:
                hint = " (move destination unknown: the PACS must know our AE title, host and port)"
            return f"legacy PACS {self.legacy.name}: {what} ended with status {shown}{hint}"
        return None

    def _wait_for_rate(self) -> None:
        """Sleep as the rate limit asks before a study (or a retry) starts."""
        with self._lock:
            now = time.monotonic()
            wait = 0.0
            if self.rate.studies_per_minute is not None:
                start = max(now, self._next_start)
                self._next_start = start + 60.0 / self.rate.studies_per_minute
                wait = start - now
            if self.rate.bytes_per_second is not None:
                due = self._started + self._bytes / self.rate.bytes_per_second
                wait = max(wait, due - now)
        if wait > 0:
            time.sleep(wait)


def read_journal(path: str | os.PathLike) -> dict[str, StudyState]:
    """The studies of a journal (`<id>.json`, the listing) and their latest outcomes (`<id>.log`).

    A line that is not JSON (empty, or a write a kill cut short) records nothing.
    """
    listing = json.loads(Path(path).read_bytes())
    studies = {uid: StudyState(expected) for uid, expected in listing["studies"].items()}
    try:
        lines = _log_path(path).read_bytes().splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        state = studies.get(entry.pop("study"))
        if state is not None:
            vars(state).update(entry)
    return studies


def _log_path(journal: str | os.PathLike) -> Path:
    return Path(journal).with_suffix(".log")


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _text(day: date | None) -> str:
    return "" if day is None else day.strftime("%Y%m%d")
