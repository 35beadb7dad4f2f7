"""training.dicom.scan on hand-built drops: recognition by content, grouping, bad input."""

from __future__ import annotations

import pickle
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from tests.dicom_factory import ramp_volume, write_ct_series, write_ct_slice
from training.dicom import Cancelled, DicomError, ScanResult, load_ct_series, scan


def _reasons(result: ScanResult) -> dict[str, str]:
    return {Path(s.path).name: s.reason for s in result.skipped}


def _good_series(tmp_path: Path, nz: int = 4, **kw):
    return write_ct_series(tmp_path / "ct", ramp_volume(nz, 8, 10), **kw)


def test_recognised_by_content_not_extension(tmp_path):
    spec = _good_series(tmp_path, names=["a", "b.txt", "c.IMA", "d"])
    # a data set without preamble/meta (implicit VR), in the same series
    write_ct_slice(tmp_path / "ct" / "bare", ramp_volume(1, 8, 10)[0], ipp=(-10, -20, 40.0),
                   pixel_spacing=(0.8, 0.6), series_uid=spec.series_uid, preamble=False)
    (tmp_path / "ct" / "notes.dcm").write_text("not an image\n" * 20)
    (tmp_path / "ct" / "noise.bin").write_bytes(np.random.default_rng(0).bytes(600))
    (tmp_path / "ct" / "tiny").write_bytes(b"DI")
    result = scan(tmp_path)
    assert len(result.series) == 1
    assert len(result.series[0].slices) == 5
    reasons = _reasons(result)
    for name in ("notes.dcm", "noise.bin", "tiny"):
        assert "not a DICOM file" in reasons[name]
    assert len(result.skipped) == 3


def test_dicomdir_is_skipped_with_reason(tmp_path):
    _good_series(tmp_path)
    shutil.copy(get_testdata_file("DICOMDIR"), tmp_path / "DICOMDIR")
    result = scan([tmp_path])
    assert _reasons(result) == {"DICOMDIR": _reasons(result)["DICOMDIR"]}
    assert "DICOMDIR" in _reasons(result)["DICOMDIR"]
    assert len(result.series) == 1 and len(result.series[0]) == 4


def test_truncated_and_damaged_files(tmp_path):
    spec = _good_series(tmp_path, nz=5)
    data = spec.paths[1].read_bytes()
    spec.paths[1].write_bytes(data[: len(data) - 50])  # cut inside the pixel data
    spec.paths[2].write_bytes(data[:300])  # cut inside the header
    for name in ("MR_truncated.dcm", "rtplan_truncated.dcm", "no_meta.dcm"):
        shutil.copy(get_testdata_file(name), tmp_path / name)
    result = scan(tmp_path)
    reasons = _reasons(result)
    assert "truncated: pixel data holds" in reasons[spec.paths[1].name]
    assert "truncated" in reasons[spec.paths[2].name]
    for name in ("MR_truncated.dcm", "rtplan_truncated.dcm", "no_meta.dcm"):
        assert reasons[name]
    assert [Path(p).name for p in result.series[0].files] == [
        spec.paths[k].name for k in (0, 3, 4)
    ] or sorted(Path(p).name for p in result.series[0].files) == sorted(
        spec.paths[k].name for k in (0, 3, 4)
    )
    assert str(result.skipped[0]).startswith(result.skipped[0].path + ": ")


def test_no_pixel_data_is_skipped(tmp_path):
    spec = _good_series(tmp_path)
    write_ct_slice(tmp_path / "ct" / "empty.dcm", np.zeros((8, 10)), ipp=(-10, -20, 99.0),
                   pixel_spacing=(0.8, 0.6), series_uid=spec.series_uid, with_pixels=False)
    result = scan(tmp_path)
    assert _reasons(result) == {
        "empty.dcm": "no pixel data; left out of its CT series, which goes on with its other 4 file(s)"}
    assert len(result.series[0]) == 4


