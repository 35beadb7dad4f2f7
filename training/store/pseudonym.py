"""Stable pseudonyms and scrubbing of identifying strings (SPEC F7).

A patient is known in a workspace only by ``PAT-0001``-style labels. The link from a
PatientID to its number is an HMAC-SHA256 of the ID under a salt that is random per
workspace; only the digest is stored, so the same patient dropped again gets the same
pseudonym while the file holds neither the ID nor an unsalted hash of it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import re
from collections.abc import Iterable


def new_salt() -> str:
    return os.urandom(16).hex()


def patient_digest(salt: str, patient_id: str) -> str:
    """HMAC-SHA256(salt, PatientID) as hex; an empty ID is hashed as given."""
    return hmac.new(bytes.fromhex(salt), patient_id.encode("utf-8"), hashlib.sha256).hexdigest()


def format_pseudonym(number: int) -> str:
    return f"PAT-{number:04d}"


def series_label(pseudonym: str, series_number: int) -> str:
    """Label of a patient's n-th CT series (1-based): the first keeps the bare pseudonym."""
    return pseudonym if series_number <= 1 else f"{pseudonym}-{series_number}"


def identifying_tokens(values: Iterable[str]) -> list[str]:
    """Strings to scrub: each value whole and, for PN values, its ^-separated components.

    Components shorter than 3 characters are left out (they would match everywhere).
    """
    tokens: set[str] = set()
    for v in values:
        v = (v or "").strip()
        if len(v) >= 3:
            tokens.add(v)
        for part in re.split(r"[\^=]", v):
            part = part.strip()
            # A lone number ("007") would also hit file names like CT_0007.dcm.
            if len(part) >= 3 and re.search(r"[^\W\d_]", part):
                tokens.add(part)
        # Folder names often spell a DICOM name with _ or space instead of ^.
        if "^" in v:
            for sep in ("_", " ", "-", ""):
                alt = v.replace("^", sep).strip(sep)
                if len(alt) >= 3:
                    tokens.add(alt)
    return sorted(tokens, key=len, reverse=True)


def scrub(text: str, replacements: dict[str, str]) -> str:
    """Replace each key (case-insensitive) in text with its value, in one pass (longest
    keys first), so a replacement is never itself rewritten."""
    if not replacements:
        return text
    pattern, lower = _scrubber(tuple(sorted(replacements.items())))
    return pattern.sub(lambda m: lower[m.group(0).lower()], text)


@functools.lru_cache(maxsize=16)
def _scrubber(items: tuple[tuple[str, str], ...]) -> tuple[re.Pattern, dict[str, str]]:
    # One compiled pattern per set of replacements: an ingest scrubs every file's path
    # with the same set, and building the alternation each time cost ~0.2 ms a call.
    keys = sorted((k for k, _ in items), key=len, reverse=True)
    lower = {k.lower(): v for k, v in items}
    return re.compile("|".join(re.escape(k) for k in keys), re.IGNORECASE), lower
