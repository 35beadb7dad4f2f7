"""Stable pseudonyms and scrubbing of identifying strings (SPEC F7).

A patient is known in a workspace only by ``PAT-0001``-style labels. The link from a
PatientID to its number is a keyed digest of the ID: HMAC-SHA256 under a salt that is
random per workspace, keyed again with the user's pseudonym key, which is never stored in
a workspace (training/store/pseudonym_key.py). The same patient dropped again gets the
same pseudonym, while the file holds neither the ID nor anything that can be tested
against guessed IDs without the key.

Scrubbing: every identifying value read from a header of the drop (identity_values) is
turned into tokens (identifying_tokens) and each occurrence in a stored path, message or
ROI name is replaced by the patient's pseudonym (scrub). How a token matches depends on
how likely it is to occur by chance:

- 5+ characters, or anything with a separator inside ("Doe_John"): anywhere, any case;
- an alphabetic name part of 3–4 characters ("Doe"): not inside a longer word, so
  "Art" does not turn "Heart" into "HePAT-0001";
- a number (an ID, a date spelt 19230417 / 1923-04-17 / 17.04.1923): not inside a longer
  number, so a UID or file number that contains its digits is left alone;
- a 1–2 character name part ("Li"): only as a whole path component or word.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import hmac
import itertools
import json
import os
import re
from collections.abc import Iterable

# Markers of how a token matches (see the module docstring); never part of real text.
_WORD = "\0w:"  # not inside a longer run of letters
_NUM = "\0n:"   # not inside a longer run of digits
_PART = "\0p:"  # a whole path component / word

from training.dicom.identity import IDENTIFYING_KEYWORDS, identity_values  # noqa: F401 - re-exported

_NAME_KEYWORDS = {"PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName"}
INSTITUTION = "[institution]"


def new_salt() -> str:
    return os.urandom(16).hex()


def patient_digest(salt: str, patient_id: str, key: bytes | None = None) -> str:
    """The stored digest of a patient key: HMAC-SHA256(salt, PatientID) as hex, and with a
    pseudonym key, that keyed again ('<key id>:<hex>', pseudonym_key.keyed)."""
    salted = hmac.new(bytes.fromhex(salt), patient_id.encode("utf-8", "surrogateescape"),
                      hashlib.sha256).hexdigest()
    if key is None:
        return salted
    from training.store.pseudonym_key import keyed

    return keyed(key, salted)


def format_pseudonym(number: int) -> str:
    return f"PAT-{number:04d}"


def series_label(pseudonym: str, series_number: int) -> str:
    """Label of a patient's n-th CT series (1-based): the first keeps the bare pseudonym."""
    return pseudonym if series_number <= 1 else f"{pseudonym}-{series_number}"


def _date_spellings(value: str) -> list[str]:
    """A DICOM date (YYYYMMDD) in the spellings people use in folder names."""
    m = re.fullmatch(r"(\d{4})(\d{2})(\d{2})", value)
    if not m:
        return []
    y, mo, d = m.groups()
    mo_, d_ = str(int(mo)), str(int(d))
    out = {value, f"{d}{mo}{y}", f"{mo}{d}{y}"}
    for sep in ("-", ".", "/", "_", " "):
        out |= {f"{y}{sep}{mo}{sep}{d}", f"{d}{sep}{mo}{sep}{y}", f"{mo}{sep}{d}{sep}{y}",
                f"{d_}{sep}{mo_}{sep}{y}", f"{mo_}{sep}{d_}{sep}{y}", f"{d}{sep}{mo}{sep}{y[2:]}"}
    return sorted(out)


def _name_tokens(value: str) -> set[str]:
    # A number in a name ("Phantom^000") is no name part: as a token it would hit every
    # file called slice_000.dcm.
    letters = re.compile(r"[^\W\d_]")
    parts = [p.strip() for p in re.split(r"[\^=]", value) if letters.search(p)]
    words = [w for p in parts for w in re.split(r"[\s,.\-_]+", p) if letters.search(w)]
    tokens = set(parts) | set(words)
    # spelt whole, numbers included ("PHANTOM_001"), in any order of its first three parts
    named = [p.strip() for p in re.split(r"[\^=]", value) if p.strip()][:3]  # family, given, middle
    for r in range(2, len(named) + 1):
        for perm in itertools.permutations(named, r):
            for sep in ("_", " ", "-", ".", "", ",", ", ", "^"):
                tokens.add(sep.join(perm))
    return tokens


