"""Every transfer syntax of the real test slice decodes to the HU of its uncompressed
original (exactly where lossless, within the measured loss where lossy), and where a
decoder is missing the reason names the package to install (issue 11, Codecs)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pydicom
import pytest
from pydicom.pixels import get_decoder
from pydicom.uid import UID

import training.dicom.load as load_mod
from training.dicom import DicomError, load_ct_series, scan

TS_DIR = "dicom/transfer-syntaxes/testImages"
ORIGINAL = "CTImage.dcm"

# (transfer syntax UID, largest |HU − original| allowed, lossy?). Lossy bounds are the
# measured losses rounded up: 12-bit JPEG with RescaleSlope 2.0 (35.6 HU), 8-bit JPEG
# baseline with RescaleSlope 32.1 (64.2 HU), JPEG 2000 (5 HU), JPEG-LS near-lossless (1 HU).
SYNTAXES = [
    ("1.2.840.10008.1.2", 0, False),
    ("1.2.840.10008.1.2.1", 0, False),
    ("1.2.840.10008.1.2.2", 0, False),
    ("1.2.840.10008.1.2.1.99", 0, False),
    ("1.2.840.10008.1.2.5", 0, False),
    ("1.2.840.10008.1.2.4.57", 0, False),
    ("1.2.840.10008.1.2.4.70", 0, False),
    ("1.2.840.10008.1.2.4.80", 0, False),
    ("1.2.840.10008.1.2.4.81", 1, True),
    ("1.2.840.10008.1.2.4.90", 0, False),
    ("1.2.840.10008.1.2.4.91", 5, True),
    ("1.2.840.10008.1.2.4.50", 65, True),
    ("1.2.840.10008.1.2.4.51", 36, True),
    ("1.2.840.10008.1.2.4.53", 36, True),  # GDCM only
    ("1.2.840.10008.1.2.4.55", 36, True),  # GDCM only
]
GDCM_ONLY = {"1.2.840.10008.1.2.4.53", "1.2.840.10008.1.2.4.55"}


def _file(folder, ts: str):
    (path,) = [p for p in folder.iterdir() if p.name.startswith(ORIGINAL + "_") and p.name.endswith(f"_{ts}.dcm")]
    return path


def _hu(path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


@pytest.mark.parametrize("ts, tol, lossy", SYNTAXES, ids=[s[0].rsplit(".", 2)[-2] + "." + s[0].rsplit(".", 1)[-1] for s in SYNTAXES])
def test_each_transfer_syntax_decodes_to_the_original_hu(test_data, ts, tol, lossy):
    folder = test_data(TS_DIR)
    path = _file(folder, ts)
    if ts in GDCM_ONLY and importlib.util.find_spec("gdcm") is None:
        pytest.skip("python-gdcm is not installed: pip install python-gdcm (in the codecs extra)")
    (ref,) = scan(path).series
    assert ref.slices[0].lossy == lossy
    vol = load_ct_series(ref)
    assert vol.hu.shape == (1, 512, 512) and vol.skipped == []
    original = _hu(folder / ORIGINAL)
    diff = np.abs(vol.hu[0].astype(np.float64) - original)
    assert diff.max() <= tol + 1e-3
    if ts in GDCM_ONLY:
        # the same 12-bit JPEG data as process 2/4, which pylibjpeg decodes independently
        # (lossy JPEG decoders may round the inverse DCT differently: one stored step)
        other = _hu(_file(folder, "1.2.840.10008.1.2.4.51"))
        step = float(pydicom.dcmread(path, stop_before_pixels=True).RescaleSlope)
        assert np.abs(vol.hu[0] - other).max() <= step + 1e-3
        assert np.mean(np.isclose(vol.hu[0], other, atol=1e-2)) > 0.9
        assert diff.mean() < 5
    else:
        np.testing.assert_allclose(vol.hu[0], _hu(path), rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("ts", [t for t, _, _ in SYNTAXES if UID(t).is_encapsulated])
def test_missing_decoder_names_the_package(test_data, ts, monkeypatch):
    folder = test_data(TS_DIR)
    path = _file(folder, ts)
    (ref,) = scan(path).series
    monkeypatch.setattr(load_mod, "_gdcm_available", lambda: False)
    try:
        decoder = get_decoder(UID(ts))
    except NotImplementedError:
        decoder = None
    if decoder is not None:
        monkeypatch.setattr(decoder, "_available", {})
        monkeypatch.setattr(decoder, "_decoder", None)
    with pytest.raises(DicomError) as err:
        load_ct_series(ref)
    assert err.value.path == str(path)
    assert "pip install" in err.value.reason
    hint = load_mod.plugin_hint(ts)
    assert hint in err.value.reason
    package = {"1.2.840.10008.1.2.5": "pylibjpeg-rle", "1.2.840.10008.1.2.4.80": "pyjpegls",
               "1.2.840.10008.1.2.4.81": "pyjpegls", "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg",
               "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg"}
    assert package.get(ts, "python-gdcm" if ts in GDCM_ONLY else "pylibjpeg-libjpeg") in hint


def test_lossless_copy_of_a_slice_is_kept_over_a_lossy_one(test_data, tmp_path):
    """The uncompressed original and its JPEG baseline copy (a new SOPInstanceUID, one
    position) in one series: the lossless one is used although the lossy path sorts
    first; the copy is listed with the reason."""
    folder = test_data(TS_DIR)
    lossy = _file(folder, "1.2.840.10008.1.2.4.50")
    (tmp_path / "a_lossy.dcm").write_bytes(lossy.read_bytes())
    (tmp_path / "b_original.dcm").write_bytes((folder / ORIGINAL).read_bytes())
    result = scan(tmp_path)
    (ref,) = result.series
    assert result.skipped == [] and len(ref) == 2
    vol = load_ct_series(ref)
    np.testing.assert_array_equal(vol.hu[0], _hu(folder / ORIGINAL))
    (sk,) = vol.skipped
    assert sk.path.endswith("a_lossy.dcm") and str(tmp_path / "b_original.dcm") in sk.reason
    assert "lossy compressed" in sk.reason and "different pixels" in sk.reason
