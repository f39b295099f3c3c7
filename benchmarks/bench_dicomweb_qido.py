"""QIDO-RS study search latency (p50, p99) on an index of 100,000 instances (issue 14).

Run with `python -m pytest benchmarks/bench_dicomweb_qido.py -s`. Builds bench_cfind's
synthetic archive (2,000 studies of 2 series of 25 instances, 1,000 patients; no
pixels: QIDO-RS reads only the index), serves it as `pacs-engine serve --http` does
(the application with the real authenticator, on uvicorn in a thread), and times
`GET /studies?...` from one keep-alive httpx client with an API key: the same four
kinds of query bench_cfind sends (PatientID, AccessionNumber, a PatientName wildcard,
StudyDate), request sent to body read. The same queries are also answered in-process
(`qido.parse`, `find`, `qido.answer`: the work without HTTP), and `GET /health` timed on
the same connection (HTTP without authentication or search), so that the figures are
ratios of one run.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.bench_cfind import QUERIES, ROWS_PER_SERIES, SERIES_PER_STUDY, STUDIES, rows_of
from pacs_engine import Archive
from pacs_engine.serve.audit import AuditLog
from pacs_engine.serve.config import ServeConfig
from pacs_engine.serve.context import ServeContext
from pacs_engine.serve.web import qido
from pacs_engine.serve.web.app import make_app
from pacs_engine.serve.web.auth import Authenticator, KeyStore
from pacs_engine.serve.web.server import HttpServer

INCLUDE = "includefield=StudyDescription"


def query_of(rnd: random.Random) -> dict[str, str]:
    """One study search, as bench_cfind's query_of picks them."""
    study = rnd.randrange(STUDIES)
    row = rows_of(study)[0]
    kind = rnd.randrange(4)
    if kind == 0:
        return {"PatientID": row["PatientID"]}
    if kind == 1:
        return {"AccessionNumber": row["AccessionNumber"]}
    if kind == 2:
        return {"PatientName": row["PatientName"].split("^")[0] + "^GIVEN*"}
    return {"StudyDate": row["StudyDate"]}


def test_qido_study_search_latency(tmp_path: Path) -> None:
    archive = Archive.create(tmp_path / "a")
    built = time.perf_counter()
    for first in range(0, STUDIES, 20):
        archive.index.commit([r for s in range(first, first + 20) for r in rows_of(s)])
    built = time.perf_counter() - built
    instances = STUDIES * SERIES_PER_STUDY * ROWS_PER_SERIES
    assert len(archive.index) == instances
    key = KeyStore(archive.path).add("bench", "reader")
    context = ServeContext(archive, ServeConfig(), AuditLog(archive.path))
    app = make_app(context, Authenticator(archive.path, None), routes=qido.routes())
    server = HttpServer(app)
    _, port = server.start("127.0.0.1", 0)
    rnd = random.Random(14)
    searches = [query_of(rnd) for _ in range(QUERIES)]
    http_times, direct_times, health_times, matches = [], [], [], []
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        ) as client:
            for filters in searches:
                query = "&".join([*(f"{k}={v}" for k, v in filters.items()), INCLUDE])
                start = time.perf_counter()
                response = client.get(f"/studies?{query}")
                body = response.content
                http_times.append(time.perf_counter() - start)
                assert response.status_code in (200, 204)
                matches.append(len(response.json()) if body else 0)
            for _ in range(QUERIES):  # HTTP with authentication, no search: the floor
                start = time.perf_counter()
                assert client.get("/health").status_code == 200
                health_times.append(time.perf_counter() - start)
        for filters in searches:  # the same searches in-process: parse, find, DICOM JSON
            params = {k: [v] for k, v in filters.items()} | {"includefield": ["StudyDescription"]}
            start = time.perf_counter()
            parsed = qido.parse(qido.SEARCHES[0], params, {})
            found = list(qido.find(archive, parsed.query))
            qido.answer(parsed, found, "http://127.0.0.1", "PACS_ENGINE")
            direct_times.append(time.perf_counter() - start)
            assert len(found) >= 1
    finally:
        server.stop()
        context.audit.close()
        archive.close()
    ms, direct = np.array(http_times) * 1000, np.array(direct_times) * 1000
    health = np.array(health_times) * 1000
    ratio = np.percentile(ms, 50) / np.percentile(direct, 50)
    print(
        f"\nQIDO-RS /studies on {instances:,} instances ({STUDIES:,} studies; index built in "
        f"{built:.0f} s): {QUERIES} searches, p50 {np.percentile(ms, 50):.2f} ms, "
        f"p99 {np.percentile(ms, 99):.2f} ms, mean matches {np.mean(matches):.1f}; "
        f"the same searches in-process (parse, find, DICOM JSON): p50 "
        f"{np.percentile(direct, 50):.2f} ms (HTTP/in-process {ratio:.1f}); "
        f"GET /health on the same client: p50 {np.percentile(health, 50):.2f} ms"
    )