def identifying_tokens(values: Iterable[str] | dict[str, str]) -> list[str]:
    """Strings to scrub, each possibly carrying a match marker (see the module docstring).

    values: plain strings (IDs, PN values with ^, dates YYYYMMDD), or identity_values().
    Multi-valued elements (backslash-separated) count value by value."""
    items = values.items() if isinstance(values, dict) else (("", v) for v in values)
    raw: set[str] = set()
    for keyword, value in items:
        for v in str(value or "").split("\\"):
            v = v.strip()
            if not v:
                continue
            raw.add(v)
            if keyword in _NAME_KEYWORDS or "^" in v or (not keyword and re.search(r"[^\W\d_]", v)):
                raw |= _name_tokens(v)
            raw |= set(_date_spellings(v))
    tokens: set[str] = set()
    for t in raw:
        t = t.strip()
        if not t:
            continue
        if t.isdigit():
            if len(t) >= 3:
                tokens.add(_NUM + t)
            continue
        if len(t) <= 2:
            tokens.add(_PART + t)
        elif len(t) <= 4 and re.fullmatch(r"[^\W\d_]+", t):
            tokens.add(_WORD + t)
        elif re.fullmatch(r"[\d\W_]+", t) and re.search(r"\d", t):
            tokens.add(_NUM + t)  # a date or ID with separators
        else:
            tokens.add(t)
    return sorted(tokens, key=lambda k: len(_bare(k)), reverse=True)


def identity_replacements(values: dict[str, str], pseudonym: str) -> dict[str, str]:
    """token → replacement for one patient's identity_values(): the patient's values
    become its pseudonym, the institution's name (spelt with _ - or nothing for spaces)
    becomes "[institution]"."""
    out: dict[str, str] = {}
    inst = str(values.get("InstitutionName", "") or "").strip()
    for t in identifying_tokens({k: v for k, v in values.items()
                                 if k not in ("InstitutionName", "StudyInstanceUID")}):
        out.setdefault(t, pseudonym)
    if inst:
        spellings = {inst} | {re.sub(r"\s+", sep, inst) for sep in ("_", "-", "", ".")}
        for t in identifying_tokens({"InstitutionName": "\\".join(spellings)}):
            out.setdefault(t, INSTITUTION)
    return out


def _bare(token: str) -> str:
    return token[3:] if token[:1] == "\0" else token


def scrub(text: str, replacements: "dict[str, str] | Replacements") -> str:
    """Replace each key (case-insensitive) in text with its value, in one pass (longest
    keys first), so a replacement is never itself rewritten. Keys may carry the match
    markers of identifying_tokens. Pass a Replacements to scrub many texts with one set:
    its matcher is built once, not per call."""
    if not replacements or not text:
        return text
    if isinstance(replacements, Replacements):
        return replacements.scrubber().sub(text)
    return _scrubber(tuple(sorted(replacements.items()))).sub(text)


_SEP = r"/\\\s,;:'\"()\[\]"


class Replacements(dict):
    """token → replacement (keys as identifying_tokens spells them) that keeps its
    Scrubber until it changes. An ingest scrubs every path of a drop with one set of
    thousands of tokens (a 300-patient drop: ~10,000 spellings); sorting and matching the
    whole set on each call made the ingest quadratic in the number of patients."""

    __slots__ = ("_scrubber", "_packed")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._scrubber: Scrubber | None = None
        self._packed: tuple[str, bytes] | None = None  # (version, items as JSON)

    def __reduce__(self):
        # Sent to a worker with every series job: the items are encoded once per version
        # (JSON: str → str only, nothing that could run code when read back), and a worker
        # that already holds this version reuses its copy and matcher.
        if self._packed is None:
            self._packed = (os.urandom(12).hex(), json.dumps(dict(self), ensure_ascii=False).encode())
        return (_unpacked, self._packed)

    def scrubber(self) -> "Scrubber":
        if self._scrubber is None:
            self._scrubber = Scrubber(self.items())
        return self._scrubber

    def _changed(self) -> None:
        self._scrubber = None
        self._packed = None

    def __setitem__(self, key, value):
        self._changed()
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self._changed()
        super().__delitem__(key)

    def setdefault(self, key, default=None):
        if key not in self:
            self._changed()
        return super().setdefault(key, default)

    def update(self, *args, **kwargs):
        self._changed()
        super().update(*args, **kwargs)

    def __ior__(self, other):
        self._changed()
        return super().__ior__(other)

    def pop(self, *args):
        self._changed()
        return super().pop(*args)

    def popitem(self):
        self._changed()
        return super().popitem()

    def clear(self):
        self._changed()
        super().clear()