def test_secondary_capture_localizer_and_odd_orientation(tmp_path):
    spec = _good_series(tmp_path, nz=5)
    uid = spec.series_uid
    img = ramp_volume(1, 8, 10)[0]
    write_ct_slice(tmp_path / "ct" / "sc.dcm", img, series_uid=uid,
                   sop_class=SecondaryCaptureImageStorage, modality="OT")
    write_ct_slice(tmp_path / "ct" / "scout.dcm", img, series_uid=uid,
                   image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    # a coronal image without the LOCALIZER flag: caught by the orientation majority
    write_ct_slice(tmp_path / "ct" / "coronal.dcm", img, series_uid=uid,
                   iop=(1, 0, 0, 0, 0, -1), pixel_spacing=(0.8, 0.6))
    write_ct_slice(tmp_path / "ct" / "small.dcm", img[:4], series_uid=uid, ipp=(-10, -20, 31.0),
                   pixel_spacing=(0.8, 0.6))
    result = scan(tmp_path)
    reasons = _reasons(result)
    assert "secondary capture" in reasons["sc.dcm"]
    assert "localizer" in reasons["scout.dcm"]
    assert "orientation" in reasons["coronal.dcm"]
    assert "size 4×10 differs from 8×10" in reasons["small.dcm"]
    assert len(result.series) == 1 and len(result.series[0]) == 5


def test_enhanced_ct_refused(tmp_path):
    _good_series(tmp_path)
    write_ct_slice(tmp_path / "enh.dcm", np.zeros((8, 10)), series_uid=generate_uid(),
                   sop_class="1.2.840.10008.5.1.4.1.1.2.1")
    reasons = _reasons(scan(tmp_path))
    assert "Enhanced CT" in reasons["enh.dcm"] and "not supported" in reasons["enh.dcm"]


def test_several_series_and_patients_in_one_folder(tmp_path):
    folder = tmp_path / "mixed"
    a = write_ct_series(folder, ramp_volume(3, 8, 10), names=["x1", "x2", "x3"],
                        patient_id="P-A", patient_name="Alpha^Ann")
    b = write_ct_series(folder, ramp_volume(4, 8, 10), names=["y1", "y2", "y3", "y4"],
                        patient_id="P-B", patient_name="Beta^Bob", birth_date="19800202")
    c = write_ct_series(folder, ramp_volume(2, 8, 10), names=["z1", "z2"],
                        patient_id="P-B", patient_name="Beta^Bob")
    result = scan(folder)
    got = {r.series_uid: r for r in result.series}
    assert set(got) == {a.series_uid, b.series_uid, c.series_uid}
    assert len(got[a.series_uid]) == 3 and len(got[b.series_uid]) == 4
    assert got[a.series_uid].patient_id == "P-A"
    assert got[b.series_uid].patient_name == "Beta^Bob"
    assert got[b.series_uid].birth_date == "19800202"
    text = repr(result)
    assert "Alpha" not in text and "Beta" not in text and "P-A" not in text
    assert result.skipped == []


def test_copies_of_one_instance_are_skipped(tmp_path):
    spec = _good_series(tmp_path)
    shutil.copy(spec.paths[0], tmp_path / "copy_of_first")
    result = scan(tmp_path)
    assert len(result.series[0]) == 4
    (skipped,) = result.skipped  # whichever of the two came second
    other = ({"copy_of_first", spec.paths[0].name} - {Path(skipped.path).name}).pop()
    assert "same SOPInstanceUID" in skipped.reason and other in skipped.reason


def test_empty_folder_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    result = scan(tmp_path / "empty")
    assert result.series == [] and result.structs == [] and result.skipped == []
    result = scan([tmp_path / "nowhere"])
    assert "cannot read file" in result.skipped[0].reason


def test_progress_and_cancel(tmp_path):
    _good_series(tmp_path, nz=6)
    calls = []
    scan(tmp_path, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (6, 6) and len(calls) == 6
    calls.clear()  # overlapping paths: each file once
    result = scan([tmp_path, tmp_path / "ct", tmp_path / "ct" / "slice_000.dcm"],
                  progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (6, 6) and result.skipped == []
    stop = threading.Event()

    def progress(done, total):
        if done == 2:
            stop.set()

    with pytest.raises(Cancelled):
        scan(tmp_path, progress=progress, cancel=stop)


def _write_rtstruct(path: Path, for_uid: str, series_uid: str, study_uid: str) -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "RTSTRUCT"
    ds.PatientID = "PAT-1"
    ds.PatientName = "Doe^Jane"
    ds.StructureSetLabel = "RS"
    ser = Dataset()
    ser.SeriesInstanceUID = series_uid
    study = Dataset()
    study.ReferencedSOPInstanceUID = study_uid
    study.RTReferencedSeriesSequence = Sequence([ser])
    fr = Dataset()
    fr.FrameOfReferenceUID = for_uid
    fr.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([fr])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.save_as(path, enforce_file_format=True)


def test_rtstruct_reference(tmp_path):
    spec = _good_series(tmp_path)
    _write_rtstruct(tmp_path / "rs", "1.2.826.0.1.3680043.8.498.3", spec.series_uid,
                    "1.2.826.0.1.3680043.8.498.1")
    result = scan(tmp_path)
    (s,) = result.structs
    assert s.path.endswith("rs") and s.label == "RS"
    assert s.frame_of_reference_uid == result.series[0].frame_of_reference_uid
    assert s.referenced_series_uids == (spec.series_uid,)
    assert s.patient_id == "PAT-1" and "Doe" not in repr(s)


def test_references_pickle(tmp_path):
    _good_series(tmp_path)
    result = scan(tmp_path)
    back = pickle.loads(pickle.dumps(result))
    assert back.series == result.series
    assert back.series[0].identity == tuple(
        (p, Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in back.series[0].files
    )


def test_bad_geometry_tags_are_named(tmp_path):
    spec = _good_series(tmp_path)
    img = ramp_volume(1, 8, 10)[0]
    bad = write_ct_slice(tmp_path / "ct" / "badpos", img, series_uid=spec.series_uid,
                         pixel_spacing=(0.8, 0.6), ipp=(1.0, 2.0, 3.0))
    bad.write_bytes(bad.read_bytes().replace(b"2.000000", b"2.0x0000"))
    write_ct_slice(tmp_path / "ct" / "nospacing", img, series_uid=spec.series_uid,
                   extra={"PixelSpacing": None})
    write_ct_slice(tmp_path / "ct" / "badiop", img, series_uid=spec.series_uid,
                   pixel_spacing=(0.8, 0.6), iop=(1, 0, 0, 1, 0, 0))
    reasons = _reasons(scan(tmp_path))
    assert "ImagePositionPatient" in reasons["badpos"]
    assert "PixelSpacing" in reasons["nospacing"]
    assert "not two orthogonal unit vectors" in reasons["badiop"]


def test_an_implausibly_large_slice_is_skipped_with_its_size(tmp_path):
    img = ramp_volume(1, 8, 10)[0]
    write_ct_slice(tmp_path / "huge", img, transfer_syntax=ExplicitVRLittleEndian,
                   extra={"Rows": 40000, "Columns": 40000})
    reasons = _reasons(scan(tmp_path))
    assert "40000×40000" in reasons["huge"]


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom complains about the damage
def test_corrupted_bytes_never_stop_the_scan(tmp_path):
    spec = write_ct_series(tmp_path / "ct", ramp_volume(3, 32, 32))
    data = spec.paths[0].read_bytes()
    rng = np.random.default_rng(1)
    for n in range(25):
        bad = bytearray(data)
        for pos in rng.integers(128, len(data), size=6):
            bad[pos] = rng.integers(0, 256)
        (tmp_path / f"bad{n:02d}").write_bytes(bytes(bad))
    result = scan(tmp_path)
    names = {Path(f).name for r in result.series for f in r.files}
    names |= {Path(s.path).name for s in result.skipped}
    assert names == {p.name for p in spec.paths} | {f"bad{n:02d}" for n in range(25)}
    assert all(s.reason for s in result.skipped)
    # one by one (not shadowed by the intact original): loading fails only with DicomError
    loaded = 0
    for n in range(25):
        for ref in scan(tmp_path / f"bad{n:02d}").series:
            for kwargs in ({}, {"dtype": np.int16, "on_file": lambda p, data: None}):  # as the ingest loads
                try:
                    load_ct_series(ref, **kwargs)
                    loaded += 1
                except DicomError as exc:
                    assert exc.path and exc.reason
    assert loaded > 0


def _stretch(path: Path, tag_vr: bytes, length: int) -> None:
    """Give the (explicit VR, short form) element tag_vr a wrong, larger length, so that
    its value swallows the elements after it, as a damaged file does."""
    data = bytearray(path.read_bytes())
    at = data.index(tag_vr)
    data[at + 6 : at + 8] = length.to_bytes(2, "little")
    path.write_bytes(bytes(data))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("tag_vr", [b"\x08\x00\x16\x00UI", b"\x02\x00\x10\x00UI", b"\x20\x00\x37\x00DS"])
def test_damaged_length_never_quotes_the_elements_it_swallows(tmp_path, tag_vr):
    # SOPClassUID, TransferSyntaxUID and ImageOrientationPatient stretched over the
    # patient module (or, for IOP, the elements after it): the skip reason describes
    # the value and quotes none of the identifiers it swallowed.
    img = ramp_volume(1, 8, 10)[0]
    extra = {"InstitutionName": "Secret Hospital", "ReferringPhysicianName": "Secret^Doctor"}
    if tag_vr.startswith(b"\x20\x00\x37"):  # put identifiers after IOP
        extra.update(RequestingPhysician="Secret^Doctor", PatientComments="Secret 19451231")
    f = write_ct_slice(tmp_path / "bad", img, patient_name="Secret^Patientname",
                       patient_id="SECRETID7", birth_date="19451231", extra=extra)
    _stretch(f, tag_vr, 600)
    result = scan(tmp_path)
    assert not result.series and len(result.skipped) == 1
    reason = result.skipped[0].reason
    for token in ("secret", "patientname", "19451231", "doctor"):
        assert token not in reason.lower(), reason


@pytest.mark.parametrize("tag_vr", [b"\x08\x00\x16\x00UI", b"\x02\x00\x10\x00UI", b"\x08\x00\x60\x00CS"])
def test_damaged_file_logs_and_warns_no_identifiers(tmp_path, tag_vr, caplog):
    # pydicom's value validation logs and warns the whole (swallowed) value; the GUI
    # logs at INFO, so that would print names and birth dates.
    import logging
    import warnings

    img = ramp_volume(1, 8, 10)[0]
    f = write_ct_slice(tmp_path / "bad", img, patient_name="Secret^Patientname",
                       patient_id="SECRETID7", birth_date="19451231")
    _stretch(f, tag_vr, 600)
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = scan(tmp_path)
        for ref in result.series:
            try:
                load_ct_series(ref)
            except DicomError:
                pass
    text = caplog.text + "\n".join(str(w.message) for w in caught)
    text += " ".join(s.reason for s in result.skipped)
    for token in ("secret", "patientname", "19451231"):
        assert token not in text.lower(), text


def test_reference_repr_holds_no_identifier_or_free_text(tmp_path):
    spec = _good_series(tmp_path, series_description="Secret Surname thorax")
    _write_rtstruct(tmp_path / "rs.dcm", "1.2.3", spec.series_uid, "1.2.4")
    result = scan(tmp_path)
    assert result.structs[0].label == "RS"  # the repr must not show a label either
    object.__setattr__(result.structs[0], "label", "Secret Surname RS")
    text = repr(result.series) + repr(result.structs) + repr(result)
    for token in ("Secret", "Doe", "Jane", "PAT-1", "19700101"):
        assert token not in text, text


@pytest.mark.parametrize("keyword", ["RescaleSlope", "RescaleIntercept"])
def test_non_finite_rescale_is_named(tmp_path, keyword):
    # NaN HU would be stored as arbitrary int16 values without a word
    spec = _good_series(tmp_path)
    img = ramp_volume(1, 8, 10)[0]
    f = write_ct_slice(tmp_path / "ct" / "nan", img, series_uid=spec.series_uid,
                       pixel_spacing=(0.8, 0.6), ipp=(-10.0, -20.0, 40.0), slope=1.5,
                       intercept=-1000.0)
    old, new = (b"DS\x04\x001.5 ", b"DS\x04\x00NaN ") if keyword == "RescaleSlope" else (
        b"DS\x06\x00-1000 ", b"DS\x06\x00inf   ")
    data = f.read_bytes()
    assert data.count(old) == 1
    f.write_bytes(data.replace(old, new))
    result = scan(tmp_path)
    assert keyword in _reasons(result)["nan"]
    assert len(result.series) == 1 and len(result.series[0]) == 4


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_damaged_sop_instance_uid_is_not_kept(tmp_path):
    # A SOPInstanceUID whose length swallows the patient module would be stored in the
    # workspace (the geometry keeps each slice's UID): such a file is skipped instead.
    spec = _good_series(tmp_path)
    img = ramp_volume(1, 8, 10)[0]
    f = write_ct_slice(tmp_path / "ct" / "bad", img, series_uid=spec.series_uid,
                       pixel_spacing=(0.8, 0.6), ipp=(-10.0, -20.0, 40.0),
                       patient_name="Secret^Patientname", birth_date="19451231")
    data = f.read_bytes()  # stretched up to StudyInstanceUID: over the patient module
    start, end = data.index(b"\x08\x00\x18\x00UI"), data.index(b"\x20\x00\x0d\x00UI")
    _stretch(f, b"\x08\x00\x18\x00UI", end - start - 8)
    result = scan(tmp_path)
    assert "SOPInstanceUID" in _reasons(result)["bad"]
    assert len(result.series) == 1 and len(result.series[0]) == 4
    uids = [s.sop_instance_uid for r in result.series for s in r.slices]
    assert not any("Secret" in u or "19451231" in u for u in uids)
