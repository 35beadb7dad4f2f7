"""Reconstruction metrics (training.vae.metrics) against skimage and hand computation,
and their place in the training history."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from training.vae import metrics

torch.set_num_threads(1)

LO, HI = -1000.0, 1000.0  # window: x = (HU + 1000) / 2000


def hu(v):
    return (np.asarray(v, np.float64) - LO) / (HI - LO)


def phantom_slice(size=48):
    """Air around an ellipse body of 0 HU with a lung (−800 HU) inside and a couch line
    (+100 HU) below it, not touching the body."""
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size), -1000.0)
    body = ((yy - 20) / 14.0) ** 2 + ((xx - 24) / 18.0) ** 2 <= 1
    lung = ((yy - 20) / 5.0) ** 2 + ((xx - 18) / 4.0) ** 2 <= 1
    img[body] = 0.0
    img[lung] = -800.0
    img[42:44, 4:44] = 100.0
    return hu(img).astype(np.float32), body


def test_body_mask_fills_the_lung_and_drops_the_couch():
    img, body = phantom_slice()
    mask = metrics.body_mask(img, LO, HI)
    assert np.array_equal(mask, body)


def test_body_mask_3d_keeps_the_largest_component():
    img, body = phantom_slice()
    vol = np.stack([img] * 8)
    vol[:, :3, :3] = hu(200.0)  # a small bright column, separate from the body
    mask = metrics.body_mask(vol, LO, HI)
    assert np.array_equal(mask, np.stack([body] * 8))


def test_mae_in_hu_by_hand():
    img, body = phantom_slice()
    recon = img.copy()
    recon[body] += 50.0 / (HI - LO)    # +50 HU inside the body
    recon[~body] += 300.0 / (HI - LO)  # +300 HU outside (air, couch): not counted
    s = metrics.MetricSums(LO, HI)
    s.add(img[None], recon[None])
    assert s.result()["mae_hu"] == pytest.approx(50.0, abs=1e-3)
    # two images: the mean of the per-image MAEs
    recon2 = img.copy()
    recon2[body] -= 10.0 / (HI - LO)
    s = metrics.MetricSums(LO, HI)
    s.add(np.stack([img, img]), np.stack([recon, recon2]))
    assert s.result()["mae_hu"] == pytest.approx(30.0, abs=1e-3)


@pytest.mark.parametrize("shape", [(40, 40), (9, 23, 31), (12, 12, 12)])
def test_ssim_and_psnr_match_skimage(shape):
    rng = np.random.default_rng(len(shape))
    a = np.clip(rng.random(shape) * 0.3 + np.linspace(0, 0.7, shape[-1]), 0, 1)
    b = np.clip(a + rng.normal(0, 0.08, shape), 0, 1)
    ours_ssim = metrics.ssim(torch.tensor(a[None]), torch.tensor(b[None]))[0].item()
    ours_psnr = metrics.psnr(torch.tensor(a[None]), torch.tensor(b[None]))[0].item()
    assert ours_ssim == pytest.approx(structural_similarity(a, b, data_range=1.0), abs=1e-9)
    assert ours_psnr == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-9)


def test_sums_average_per_image_figures():
    rng = np.random.default_rng(3)
    a = rng.random((3, 20, 20)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    s = metrics.MetricSums(LO, HI)
    s.add(a[:2], b[:2])
    s.add(a[2:], b[2:])
    r = s.result()
    assert r["n_images"] == 3
    want = np.mean([structural_similarity(a[i].astype(np.float64), b[i].astype(np.float64), data_range=1.0)
                    for i in range(3)])
    assert r["ssim"] == pytest.approx(want, abs=1e-6)


def test_dice_per_roi_pooled_by_hand():
    lab = np.zeros((2, 10, 10), np.uint8)
    lab[0, 2:6, 2:6] = 1   # 16 px of ROI "A"
    lab[1, 0:2, 0:5] = 2   # 10 px of ROI "B"
    pred = np.zeros_like(lab)
    pred[0, 2:6, 2:4] = 1  # 8 px, all inside A
    pred[1, 0:2, 0:5] = 2  # exact
    pred[1, 9, 9] = 1      # 1 stray px of A on the second image
    img = np.full((2, 10, 10), 0.5, np.float32)
    s = metrics.MetricSums(LO, HI, roi_names=("A", "B", "C"))
    s.add(img, img, lab, pred)
    d = s.result()["dice"]
    assert d["A"] == pytest.approx(2 * 8 / (16 + 9))
    assert d["B"] == pytest.approx(1.0)
    assert d["C"] is None  # absent from labels and prediction


def test_baseline_is_the_mean_training_image():
    class Src:
        def __init__(self, images, labels):
            self.images, self.labels = images, labels

        def read_images(self, rows):
            return self.images[rows[:, 1]]

        def read_labels(self, rows):
            return self.labels[rows[:, 1]]

    img, body = phantom_slice(24)
    images = np.stack([img, img * 0.5, img * 0.8]).astype(np.float32)
    labels = np.stack([(img > 0.45).astype(np.uint8)] * 3)
    src = Src(images, labels)
    rows = np.array([[0, 0], [0, 1], [0, 2]])
    mean, mode = metrics.mean_image(src, rows, n_classes=2, batch_size=2)
    assert np.allclose(mean, images.mean(0), atol=1e-6)
    assert np.array_equal(mode, labels[0])
    r = metrics.evaluate_baseline(src, rows, mean, mode, hu_min=LO, hu_max=HI, roi_names=("R",))
    assert r["n_images"] == 3 and r["dice"]["R"] == pytest.approx(1.0)


def test_trainer_stores_metrics_in_history(tmp_path):
    from tests.test_trainer import MC, toy_arrays
    from training.config import TrainConfig
    from training.store.workspace import write_arrays_workspace
    from training.vae.trainer import Trainer

    images, labels = toy_arrays()
    ws = write_arrays_workspace(tmp_path / "toy.h5", images, labels, roi_names=("A", "B"), test_fraction=0.34)
    tc = TrainConfig(epochs=2, batch_size=4, threads=1, checkpoint_every=2, recon_every=2,
                     n_recon_examples=2, device="cpu", metrics_images=3)
    summary = Trainer(ws, MC, tc, out_dir=tmp_path / "run").run()
    assert summary.status == "finished", summary.message
    doc = json.loads((tmp_path / "run" / "history.json").read_text())
    for entry in doc["history"]:
        m = entry["metrics"]
        assert set(m) == {"train", "test"}
        for split in m.values():
            assert split["n_images"] == 3
            assert 0 < split["ssim"] <= 1 and split["psnr_db"] > 0 and split["mae_hu"] >= 0
            assert set(split["dice"]) == {"A", "B"}
    off = TrainConfig(epochs=1, batch_size=4, threads=1, device="cpu", metrics_images=0)
    assert "metrics" not in Trainer(ws, MC, off).run().history[0]


def test_evaluate_command_prints_model_and_baseline(tmp_path, capsys):
    from tests.test_trainer import MC, toy_arrays
    from training.cli import main
    from training.config import TrainConfig
    from training.store.workspace import write_arrays_workspace
    from training.vae.trainer import Trainer

    images, labels = toy_arrays()
    ws = write_arrays_workspace(tmp_path / "toy.h5", images, labels, roi_names=("A", "B"), test_fraction=0.34)
    ws_path = ws
    tc = TrainConfig(epochs=1, batch_size=4, threads=1, device="cpu", metrics_images=0)
    Trainer(ws, MC, tc, out_dir=tmp_path / "run").run()
    assert main(["evaluate", str(tmp_path / "run" / "last.pt"), str(ws_path)]) == 0
    out = capsys.readouterr().out
    for text in ("MAE in body (HU)", "PSNR (dB)", "SSIM", "Dice A", "Dice B", "baseline", "test (", "train ("):
        assert text in out
    assert main(["evaluate", str(tmp_path / "run" / "last.pt"), str(ws_path), "--json", "--split", "test"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["test"]) == {"model", "baseline"} and "train" not in doc
    assert doc["test"]["baseline"]["n_images"] == doc["test"]["model"]["n_images"] > 0


def test_train_preset_thesis(tmp_path, capsys):
    from tests.test_trainer import toy_arrays
    from training.cli import main
    from training.store.workspace import write_arrays_workspace
    from training.vae.checkpoint import load_checkpoint

    images, labels = toy_arrays(n_patients=3, n_images=2)
    ws = write_arrays_workspace(tmp_path / "toy.h5", images, labels, roi_names=("A", "B"), test_fraction=0.34)
    assert main(["train", "--workspace", str(ws), "--out", str(tmp_path / "r0"), "--preset", "thesis",
                 "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "input size 128 (preset thesis)" in err and "(16, 16)" in err
    assert main(["train", "--workspace", str(ws), "--out", str(tmp_path / "r1"), "--preset", "thesis",
                 "--input-size", "16", "--n-blocks", "2", "--epochs", "1", "--no-progress",
                 "--threads", "1", "--metrics-images", "2"]) == 0
    ck = load_checkpoint(tmp_path / "r1" / "last.pt")
    mc, tc = ck.model_config, ck.train_config
    assert (mc.filters, mc.latent_dim, mc.dropout, mc.fc_units, mc.convs_per_block) == (24, 12, 0.3, 256, 2)
    assert (mc.n_blocks, mc.input_size) == (2, 16)  # flags override the preset
    assert (tc.prior_sigma2, tc.lr, tc.batch_size) == (1.0, 1e-3, 32)
    err = capsys.readouterr().err
    assert "test (" in err and "SSIM" in err  # the epoch's metrics are printed


def test_evaluate_workspace_3d(tmp_path):
    from training.config import ModelConfig
    from training.store.workspace import Workspace, write_arrays_workspace
    from training.vae.metrics import evaluate_workspace
    from training.vae.model import VAE

    rng = np.random.default_rng(0)
    vols = {f"P{i}": rng.random((1, 16, 16, 16)).astype(np.float32) for i in range(4)}
    path = write_arrays_workspace(tmp_path / "w3.h5", vols, test_fraction=0.5)
    torch.manual_seed(0)
    model = VAE(ModelConfig(spatial_dims=3, input_size=16, n_blocks=2, filters=2, fc_units=8, latent_dim=2))
    with Workspace.open(path) as ws:
        res = evaluate_workspace(model, ws)
    for split in ("test", "train"):
        assert res[split]["model"]["n_images"] == 2 and 0 < res[split]["model"]["psnr_db"]
        assert -1 <= res[split]["baseline"]["ssim"] <= 1
