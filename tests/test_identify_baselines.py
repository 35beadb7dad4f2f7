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
    assert (plain.unit, plain.n) == ("series", 3)
    # patient level counts patients: P (both its series) and Q
    assert grouped.n_identified == 2 and grouped.n_series_identified == 3 and grouped.confusions == []
    assert (grouped.unit, grouped.n, grouped.n_series, grouped.n_patients) == ("patient", 2, 3, 2)


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


def _untrained_checkpoint(path, pre) -> str:
    """A small untrained model (seed 0) saved as a checkpoint for workspaces of 16² images."""
    from training.config import ModelConfig, TrainConfig
    from training.vae.checkpoint import save_checkpoint
    from training.vae.model import VAE

    torch.manual_seed(0)
    mc = ModelConfig(input_size=16, n_blocks=2, filters=4, fc_units=16, latent_dim=3)
    return str(save_checkpoint(path, model_config=mc, train_config=TrainConfig(), preprocess_config=pre,
                               model_state=VAE(mc).state_dict(), optimizer_state=None, epoch=0, history=[],
                               data_hash="x", roi_names=()))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from training.config import PreprocessConfig
    from training.store.workspace import write_arrays_workspace

    tmp = tmp_path_factory.mktemp("idb")
    rng = np.random.default_rng(0)
    imgs = {f"PAT-{i:04d}": rng.random((4, 16, 16)).astype(np.float32) for i in range(1, 6)}
    pre = PreprocessConfig(crop=16, hu_min=-1000.0, hu_max=1000.0, window_name="custom")
    ws = write_arrays_workspace(tmp / "ws.h5", imgs, None, preprocess=pre, test_fraction=0.0)
    return tmp, _untrained_checkpoint(tmp / "m.pt", pre), str(ws)


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
    assert lines[0].split(",")[:4] == ["series", "patient", "nearest", "nearest_patient"]
    assert lines[1].split(",")[0] == lines[1].split(",")[1] == "PAT-0001"
    # the direction of kl_self / kl_nearest: in identify.json beside it
    assert json.loads((tmp / "csv" / "identify.json").read_text())["direction"].startswith("KL(q_b,i || q_a,j)")


# -- counts name their unit on a workspace where one patient has two series (issue 11) --------

def _two_series_images(seed: int = 1):
    """4 patients, 5 series: PAT-0001-2 is a second (identical) CT series of PAT-0001."""
    rng = np.random.default_rng(seed)
    imgs = {}
    for k in range(1, 5):
        base = rng.random((16, 16)).astype(np.float32)
        imgs[f"PAT-{k:04d}"] = np.stack([base, base, np.clip(base + 0.01 * rng.random((16, 16)), 0, 1)]
                                        ).astype(np.float32)
    imgs["PAT-0001-2"] = imgs["PAT-0001"].copy()
    return imgs


@pytest.fixture(scope="module")
def two_series(tmp_path_factory):
    from training.config import PreprocessConfig
    from training.store.workspace import write_arrays_workspace

    tmp = tmp_path_factory.mktemp("two_series")
    pre = PreprocessConfig(crop=16, hu_min=-1000.0, hu_max=1000.0, window_name="custom")
    ws = write_arrays_workspace(tmp / "ws.h5", _two_series_images(), None, preprocess=pre, test_fraction=0.0,
                                patients={"PAT-0001-2": "PAT-0001"})
    return tmp, _untrained_checkpoint(tmp / "m.pt", pre), str(ws)


