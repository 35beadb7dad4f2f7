"""A drop with distinct identifying markers planted in every identifying header field,
private tags, other free-text fields, and in folder and file names: CT patients (phantom
and, where given, a real series), an MR-only patient, an RTSTRUCT-only patient and a
dose-only patient. `search_markers` looks for them in every byte a run wrote."""

from __future__ import annotations

import io
import re
import shutil
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from training.dicom.phantom import generate_cohort

MR_CLASS = "1.2.840.10008.5.1.4.1.1.4"
DOSE_CLASS = "1.2.840.10008.5.1.4.1.1.481.2"


@dataclass
class Person:
    tag: str
    birth: str  # YYYYMMDD
    markers: list[str] = field(default_factory=list)

    @property
    def pid(self):
        return f"Pid{self.tag}Zq7"

    @property
    def family(self):
        return f"Famil{self.tag}zq"

    @property
    def given(self):
        return f"Givn{self.tag}zq"

    @property
    def name(self):
        return f"{self.family}^{self.given}^Middl{self.tag}zq"

    def header_values(self) -> dict[str, str]:
        return {
            "PatientID": self.pid, "PatientName": self.name, "PatientBirthDate": self.birth,
            "OtherPatientIDs": f"Othid{self.tag}Zq1\\Othid{self.tag}Zq2",
            "OtherPatientNames": f"Othfm{self.tag}zq^Othgv{self.tag}zq",
            "PatientBirthName": f"Brthn{self.tag}zq", "PatientMotherBirthName": f"Mothr{self.tag}zq",
            "AccessionNumber": f"Accn{self.tag}Zq5", "InstitutionName": f"Instt{self.tag}zq Klinikum",
            # never learnt nor stored: they must not travel anywhere either
            "ReferringPhysicianName": f"Refph{self.tag}zq^Doc", "OperatorsName": f"Opera{self.tag}zq",
            "PatientAddress": f"Addrs{self.tag}zq Street 1", "PatientComments": f"Comnt{self.tag}zq",
            "StudyDescription": f"Stdsc{self.tag}zq", "StudyID": f"Stid{self.tag}zq",
            "PatientTelephoneNumbers": f"Phone{self.tag}zq",
        }

    def all_markers(self) -> list[str]:
        y, m, d = self.birth[:4], self.birth[4:6], self.birth[6:]
        vals = [v for k, v in self.header_values().items() if k != "PatientBirthDate"]
        parts = {p for v in vals for p in re.split(r"[\^\\ ]", v) if len(p) >= 5}
        parts -= {"Klinikum", "Street"}
        parts |= {f"Middl{self.tag}zq", f"Privt{self.tag}zq", f"Privb{self.tag}zq"}
        return sorted(parts | {self.birth, f"{y}-{m}-{d}", f"{d}.{m}.{y}"})


def _plant(ds, p: Person) -> None:
    for k, v in p.header_values().items():
        setattr(ds, k, v)
    block = ds.private_block(0x0011, "PLANTED MARKERS", create=True)
    block.add_new(0x01, "LO", f"Privt{p.tag}zq")
    block.add_new(0x02, "UT", f"private note of Privb{p.tag}zq")


def _rewrite(src: Path, dst: Path, p: Person, study: str, *, sop_class: str | None = None,
             modality: str | None = None, roi_prefix: str | None = None, series: str | None = None,
             new_for: str | None = None) -> None:
    ds = pydicom.dcmread(src)
    _plant(ds, p)
    ds.StudyInstanceUID = study
    if series:
        ds.SeriesInstanceUID = series
    ds.SeriesDescription = f"Serds{p.tag}zq"
    if sop_class:
        ds.SOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if modality:
        ds.Modality = modality
    if roi_prefix is not None and "StructureSetROISequence" in ds:
        ds.StructureSetROISequence[0].ROIName = f"GTV_{p.family}"  # an ROI named after the patient
        ds.StructureSetLabel = f"Sslab{p.tag}zq"
    if new_for:
        for fr in ds.get("ReferencedFrameOfReferenceSequence", []):
            fr.FrameOfReferenceUID = new_for
        for roi in ds.get("StructureSetROISequence", []):
            roi.ReferencedFrameOfReferenceUID = new_for
        ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0] \
            .RTReferencedSeriesSequence[0].SeriesInstanceUID = generate_uid()
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst, enforce_file_format=True)