_RECEIVED: "collections.OrderedDict[str, Replacements]" = collections.OrderedDict()


def _unpacked(version: str, packed: bytes) -> Replacements:
    """A Replacements received from another process (see Replacements.__reduce__).
    The copy is shared by the jobs of one version, which only read it."""
    r = _RECEIVED.get(version)
    if r is None:
        r = _RECEIVED[version] = Replacements(json.loads(packed))  # plain str → str: no code to run
        r._packed = (version, packed)
        while len(_RECEIVED) > 4:
            _RECEIVED.popitem(last=False)
    return r


class Scrubber:
    """The matcher of one set of replacements.

    Semantics are those of one regular expression: the alternation of every key (longest
    first, each with the boundary rule of its marker), case-insensitive, left to right.
    Python's `re` tries every alternative at every position, so that costs O(text ×
    keys). Here a key that does not occur in the text (case-insensitively) cannot match and
    is left out of the expression: an index of the keys' first three characters finds the
    ones that occur in O(text), and only those few enter the alternation (compiled once
    per distinct set). A non-ASCII text, whose case folding `str.lower` and `re` may
    spell differently, and non-ASCII keys go through the whole alternation's rule
    unfiltered, so the result is always the single expression's."""

    def __init__(self, items: Iterable[tuple[str, str]]):
        items = sorted(items)
        keys = sorted((k for k, _ in items), key=lambda k: len(_bare(k)), reverse=True)
        self._rank = {k: i for i, k in enumerate(keys)}
        self._lower: dict[str, str] = {}
        for k, v in items:
            self._lower.setdefault(_bare(k).lower(), v)
        self._index: dict[str, list[tuple[str, str]]] = {}
        self._always: list[str] = []  # non-ASCII keys
        for k in keys:
            b = _bare(k)
            if not b:
                continue
            if not b.isascii():
                self._always.append(k)
                continue
            low = b.lower()
            self._index.setdefault(low[:3], []).append((low, k))
        self._lengths = sorted({len(p) for p in self._index})
        self._keys = keys
        self._patterns: dict[tuple[str, ...], re.Pattern] = {}

    def _pattern(self, keys: tuple[str, ...]) -> re.Pattern:
        pat = self._patterns.get(keys)
        if pat is None:
            if len(self._patterns) > 4096:
                self._patterns.clear()
            pat = self._patterns[keys] = re.compile("|".join(map(_alternative, keys)), re.IGNORECASE)
        return pat

    def candidates(self, text: str) -> tuple[str, ...]:
        """The keys that can match in text (ranked as in the whole alternation)."""
        if not text.isascii():
            return tuple(self._keys)
        low = text.lower()
        found = set(self._always)
        index, n = self._index, len(low)
        for i in range(n):
            for L in self._lengths:
                if i + L > n:
                    break
                hit = index.get(low[i:i + L])
                if hit:
                    for b, k in hit:
                        if low.startswith(b, i):
                            found.add(k)
        return tuple(sorted(found, key=self._rank.__getitem__))

    def sub(self, text: str) -> str:
        keys = self.candidates(text)
        if not keys:
            return text
        lower = self._lower
        return self._pattern(keys).sub(lambda m: lower.get(m.group(0).lower(), m.group(0)), text)


def _alternative(k: str) -> str:
    b = re.escape(_bare(k))
    if k.startswith(_WORD):
        return rf"(?<![^\W\d_]){b}(?![^\W\d_])"
    if k.startswith(_NUM):
        return rf"(?<!\d){b}(?!\d)"
    if k.startswith(_PART):
        return rf"(?<![^{_SEP}]){b}(?![^{_SEP}.])"
    return b


@functools.lru_cache(maxsize=16)
def _scrubber(items: tuple[tuple[str, str], ...]) -> Scrubber:
    return Scrubber(items)