def test_patient_counts_by_hand():
    # P has two series, only one of them finds P (the other: rank 2); Q is found, R is second
    ranks, worst = similarity.patient_ranks([0, 2, 0, 1], ["P", "P", "Q", "R"])
    assert ranks == ["P", "Q", "R"] and worst.tolist() == [2, 0, 1]
    st = similarity.unit_stats([0, 2, 0, 1], ["P", "P", "Q", "R"], "patient")
    assert st == {"unit": "patient", "n": 3, "n_identified": 1, "n_top3": 3, "mean_rank": 2.0}  # (3+1+2)/3
    st = similarity.unit_stats([0, 2, 0, 1], ["P", "P", "Q", "R"], "series")
    assert (st["unit"], st["n"], st["n_identified"]) == ("series", 4, 2)
    assert similarity.count_text(1, 1, "series") == "1 of 1 series"
    assert similarity.count_text(3, 4, "patient") == "3 of 4 patients"
    assert similarity.count_text(1, 1, "patient") == "1 of 1 patient"
    # identify: a patient counts only when the query of each of its series is identified
    mu_a = np.array([[0.0], [1.0], [5.0]])
    lv = np.zeros((3, 1))
    mu_b = np.array([[0.0], [5.0], [5.0]])  # P-2's slice b lands on Q
    res = similarity.identify(mu_a, lv, mu_b, lv, names=["P", "P-2", "Q"], groups=["P", "P", "Q"])
    assert (res.n_series_identified, res.n_identified, res.n) == (2, 1, 2)
    assert "identified 1 of 2 patients" in res.summary() and "3 series queried" in res.summary()
    assert res.score_text() == "1 of 2 patients identified"
    with pytest.raises(ValueError, match="level"):
        similarity.compare(mu_a, lv, mu_b, lv, level="patients")


def test_api_defaults_are_the_patient_level(two_series):
    import inspect

    from training.commands.identify import run_identification
    from training.explore.similarity import compare_slices, identify_slices
    from training.store.workspace import Workspace
    from training.vae.checkpoint import load_model

    for fn in (identify_slices, run_identification, compare_slices):
        assert inspect.signature(fn).parameters["level"].default == "patient", fn.__name__
    _, ck, ws = two_series
    model, _ = load_model(ck)
    with Workspace.open(ws) as w:
        res = identify_slices(model, w, 0, 2)
        by_series = identify_slices(model, w, 0, 2, level="series")
        with pytest.raises(ValueError, match="level"):
            identify_slices(model, w, 0, 2, level="entry")
    assert (res.level, res.unit, res.n, res.n_series, res.n_patients) == ("patient", "patient", 4, 5, 4)
    assert res.patients[res.names.index("PAT-0001-2")] == "PAT-0001"
    assert (by_series.unit, by_series.n, by_series.n_patients) == ("series", 5, 4)
    assert "of 5 series" in by_series.summary() and "patients" not in by_series.summary().splitlines()[0].split(";")[0]


