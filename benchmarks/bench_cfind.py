"""C-FIND study-level latency (p50, p99) on an index of 100,000 instances (issue 13).

Run with `python -m pytest benchmarks/bench_cfind.py -s`. Builds an archive whose
index holds 100,000 synthetic rows (2,000 studies of 2 series of 25 instances,
1,000 patients; no pixels: C-FIND reads only the index), serves it with the Q/R
the server `pacs-engine serve` runs (DimseServer with its Q/R services, which sets
TCP_NODELAY) on 127.0.0.1, and times study-level queries from a pynetdicom SCU over
one association, request sent to final response received, each asking for the usual
return keys and the computed counts. The SCU sets TCP_NODELAY too (dcmtk's default)
unless PACS_ENGINE_BENCH_NODELAY=0.
"""

from __future__ import annotations

import os
import random
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from benchmarks.bench_index import study_rows
from pacs_engine import Archive
from pacs_engine.serve.audit import AuditLog
from pacs_engine.serve.config import Peer, ServeConfig
from pacs_engine.serve.context import ServeContext
from pacs_engine.serve.dimse import DimseServer
from pacs_engine.serve.qr import QR_SERVICES, STUDY_ROOT_FIND
from pacs_engine.serve.spool import Spool

ROOT = "1.2.826.0.1.3680043.8.498.78"
STUDIES, SERIES_PER_STUDY, ROWS_PER_SERIES = 2_000, 2, 25
QUERIES = 300
#: PACS_ENGINE_BENCH_NODELAY=0 leaves the client's socket as pynetdicom makes it (Nagle on).
NO_DELAY = os.environ.get("PACS_ENGINE_BENCH_NODELAY", "1") == "1"
RETURN_KEYS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "StudyDescription", "AccessionNumber", "StudyInstanceUID", "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
)  # fmt: skip


def rows_of(study: int) -> list[dict[str, Any]]:
    """The index rows of one synthetic study (bench_index's, at this benchmark's size)."""
    return study_rows(study, SERIES_PER_STUDY, ROWS_PER_SERIES)


def no_delay(event: Any) -> None:
    """Send each P-DATA at once (TCP_NODELAY), as dcmtk does: a DIMSE message is two writes,
    command then data set, and Nagle's algorithm with delayed ACKs holds the second ~40 ms."""
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def query_of(rnd: random.Random) -> Dataset:
    study = rnd.randrange(STUDIES)
    rows = rows_of(study)[0]
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in RETURN_KEYS:
        setattr(ds, keyword, "")
    kind = rnd.randrange(4)
    if kind == 0:
        ds.PatientID = rows["PatientID"]
    elif kind == 1:
        ds.AccessionNumber = rows["AccessionNumber"]
    elif kind == 2:
        ds.PatientName = rows["PatientName"].split("^")[0] + "^GIVEN*"
    else:
        ds.StudyDate = rows["StudyDate"]
    return ds


def test_study_level_cfind_latency(tmp_path: Path) -> None:
    archive = Archive.create(tmp_path / "a")
    built = time.perf_counter()
    for first in range(0, STUDIES, 20):
        archive.index.commit([r for s in range(first, first + 20) for r in rows_of(s)])
    built = time.perf_counter() - built
    assert len(archive.index) == STUDIES * SERIES_PER_STUDY * ROWS_PER_SERIES
    config = ServeConfig().with_peers(Peer("BENCH", frozenset({"query"})))
    ctx = ServeContext(archive, config, AuditLog(archive.path))
    server = DimseServer(ctx, Spool(archive.path), QR_SERVICES)  # `serve`'s own server
    _, port = server.start(0)
    scu = AE(ae_title="BENCH")
    scu.add_requested_context(STUDY_ROOT_FIND)
    assoc = scu.associate(
        "127.0.0.1",
        port,
        ae_title="PACS_ENGINE",
        evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)] if NO_DELAY else None,
    )
    rnd = random.Random(13)
    times, matches = [], []
    try:
        for _ in range(QUERIES):
            query = query_of(rnd)
            start = time.perf_counter()
            answers = list(assoc.send_c_find(query, STUDY_ROOT_FIND))
            times.append(time.perf_counter() - start)
            assert answers[-1][0].Status == 0x0000
            matches.append(len(answers) - 1)
    finally:
        assoc.release()
        server.stop()
        ctx.audit.close()
        archive.close()
    ms = np.array(times) * 1000
    instances = STUDIES * SERIES_PER_STUDY * ROWS_PER_SERIES
    print(
        f"\nC-FIND STUDY (TCP_NODELAY {NO_DELAY}) on {instances:,} instances "
        f"({STUDIES:,} studies; index built in {built:.0f} s): {QUERIES} queries, "
        f"p50 {np.percentile(ms, 50):.2f} ms, p99 {np.percentile(ms, 99):.2f} ms, "
        f"mean matches {np.mean(matches):.1f}"
    )