def plant_drop(root: Path, real: Path | None = None, slices: int = 6, size: int = 32) -> tuple[Path, list[Person]]:
    """root/drop/… with the planted patients; returns (drop folder, people)."""
    ph = root / "phantom"
    generate_cohort(ph, 3, slices=slices, size=size, seed=3, fsync=False)
    drop = root / "drop"
    a, b, c, d, e, f = (Person("Aa", "19230417"), Person("Bb", "19310302"), Person("Cc", "19450912"),
                        Person("Dd", "19520623"), Person("Ee", "19670108"), Person("Ff", "19700521"))
    people = [a, b, c, d, e, f]
    # A: phantom CT + RTSTRUCT; folders: institution / "FAMILY_GIVEN_1923-04-17" / ID
    fa = drop / f"Instt{a.tag}zq_Klinikum" / f"{a.family.upper()}_{a.given.upper()}_1923-04-17" / a.pid
    # B: phantom CT + RTSTRUCT; folders: "given family 02.03.1931" / accession / other ID
    fb = drop / f"{b.given.lower()} {b.family.lower()} 02.03.1931" / f"Accn{b.tag}Zq5" / f"Othid{b.tag}Zq2"
    for person, folder, k in ((a, fa, 0), (b, fb, 1)):
        study = generate_uid()
        for src in sorted((ph / f"patient_{k:03d}" / "CT").glob("*.dcm")):
            _rewrite(src, folder / "CT" / f"{person.family}-{src.name}", person, study)
        _rewrite(ph / f"patient_{k:03d}" / "RTSTRUCT" / "rs.dcm", folder / "RS" / f"rs_{person.pid}.dcm",
                 person, study, roi_prefix="GTV")
        (folder / f"notes_{person.given}.txt").write_text("not dicom")  # skipped, path stored
    # C: MR only (phantom slices relabelled), folder "Family, Given (19450912)"
    fc = drop / f"{c.family}, {c.given} ({c.birth})"
    study, series = generate_uid(), generate_uid()
    for src in sorted((ph / "patient_002" / "CT").glob("*.dcm"))[:3]:
        _rewrite(src, fc / "MR" / f"mr_{c.pid}_{src.name}", c, study, sop_class=MR_CLASS, modality="MR",
                 series=series)
    # D: an RTSTRUCT whose CT is absent, folder "Othid…/23.06.1952"
    fd = drop / f"Othid{d.tag}Zq1" / "23.06.1952" / f"{d.given}^{d.family}"
    _rewrite(ph / "patient_002" / "RTSTRUCT" / "rs.dcm", fd / f"RS_{d.family}.dcm", d, generate_uid(),
             roi_prefix="GTV", new_for=generate_uid())
    # F: a dose file only, folder by accession and mother's birth name
    ff = drop / f"accn{f.tag.lower()}zq5" / f"Mothr{f.tag}zq"
    src = sorted((ph / "patient_002" / "CT").glob("*.dcm"))[0]
    _rewrite(src, ff / f"dose_{f.birth}.dcm", f, generate_uid(), sop_class=DOSE_CLASS, modality="RTDOSE")
    # E: a real CT series with its RTSTRUCT, folder "GIVEN.FAMILY"
    if real is not None:
        fe = drop / f"{e.given}.{e.family}" / e.pid
        study = generate_uid()
        for src in sorted((real / "image").iterdir()):
            _rewrite(src, fe / "CT" / f"{e.pid}_{src.name}", e, study)
        rs = next((real / "mask").iterdir())
        _rewrite(rs, fe / "RS" / f"{e.family}_rs.dcm", e, study, roi_prefix="GTV")
        (fe / f"{e.family} scan notes.txt").write_text("not dicom")
    else:
        people.remove(e)
    shutil.rmtree(ph)
    return drop, people


# ----------------------------------------------------------------------------- search


def _inner_blobs(path: Path, data: bytes) -> list[bytes]:
    """Compressed content inside a file: zip members (NPZ), zlib streams (PNG, PDF), HDF5
    datasets and attributes read through h5py (compressed chunks)."""
    blobs: list[bytes] = []
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            blobs += [z.read(n) for n in z.namelist()] + [n.encode() for n in z.namelist()]
    if data[:8] == b"\x89HDF\r\n\x1a\n":
        import h5py

        def visit(name, obj):
            blobs.append(name.encode("utf-8", "surrogateescape"))
            for k, v in obj.attrs.items():
                blobs.append(f"{k}={v!r}".encode("utf-8", "backslashreplace"))
            if isinstance(obj, h5py.Dataset):
                try:
                    v = obj[()]
                    blobs.append(v.tobytes() if hasattr(v, "tobytes") else repr(v).encode())
                except Exception:
                    pass

        with h5py.File(path, "r") as f:
            for k, v in f.attrs.items():
                blobs.append(f"{k}={v!r}".encode("utf-8", "backslashreplace"))
            f.visititems(visit)
    if data[:8] == b"\x89HDF\r\n\x1a\n" or len(data) > 20_000_000:
        return blobs
    # deflate/zlib streams (PNG IDAT/zTXt/iTXt, PDF FlateDecode, svgz)
    for m in re.finditer(rb"(?:\x78[\x01\x5e\x9c\xda])", data):
        try:
            d = zlib.decompressobj()
            blobs.append(d.decompress(data[m.start():], 50_000_000))
        except zlib.error:
            continue
    return blobs


def search_markers(paths: list[Path], texts: dict[str, str], markers: list[str]) -> list[str]:
    """Every (where, marker) hit in the files below `paths` and in the given texts."""
    # Markers are ASCII. bytes.lower() folds ASCII letters in every encoding alike, and
    # dropping the zero bytes turns UTF-16/32 text of ASCII into plain bytes (NPZ strings
    # are UTF-32), so two lower-cased views answer "any case, ASCII or UTF-16/32" with
    # plain substring searches. Most markers hold "zq": a view without it skips them.
    lowered = [(m, m.lower().encode("ascii")) for m in markers]
    rare = [x for x in lowered if b"zq" in x[1]]
    other = [x for x in lowered if b"zq" not in x[1]]
    hits = []

    def look(where: str, data: bytes) -> None:
        low = data.lower()
        for view in (low, low.replace(b"\0", b"")):
            for m, n in (rare if b"zq" in view else []) + other:
                if n in view:
                    hits.append(f"{where}: {m}")

    for name, text in texts.items():
        look(name, text.encode("utf-8", "surrogateescape"))
    for root in paths:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for p in files:
            look(f"{p} (name)", str(p.relative_to(root) if root.is_dir() else p.name).encode())
            data = p.read_bytes()
            look(str(p), data)
            for k, blob in enumerate(_inner_blobs(p, data)):
                look(f"{p} [inner {k}]", blob)
    return sorted(set(hits))
