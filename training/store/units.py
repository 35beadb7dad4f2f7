"""Series and patients: the two units every count and table must name (issue 11).

A workspace entry is one CT series; a patient (pseudonym `patient`) may have several
(labels PAT-0001, PAT-0001-2, …). The split keeps a patient's series together, so a split
holds whole patients. Counts shown anywhere come from here, so they say which unit
they count.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def _patient(info: Any) -> str:
    return str(getattr(info, "patient", "") or getattr(info, "pseudonym", ""))


def unit_counts(infos: Iterable[Any]) -> dict[str, Any]:
    """{"n_series", "n_patients", "by_split": {split: {"n_series", "n_patients"}}} from
    PatientInfo-like rows (pseudonym = series label, patient, split); "" → "unsplit"."""
    infos = list(infos)
    by_split: dict[str, dict[str, Any]] = {}
    for split in sorted({str(getattr(i, "split", "") or "unsplit") for i in infos}):
        rows = [i for i in infos if str(getattr(i, "split", "") or "unsplit") == split]
        by_split[split] = {"n_series": len(rows), "n_patients": len({_patient(i) for i in rows})}
    return {"n_series": len(infos), "n_patients": len({_patient(i) for i in infos}), "by_split": by_split}


def plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def series_of_patients(n_series: int, n_patients: int) -> str:
    """'5 series of 3 patients', '1 series of 1 patient'."""
    return f"{plural(n_series, 'series', 'series')} of {plural(n_patients, 'patient')}"


def split_summary(infos: Iterable[Any]) -> str:
    """'5 series of 3 patients; train 3 series of 2 patients, test 2 series of 1 patient'."""
    c = unit_counts(infos)
    parts = [f"{split} {series_of_patients(v['n_series'], v['n_patients'])}"
             for split, v in c["by_split"].items()]
    head = series_of_patients(c["n_series"], c["n_patients"])
    return head + (f"; {', '.join(parts)}" if parts else "")
