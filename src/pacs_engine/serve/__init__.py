"""Serving the archive on the network: DICOM (DIMSE) and, later, DICOMweb.

The layer above `read/`: servers read through `Archive` and the index, and write
through the ingest path. `config.py` holds what a server is told (peers and their
rights, TLS, limits), `audit.py` the append-only record of every access, and
`context.py` what a protocol handler is given.
"""
