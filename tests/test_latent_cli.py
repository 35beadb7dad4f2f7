"""The latent-analysis subcommands end to end on a tiny untrained model (plumbing)."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
import torch

from training.vae.checkpoint import save_checkpoint
from training.cli import main
from training.config import ModelConfig, PreprocessConfig, TrainConfig
from training.vae.model import VAE
from training.store.workspace import write_arrays_workspace

torch.set_num_threads(1)
SIZE = 16


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("latent_cli")
    rng = np.random.default_rng(0)
    imgs = {f"PAT-{i:04d}": rng.random((4, SIZE, SIZE)).astype(np.float32) for i in range(1, 6)}
    labs = {k: (v > 0.6).astype(np.uint8) for k, v in imgs.items()}
    pre = PreprocessConfig(crop=SIZE, rois=("GTV",), hu_min=-1000.0, hu_max=1000.0, window_name="custom")
    ws = write_arrays_workspace(tmp / "ws.h5", imgs, labs, preprocess=pre, roi_names=("GTV",), test_fraction=0.0)
    torch.manual_seed(0)
    mc = ModelConfig(input_size=SIZE, n_blocks=2, filters=4, fc_units=16, latent_dim=3, n_classes=2)
    ck = save_checkpoint(
        tmp / "m.pt", model_config=mc, train_config=TrainConfig(prior_sigma2=2.0), preprocess_config=pre,
        model_state=VAE(mc).state_dict(), optimizer_state=None, epoch=0, history=[], data_hash="x", roi_names=("GTV",),
    )
    return tmp, str(ck), str(ws)


def test_encode_writes_csv_and_npz(files):
    tmp, ck, ws = files
    assert main(["encode", ck, ws, "--out", str(tmp / "enc"), "--threads", "1"]) == 0
    z = np.load(tmp / "enc" / "encoded.npz")
    assert z["mu"].shape == (20, 3) and z["patient_mu"].shape == (5, 3) and str(z["aggregate"]) == "mixture"
    lines = (tmp / "enc" / "encoded_images.csv").read_text().splitlines()
    assert lines[0].startswith("series,patient,image,split,mu_0") and len(lines) == 21
    assert (tmp / "enc" / "encoded_patients.csv").read_text().startswith("patient,n_series,n_images,mu_0")
    side = json.loads((tmp / "enc" / "encoded_patients.json").read_text())
    assert side["aggregate"] == "mixture" and "all the patient's series" in side["posterior"]
    assert json.loads((tmp / "enc" / "encoded_series.json").read_text())["aggregate"] == "mixture"
    from training.latent.encode import load_encoded

    enc, pp = load_encoded(tmp / "enc" / "encoded.npz")
    np.testing.assert_array_equal(enc.mu, z["mu"])
    assert enc.names == [f"PAT-{i:04d}" for i in range(1, 6)] and pp.names == enc.names and pp.method == "mixture"
    assert enc.labels[5] == "PAT-0002:1"


def test_similarity_csv_states_direction(files, capsys):
    tmp, ck, ws = files
    assert main(["similarity", ck, ws, "--out", str(tmp / "kl.csv"), "--nearest", "2"]) == 0
    text = (tmp / "kl.csv").read_text().splitlines()
    assert "KL(q_i || q_j)" in text[0] and not text[0].startswith("#") and len(text) == 6
    assert "PAT-0001:" in capsys.readouterr().out
    assert main(["similarity", ck, ws, "--out", str(tmp / "skl.csv"), "--symmetric", "--level", "image"]) == 0
    m = np.loadtxt(tmp / "skl.csv", delimiter=",", skiprows=1, usecols=range(2, 22))  # 0: image, 1: patient
    np.testing.assert_allclose(m, m.T)


def test_identify_prints_and_writes(files, capsys):
    tmp, ck, ws = files
    assert main(["identify", ck, ws, "--slice-a", "0", "--slice-b", "2", "--out", str(tmp / "id")]) == 0
    out = capsys.readouterr().out
    assert "of 5 patients" in out and "KL(q_b,i || q_a,j)" in out
    s = json.loads((tmp / "id" / "identify.json").read_text())
    assert s["n_patients"] == s["n_series"] == s["n"] == 5 and s["unit"] == "patient"
    assert 0 <= s["n_identified"] <= 5
    assert (tmp / "id" / "identify_kl.csv").read_text().startswith('"series \\ KL(q_b,i || q_a,j)')


def test_manifold_interpolate_sample(files):
    import imageio.v3 as iio

    tmp, ck, ws = files
    assert main(["manifold", ck, "--n", "3", "--dims", "0", "2", "--out", str(tmp / "mf.png")]) == 0
    assert iio.imread(tmp / "mf.png").shape == (3 * SIZE + 2, 3 * SIZE + 2)
    codes = np.load(tmp / "mf_codes.npy")
    assert codes.shape == (3, 3, 3) and codes[0, 2, 0] == pytest.approx(np.sqrt(2.0) * 0.9674216, rel=1e-5)
    assert np.load(tmp / "mf.npy").shape == (3, 3, SIZE, SIZE)
    assert main(["manifold", ck, "--workspace", ws, "--base-patient", "PAT-0002", "--labels", "--n", "2", "--out", str(tmp / "mf2.png")]) == 0
    assert main(["manifold", ck, "--base-patient", "PAT-0002", "--out", str(tmp / "x.png")]) == 1
    assert main(["interpolate", ck, "--workspace", ws, "--from", "PAT-0001", "--to", "PAT-0003", "--steps", "4",
                 "--method", "spherical", "--out", str(tmp / "film.png")]) == 0
    assert iio.imread(tmp / "film.png").shape == (SIZE, 4 * SIZE + 3)
    assert main(["interpolate", ck, "--prior-seed", "1", "--out", str(tmp / "film2.png")]) == 0
    assert main(["sample", ck, "--workspace", ws, "--source", "aggregate", "--split", "all", "--n", "5",
                 "--density-dims", "0", "1", "--density-n", "21", "--out", str(tmp / "s.png")]) == 0
    assert np.load(tmp / "s.npy").shape == (5, SIZE, SIZE)
    d = np.load(tmp / "s_density.npz")
    assert d["density"].shape == (21, 21) and d["prior"].shape == (21, 21)


def test_generate_exports_dicom(files):
    tmp, ck, ws = files
    assert main(["generate", ck, "--workspace", ws, "--n", "2", "--out", str(tmp / "gen")]) == 0
    cts = sorted((tmp / "gen" / "dicom" / "generated_000").glob("CT_*.dcm"))
    assert len(cts) == 1
    ds = pydicom.dcmread(cts[0])
    assert str(ds.PatientName).startswith("CTVAE-GEN-") and ds.Rows == SIZE
    ct = np.load(tmp / "gen" / "generated_ct.npy")[0]
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.abs(hu - (-1000 + 2000 * ct)).max() <= 0.5 + 1e-3
    assert main(["generate", ck, "--n", "1", "--formats", "png,tiff", "--out", str(tmp / "g2")]) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_asking_for_a_gpu_without_one_is_one_clear_error(files, capsys):
    tmp, ck, ws = files
    assert main(["encode", ck, ws, "--out", str(tmp / "enc"), "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "no CUDA GPU is available" in err and "Traceback" not in err
