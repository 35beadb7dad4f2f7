"""The identifying values of a DICOM header: what the store scrubs from folder and file
names, messages and ROI names (training/store/pseudonym.py). Read from every header of
a drop, whatever its modality (an MR, a dose file, an orphan RTSTRUCT), since their
patients' names and IDs can be folder names too."""

from __future__ import annotations

# Header elements whose values identify a patient (or where the data was made).
IDENTIFYING_KEYWORDS = (
    "PatientID", "PatientName", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames",
    "PatientBirthName", "PatientMotherBirthName", "AccessionNumber", "InstitutionName",
)
# read alongside, to key a patient without a PatientID by its study
READ_KEYWORDS = (*IDENTIFYING_KEYWORDS, "OtherPatientIDsSequence", "StudyInstanceUID")


def identity_values(ds) -> dict[str, str]:
    """Identifying values of a pydicom Dataset (or anything with .get(keyword)): keyword →
    text ("" where absent, multiple values joined by backslashes), plus StudyInstanceUID;
    the IDs of OtherPatientIDsSequence join OtherPatientIDs."""
    out: dict[str, str] = {}
    for k in (*IDENTIFYING_KEYWORDS, "StudyInstanceUID"):
        try:
            v = ds.get(k, "")
        except Exception:  # a damaged element: the others still count
            v = ""
        if v is None:
            v = ""
        if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
            v = "\\".join(str(x) for x in v)
        out[k] = str(v).strip()
    try:
        seq = ds.get("OtherPatientIDsSequence", None) or []
        more = [str(item.get("PatientID", "") or "").strip() for item in seq]
    except Exception:
        more = []
    if any(more):
        out["OtherPatientIDs"] = "\\".join([x for x in [out["OtherPatientIDs"], *more] if x])
    return out


def note_identity(result, ds, raw_key: tuple) -> None:
    """Add ds's identity_values to result.identities unless a header with the same raw
    identifying bytes (`raw_key`) was seen already (a series repeats them per file)."""
    seen = result.__dict__.setdefault("_identity_keys", set())
    if raw_key in seen:
        return
    seen.add(raw_key)
    values = identity_values(ds)
    if any(v for k, v in values.items() if k != "StudyInstanceUID"):
        result.identities.append(values)
