"""DICOMweb (PS3.18) over HTTP: QIDO-RS, WADO-RS and STOW-RS, with authentication and audit.

`app.py` builds the ASGI application (authentication, CORS, the health endpoint) from
the routes of `qido.py`, `wado.py` and `stow.py`; `request.py` holds what every
endpoint asks of a request (the server context, who is asking, their role, the audit).
"""