@pytest.mark.parametrize("level", ["patient", "series"])
def test_identify_counts_name_their_unit_with_two_series_of_one_patient(two_series, level, capsys):
    import csv

    from training.cli import main

    tmp, ck, ws = two_series
    out = tmp / f"id-{level}"
    assert main(["identify", ck, ws, "--level", level, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "of 5 patients" not in text  # the bug: 5 series counted as patients
    first = next(line for line in text.splitlines() if line.startswith("identified"))
    if level == "patient":
        assert " of 4 patients (counted per patient" in first and "5 series queried" in first
        assert "of 4 patients" in text.split("baselines")[1] and "counted per patient" in text
    else:
        assert " of 5 series (counted per series" in first and "5 series of 4 patients" in first
        assert "of 5 series" in text.split("baselines")[1] and "counted per series" in text
    doc = json.loads((out / "identify.json").read_text())
    assert (doc["level"], doc["unit"], doc["n_series"], doc["n_patients"]) == (level, level, 5, 4)
    assert doc["n"] == (4 if level == "patient" else 5) and doc["n_identified"] <= doc["n"]
    assert doc["n_series_identified"] <= 5 and "mean_kl_same_series" in doc
    methods = json.loads((out / "identify_methods.json").read_text())
    assert (methods["n_series"], methods["n_patients"]) == (5, 4)
    kl = methods["methods"]["kl_directed"]
    assert kl["unit"] == "series" and kl["n"] == 5
    assert ("per_patient" in kl) == (level == "patient")
    if level == "patient":
        assert kl["per_patient"]["n"] == 4
    # the matrix CSV: rows are series, a column names each row's patient
    rows = list(csv.reader((out / "identify_kl.csv").read_text().splitlines()))
    assert rows[0][0].startswith("series \\ KL(q_b,i || q_a,j)") and rows[0][1] == "patient"
    assert rows[0][2:] == ["PAT-0001", "PAT-0001-2", "PAT-0002", "PAT-0003", "PAT-0004"]
    assert {r[0]: r[1] for r in rows[1:]} == {"PAT-0001": "PAT-0001", "PAT-0001-2": "PAT-0001",
                                             "PAT-0002": "PAT-0002", "PAT-0003": "PAT-0003",
                                             "PAT-0004": "PAT-0004"}
    m = np.array([[float(v) for v in r[2:]] for r in rows[1:]])
    assert m.shape == (5, 5)
    series_rows = [r for r in csv.reader((out / "identify.csv").read_text().splitlines())]
    assert series_rows[0][:2] == ["series", "patient"] and len(series_rows) == 6
    assert series_rows[2][:2] == ["PAT-0001-2", "PAT-0001"]


def _kl(m1, v1, m2, v2):
    return 0.5 * np.sum(np.log(v2) - np.log(v1) + (v1 + (m1 - m2) ** 2) / v2 - 1)


def test_similarity_command_levels_with_two_series_of_one_patient(two_series, capsys):
    import csv

    from training.cli import main
    from training.latent import encode as latent
    from training.store.workspace import Workspace
    from training.vae.checkpoint import load_model

    tmp, ck, ws = two_series
    read = lambda p: list(csv.reader(p.read_text().splitlines()))  # noqa: E731
    assert main(["similarity", ck, ws, "--level", "patient", "--out", str(tmp / "p.csv"), "--nearest", "0"]) == 0
    assert "one row per patient (5 series of 4 patients" in capsys.readouterr().out
    rows = read(tmp / "p.csv")
    assert rows[0][0].startswith("patient \\ KL(q_i || q_j)") and rows[0][1] == "patient"
    assert rows[0][2:] == [f"PAT-{k:04d}" for k in range(1, 5)] and len(rows) == 5
    got = np.array([[float(v) for v in r[2:]] for r in rows[1:]])
    # independently: PAT-0001's posterior is the moment-matched mixture of the 6 slices of both series
    model, _ = load_model(ck)
    with Workspace.open(ws) as w:
        enc = latent.encode_workspace(model, w)
        owner = [(p.patient or p.pseudonym) for p in w.patients]
    post = {}
    for pat in sorted(set(owner)):
        sel = np.isin(enc.rows[:, 0], [s for s, o in enumerate(owner) if o == pat])
        m, v = enc.mu[sel].astype(np.float64), np.exp(enc.logvar[sel].astype(np.float64))
        post[pat] = (m.mean(0), v.mean(0) + m.var(0), int(sel.sum()))
    assert post["PAT-0001"][2] == 6
    names = [f"PAT-{k:04d}" for k in range(1, 5)]
    want = np.array([[_kl(*post[a][:2], *post[b][:2]) for b in names] for a in names])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)

    assert main(["similarity", ck, ws, "--level", "series", "--out", str(tmp / "s.csv"), "--nearest", "0"]) == 0
    assert "one row per series (5 series of 4 patients" in capsys.readouterr().out
    rows = read(tmp / "s.csv")
    assert rows[0][0].startswith("series \\ ") and rows[0][1] == "patient" and len(rows) == 6
    assert [r[:2] for r in rows[1:3]] == [["PAT-0001", "PAT-0001"], ["PAT-0001-2", "PAT-0001"]]

    assert main(["similarity", ck, ws, "--level", "image", "--out", str(tmp / "i.csv"), "--nearest", "0"]) == 0
    rows = read(tmp / "i.csv")
    assert rows[0][0].startswith("image \\ ") and len(rows) == 16
    assert {r[0]: r[1] for r in rows[1:]}["PAT-0001-2:1"] == "PAT-0001"
