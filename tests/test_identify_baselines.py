"""Baselines beside the KL identification (issue 15) and patient- vs series-level
counting (issue 11): every method's "n of N nearest to self", top-3 and mean rank."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.latent import similarity

torch.set_num_threads(1)


def test_score_by_hand():
    d = np.array([[1.0, 2.0, 3.0, 4.0],    # own nearest: rank 0
                  [0.5, 1.0, 0.7, 2.0],    # two others closer: rank 2
                  [1.0, 1.0, 1.0, 0.0],    # tie with own counts against; 3 closer/equal: rank 3
                  [9.0, 1.0, 5.0, 3.0]])   # one other closer: rank 1
    sc = similarity.score("x", d)
    assert sc.rank_of_self.tolist() == [0, 2, 3, 1]
    assert (sc.n_identified, sc.n_top3) == (1, 3)
    assert sc.mean_rank == pytest.approx((1 + 3 + 4 + 2) / 4)


def test_patient_level_does_not_count_another_series_of_the_patient():
    # entries 0 and 1 are two series of patient P; each query is nearest the other's reference
    d = np.array([[0.5, 0.1, 0.9],
                  [0.2, 0.6, 0.9],
                  [0.9, 0.9, 0.1]])
    patients = ["P", "P", "Q"]
    series = similarity.score("x", d)
    patient = similarity.score("x", d, groups=patients)
    assert series.n_identified == 1 and patient.n_identified == 3
    # the same rule in the KL identification itself
    mu = np.array([[0.0], [1.0], [5.0]])
    lv = np.zeros((3, 1))
    mu_b = np.array([[1.1], [0.1], [5.0]])  # P's two series swapped
    plain = similarity.identify(mu, lv, mu_b, lv, names=["P", "P-2", "Q"])
    grouped = similarity.identify(mu, lv, mu_b, lv, names=["P", "P-2", "Q"], groups=patients)
    assert plain.n_identified == 1 and len(plain.confusions) == 2
    assert grouped.n_identified == 3 and grouped.confusions == []


def test_compare_computes_every_method_independently():
    rng = np.random.default_rng(0)
    n, j = 6, 3
    mu_a = rng.normal(size=(n, j))
    lv_a = rng.normal(scale=0.3, size=(n, j))
    mu_b = mu_a + rng.normal(scale=0.05, size=(n, j))
    lv_b = lv_a + rng.normal(scale=0.05, size=(n, j))
    img_a = rng.random((n, 8, 8))
    img_b = np.roll(img_a, 1, axis=0)  # pixels point at the wrong patient every time
    comp = similarity.compare(mu_a, lv_a, mu_b, lv_b, img_a, img_b, img_a, img_a, level="series")
    assert list(comp.scores) == list(similarity.METHODS)
    # independent computations of each distance
    def kl(m1, l1, m2, l2):
        return 0.5 * np.sum(l2 - l1 + (np.exp(l1) + (m1 - m2) ** 2) / np.exp(l2) - 1)
    kd = np.array([[kl(mu_b[i], lv_b[i], mu_a[k], lv_a[k]) for k in range(n)] for i in range(n)])
    ks = 0.5 * (kd + np.array([[kl(mu_a[k], lv_a[k], mu_b[i], lv_b[i]) for k in range(n)] for i in range(n)]))
    eu = np.linalg.norm(mu_b[:, None] - mu_a[None], axis=2)
    px = np.linalg.norm((img_b[:, None] - img_a[None]).reshape(n, n, -1), axis=2)
    for m, want in (("kl_directed", kd), ("kl_symmetric", ks), ("euclidean_mu", eu), ("pixel_l2", px)):
        assert np.allclose(comp.scores[m].distance, want, atol=1e-6), m  # sqrt of a round-off of 1e-14
    assert comp.scores["kl_directed"].n_identified == n
    assert comp.scores["pixel_l2"].n_identified == 0
    assert comp.scores["recon_l2"].n_identified == n  # identical reconstructions: distance 0 to self
    text = comp.table()
    for m in similarity.METHODS:
        assert m in text
    assert f"{n} of {n}" in text and f"0 of {n}" in text


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from training.config import ModelConfig, PreprocessConfig, TrainConfig
    from training.store.workspace import write_arrays_workspace
    from training.vae.checkpoint import save_checkpoint
    from training.vae.model import VAE

    tmp = tmp_path_factory.mktemp("idb")
    rng = np.random.default_rng(0)
    imgs = {f"PAT-{i:04d}": rng.random((4, 16, 16)).astype(np.float32) for i in range(1, 6)}
    pre = PreprocessConfig(crop=16, hu_min=-1000.0, hu_max=1000.0, window_name="custom")
    ws = write_arrays_workspace(tmp / "ws.h5", imgs, None, preprocess=pre, test_fraction=0.0)
    torch.manual_seed(0)
    mc = ModelConfig(input_size=16, n_blocks=2, filters=4, fc_units=16, latent_dim=3)
    ck = save_checkpoint(tmp / "m.pt", model_config=mc, train_config=TrainConfig(), preprocess_config=pre,
                         model_state=VAE(mc).state_dict(), optimizer_state=None, epoch=0, history=[],
                         data_hash="x", roi_names=())
    return tmp, str(ck), str(ws)


def test_identify_command_prints_every_method(files, capsys):
    from training.cli import main

    tmp, ck, ws = files
    assert main(["identify", ck, ws, "--slice-a", "0", "--slice-b", "2", "--out", str(tmp / "out")]) == 0
    out = capsys.readouterr().out
    assert "level: patient" in out
    for m in similarity.METHODS:
        assert m in out
    doc = json.loads((tmp / "out" / "identify_methods.json").read_text())
    assert doc["level"] == "patient" and doc["n"] == 5
    # random images, a different slice each: pixels carry no identity, a query is its own
    # nearest only by chance; the counts are well-formed
    for m in similarity.METHODS:
        r = doc["methods"][m]
        assert 0 <= r["n_identified"] <= r["n_top3"] <= 5 and 1 <= r["mean_rank"] <= 5


def test_two_series_of_one_patient_patient_vs_series_level(tmp_path):
    from training.config import ModelConfig, PreprocessConfig
    from training.explore.similarity import compare_slices, patient_groups, patient_similarity
    from training.store.workspace import Workspace, write_arrays_workspace
    from training.vae.model import VAE

    rng = np.random.default_rng(1)
    imgs = {}
    for k in range(1, 5):
        base = rng.random((16, 16)).astype(np.float32)
        imgs[f"PAT-{k:04d}"] = np.stack([base, base, np.clip(base + 0.01 * rng.random((16, 16)), 0, 1)]).astype(np.float32)
    imgs["PAT-0001-2"] = imgs["PAT-0001"].copy()  # a second, identical CT series of patient 1
    pre = PreprocessConfig(crop=16, hu_min=-1000.0, hu_max=1000.0, window_name="custom")
    path = write_arrays_workspace(tmp_path / "ws.h5", imgs, None, preprocess=pre, test_fraction=0.0,
                                  patients={"PAT-0001-2": "PAT-0001"})
    torch.manual_seed(0)
    model = VAE(ModelConfig(input_size=16, n_blocks=2, filters=4, fc_units=16, latent_dim=3)).eval()
    with Workspace.open(path) as ws:
        by_patient = compare_slices(model, ws, 0, 2, level="patient")
        by_series = compare_slices(model, ws, 0, 2, level="series")
        assert patient_groups(ws, by_patient.names) == {"PAT-0001": ["PAT-0001", "PAT-0001-2"]}
        sim = patient_similarity(model, ws)
    assert sim.patients[sim.names.index("PAT-0001-2")] == "PAT-0001"
    assert by_patient.scores["pixel_l2"].n_identified == 5
    # series level: the identical twin series ties with the own one, and a tie counts against
    assert by_series.scores["pixel_l2"].n_identified == 3
    assert by_series.scores["kl_directed"].n_identified <= 3
    assert "level: patient" in by_patient.table()


def test_similarity_table_marks_rows_of_one_patient(qtbot):
    from explorer.widgets.kl_table import KLTableView

    view = KLTableView()
    qtbot.addWidget(view)
    view.set_matrix(np.ones((3, 3)) - np.eye(3), ["PAT-0001", "PAT-0001-2", "PAT-0002"], "def")
    m = view.kl_model
    view.kl_model.set_patients(["PAT-0001", "PAT-0001", "PAT-0002"])
    from explorer.qt import Qt

    heads = [m.headerData(i, Qt.Orientation.Vertical) for i in range(3)]
    assert heads == ["PAT-0001 ⟨PAT-0001⟩", "PAT-0001-2 ⟨PAT-0001⟩", "PAT-0002"]
    tip = m.headerData(1, Qt.Orientation.Horizontal, int(Qt.ItemDataRole.ToolTipRole.value))
    assert "one of 2 CT series of patient PAT-0001" in tip


def test_identify_csv_says_which_rows_belong_to_one_patient(files):
    from training.cli import main

    tmp, ck, ws = files
    assert main(["identify", ck, ws, "--out", str(tmp / "csv")]) == 0
    lines = (tmp / "csv" / "identify.csv").read_text().splitlines()
    assert lines[1].split(",")[:2] == ["patient", "of_patient"]
    assert lines[2].split(",")[0] == lines[2].split(",")[1] == "PAT-0001"
