"""Series vs patients (issue 11): counts and exports name their unit; a patient may have
several CT series (labels PAT-0001, PAT-0001-2)."""

from __future__ import annotations

import csv
import io
from types import SimpleNamespace

import numpy as np

from training.commands.encode import write_outputs
from training.latent.encode import Encoded, aggregate_patients
from training.store.units import series_of_patients, split_summary, unit_counts


def _info(label, patient, split, n=3):
    return SimpleNamespace(pseudonym=label, patient=patient, split=split, n_images=n)


INFOS = [_info("PAT-0001", "PAT-0001", "train"), _info("PAT-0001-2", "PAT-0001", "train"),
         _info("PAT-0002", "PAT-0002", "test"), _info("PAT-0003", "PAT-0003", "train")]


def test_counts_name_series_and_patients():
    c = unit_counts(INFOS)
    assert (c["n_series"], c["n_patients"]) == (4, 3)
    assert c["by_split"] == {"test": {"n_series": 1, "n_patients": 1},
                             "train": {"n_series": 3, "n_patients": 2}}
    assert split_summary(INFOS) == ("4 series of 3 patients; test 1 series of 1 patient, "
                                    "train 3 series of 2 patients")
    assert series_of_patients(1, 1) == "1 series of 1 patient"


def _read(path):
    text = path.read_text()
    assert not text.startswith("#")  # a plain header row first
    return list(csv.DictReader(io.StringIO(text)))


def test_encode_exports_one_row_per_series_and_per_patient(tmp_path):
    rng = np.random.default_rng(0)
    rows = np.array([(s, i) for s, n in enumerate((3, 2, 4)) for i in range(n)], dtype=np.int64)
    mu = rng.normal(size=(len(rows), 2)).astype(np.float32)
    logvar = rng.normal(scale=0.3, size=(len(rows), 2)).astype(np.float32)
    names = ["PAT-0001", "PAT-0001-2", "PAT-0002"]
    enc = Encoded(mu, logvar, rows, names, ["train", "train", "test"])
    pp = aggregate_patients(enc, "mixture")
    write_outputs(tmp_path, enc, pp, {"PAT-0001": "PAT-0001", "PAT-0001-2": "PAT-0001", "PAT-0002": "PAT-0002"})
    images = _read(tmp_path / "encoded_images.csv")
    assert [(r["series"], r["patient"]) for r in images[3:5]] == [("PAT-0001-2", "PAT-0001")] * 2
    series = _read(tmp_path / "encoded_series.csv")
    assert [(r["series"], r["patient"], r["n_images"]) for r in series] == [
        ("PAT-0001", "PAT-0001", "3"), ("PAT-0001-2", "PAT-0001", "2"), ("PAT-0002", "PAT-0002", "4")]
    patients = _read(tmp_path / "encoded_patients.csv")
    assert [(r["patient"], r["n_series"], r["n_images"]) for r in patients] == [
        ("PAT-0001", "2", "5"), ("PAT-0002", "1", "4")]
    # the patient's posterior: the equal-weight mixture of the 5 slices of both its series
    m, v = mu[:5].astype(np.float64), np.exp(logvar[:5].astype(np.float64))
    mix_mu, mix_var = m.mean(0), v.mean(0) + m.var(0)
    got = patients[0]
    np.testing.assert_allclose([float(got["mu_0"]), float(got["mu_1"])], mix_mu, rtol=1e-12)
    np.testing.assert_allclose([float(got["sigma_0"]), float(got["sigma_1"])], np.sqrt(mix_var), rtol=1e-12)
