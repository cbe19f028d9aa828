"""The reason codes of PROTOCOL.md section 8: every rejection and fault event carries one."""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    """Rejection codes, in the order the station checks them, then the other event codes."""

    TOO_LARGE = "too-large"
    BAD_ENVELOPE = "bad-envelope"
    WRONG_PAYLOAD_TYPE = "wrong-payload-type"
    BAD_SIGNATURE = "bad-signature"
    UNKNOWN_KEY = "unknown-key"
    THRESHOLD_NOT_MET = "threshold-not-met"
    SCHEMA = "schema"
    OUT_OF_SCOPE = "out-of-scope"
    WRONG_AUDIENCE = "wrong-audience"
    CLOCK_UNTRUSTED = "clock-untrusted"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    ROLLBACK = "rollback"
    VERSION_CONFLICT = "version-conflict"
    VERSION_GAP = "version-gap"
    REPLAY = "replay"
    # A release the running version may not update to (below its min_version): docs/releases.md.
    UPDATE_INCOMPATIBLE = "update-incompatible"
    # Event codes that are not verdicts on one envelope.
    KEYRING_EXPIRED = "keyring-expired"
    MEDIA_UNREACHABLE = "media-unreachable"
    MEDIA_TOO_LARGE = "media-too-large"
    MEDIA_HASH_MISMATCH = "media-hash-mismatch"


class Rejected(Exception):
    """Raised inside the verification pipeline; carries the code and a human-readable detail."""

    def __init__(self, code: Code, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
