"""The de-identification key: pseudonyms, UIDs and date offsets are keyed hashes of it.

The same key gives the same research archive again; another key gives pseudonyms that
cannot be linked to the first. The key never appears in a message or a log.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from pacs_engine.errors import PacsEngineError

KEY_BYTES = 32
#: Shifted dates move back by 1 to 10 years (whole days): far enough to hide the real ones.
SHIFT_DAYS = (365, 3650)
#: Research UIDs a Key remembers (a study's and series' UIDs recur in each of its
#: instances), in two halves: when the recent half is full it becomes the older one, and
#: a UID found there moves back to the recent half, so the UIDs in use outlive the
#: one-off SOP Instance UIDs that fill the memory.
UID_CACHE = 65536
#: Patients whose pseudonym and date shift a Key remembers (each recurs in every instance
#: of the patient); the memory starts again when full.
PATIENT_CACHE = 4096


class KeyFileError(PacsEngineError, ValueError):
    """A key file that is missing, unreadable or not a key."""


def make_key(path: str | os.PathLike) -> Path:
    """Write a new random key to `path` (mode 0600); refuses to overwrite a file."""
    target = Path(path)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{target}: already exists; a key is never overwritten") from None
    except OSError as error:
        raise KeyFileError(f"{target}: cannot create the key file: {error.strerror}") from None
    with os.fdopen(fd, "w") as file:
        os.fchmod(file.fileno(), 0o600)  # whatever the umask
        file.write(secrets.token_hex(KEY_BYTES) + "\n")
    return target


class Key:
    """A loaded key and the keyed hashes made from it."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._uids: dict[str, str] = {}  # the recent half of the UID memory
        self._older_uids: dict[str, str] = {}
        self._patient_ids: dict[str, str] = {}
        self._shifts: dict[str, int] = {}

    def __getstate__(self) -> dict[str, object]:
        return {"_secret": self._secret}  # the memories stay in their process

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["_secret"])  # type: ignore[misc]

    @classmethod
    def load(cls, path: str | os.PathLike) -> Key:
        """The key in a file written by `make_key` (64 hex digits); KeyFileError says why not."""
        try:
            text = Path(path).read_text(encoding="ascii").strip()
        except FileNotFoundError:
            raise KeyFileError(
                f"{path}: no such key file (make one with `pacs-engine deid-key`)"
            ) from None
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or "not a key file (not ASCII text)"
            raise KeyFileError(f"{path}: cannot read the key file: {reason}") from None
        try:
            secret = bytes.fromhex(text)
        except ValueError:
            raise KeyFileError(f"{path}: not a key file (expected hexadecimal digits)") from None
        if len(secret) < KEY_BYTES:
            raise KeyFileError(
                f"{path}: the key is too short ({len(secret)} bytes, {KEY_BYTES} needed)"
            )
        # Whoever reads the key can tell which pseudonym is which patient's (by trying IDs).
        mode = os.stat(path).st_mode & 0o777
        if mode & 0o077:
            raise KeyFileError(
                f"{path}: others may read the key (mode {mode:o}); make it its owner's "
                f"alone: chmod 600 {path}"
            )
        return cls(secret)

    def __repr__(self) -> str:
        return "Key(<secret>)"  # never the secret itself

    def digest(self, purpose: str, value: str) -> bytes:
        """HMAC-SHA256 of a value for one purpose (so a UID and an ID never share a hash)."""
        # hmac.digest: OpenSSL's one-shot HMAC, the same bytes as hmac.new(...).digest().
        return hmac.digest(self._secret, f"{purpose}\0{value}".encode(), "sha256")

    def uid(self, uid: str) -> str:
        """The research UID of a UID: 2.25. and 128 bits of its keyed hash (PS3.5 B.2)."""
        mapped = self._uids.get(uid)
        if mapped is None:
            mapped = self._older_uids.get(uid)
            if mapped is None:
                mapped = "2.25." + str(int.from_bytes(self.digest("uid", uid)[:16], "big"))
            if len(self._uids) >= UID_CACHE // 2:
                self._older_uids, self._uids = self._uids, {}
            self._uids[uid] = mapped
        return mapped

    def patient_id(self, patient: str) -> str:
        """The pseudonymous Patient ID of a patient (its ID and issuer)."""
        mapped = self._patient_ids.get(patient)
        if mapped is None:
            if len(self._patient_ids) >= PATIENT_CACHE:
                self._patient_ids.clear()
            mapped = "ANON" + self.digest("patient", patient)[:8].hex().upper()
            self._patient_ids[patient] = mapped
        return mapped

    def shift_days(self, patient: str) -> int:
        """Days this patient's dates move back by (modified dates option)."""
        days = self._shifts.get(patient)
        if days is None:
            if len(self._shifts) >= PATIENT_CACHE:
                self._shifts.clear()
            low, high = SHIFT_DAYS
            number = int.from_bytes(self.digest("shift", patient)[:4], "big")
            days = self._shifts[patient] = low + number % (high - low + 1)
        return days

    def fingerprint(self) -> str:
        """A short public name of the key (a hash of a hash), to tell research archives apart."""
        return self.digest("fingerprint", "")[:6].hex()
