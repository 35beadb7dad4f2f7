"""Find similar patients (issue 16): ranking math, `ct-vae query` on the phantom, and the
Query tab with a real drop.

The phantom query is a second series of a known patient (training.dicom.phantom.write_rescan:
the same anatomy shifted by one pixel with extra noise, new UIDs): a trained model must rank
that patient first.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from test_gui_support import _one_torch_thread, data_dir, make_window  # noqa: F401 (fixtures)
from training.latent import query as lq

torch.set_num_threads(1)
SLICES, SIZE = 8, 32


# ----------------------------------------------------------------------------- math


def _torch_kl(mu_p, lv_p, mu_q, lv_q):
    t = lambda a: torch.as_tensor(np.asarray(a, np.float64))  # noqa: E731
    return kl_divergence(Normal(t(mu_p), torch.exp(0.5 * t(lv_p))),
                         Normal(t(mu_q), torch.exp(0.5 * t(lv_q)))).sum(-1).numpy()


def test_divergences_match_torch_distributions():
    rng = np.random.default_rng(3)
    mu = rng.normal(size=(40, 7)).astype(np.float32)
    lv = (0.7 * rng.normal(size=(40, 7))).astype(np.float32)
    mq, lvq = rng.normal(size=7), 0.7 * rng.normal(size=7)
    np.testing.assert_allclose(lq.kl_query_to_many(mq, lvq, mu, lv), _torch_kl(mq[None], lvq[None], mu, lv),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lq.kl_many_to_query(mu, lv, mq, lvq), _torch_kl(mu, lv, mq[None], lvq[None]),
                               rtol=1e-12, atol=1e-12)
    r = lq.rank_patients(mq, lvq, mu, lv, [f"P{i}" for i in range(40)], "symmetric")
    np.testing.assert_allclose(r.divergence, 0.5 * (r.kl_query + r.kl_reverse))
    np.testing.assert_allclose(r.euclid, np.linalg.norm(mu.astype(np.float64) - mq, axis=1))
    assert list(r.order[:3]) == list(np.argsort(r.divergence)[:3])
    assert sorted(r.rank.tolist()) == list(range(1, 41)) and r.rank[r.order[0]] == 1
    # the same posterior as a stored one: divergence 0, rank 1
    r = lq.rank_patients(mu[5], lv[5], mu, lv, list(range(40)))
    assert r.order[0] == 5 and r.divergence[5] == pytest.approx(0, abs=1e-9)
    assert "query" in r.definition and "KL(q_query || q_j)" in r.definition


def test_monotone_pairing_is_the_best_order_keeping_choice():
    """Against every order-keeping choice, on random and tied matrices."""
    import itertools

    from training.explore.query import monotone_pairing

    rng = np.random.default_rng(0)
    for _ in range(300):
        n_rows, n_cols = int(rng.integers(1, 5)), int(rng.integers(1, 7))
        d = rng.random((n_rows, n_cols))
        if rng.random() < 0.3:
            d = np.round(d, 1)  # ties
        strict = n_cols >= n_rows

        def keeps_order(c):
            return all(c[i] < c[i + 1] if strict else c[i] <= c[i + 1] for i in range(len(c) - 1))

        best = min(sum(d[r, c[r]] for r in range(n_rows))
                   for c in itertools.product(range(n_cols), repeat=n_rows) if keeps_order(c))
        got = monotone_pairing(d)
        assert keeps_order(got) and sum(d[r, got[r]] for r in range(n_rows)) == pytest.approx(best)
    # slice by slice the middle query slice would take match slice 0, below the first pair
    d = np.array([[0.0, 5, 5, 5], [0.1, 0.2, 5, 5], [5, 5, 5, 0.0]])
    assert monotone_pairing(d).tolist() == [0, 1, 3]


def test_top_k_and_ranks_with_ties():
    v = np.array([3.0, 1.0, 2.0, 1.0, 5.0])
    assert lq.top_k(v, 3).tolist() == [1, 3, 2]
    assert lq.top_k(v, 10).tolist() == [1, 3, 2, 0, 4]
    assert lq.ranks(v).tolist() == [4, 1, 3, 2, 5]
    with pytest.raises(ValueError, match="direction"):
        lq.divergence(v[:2], v[:2], v[None, :2], v[None, :2], "both")


# ----------------------------------------------------------------------------- phantom


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """6 phantom patients (full 32-px field of view), a small model trained 30 epochs, and
    a rescan of the third patient (PAT-0003) as the query folder."""
    from training.config import ModelConfig, PreprocessConfig, TrainConfig
    from training.dicom.phantom import generate_cohort, write_rescan
    from training.store.ingest import ingest
    from training.vae.trainer import Trainer

    root = tmp_path_factory.mktemp("query")
    generate_cohort(root / "cohort", 6, slices=SLICES, size=SIZE, fsync=False)
    info = write_rescan(root / "query", 2, slices=SLICES, size=SIZE, fsync=False)
    cfg = PreprocessConfig(crop=None, rois=("Lung-Left", "Heart"))
    ingest([root / "cohort"], root / "w.h5", cfg, workers=1, test_fraction=0.0)
    mc = ModelConfig(input_size=SIZE, n_blocks=2, filters=4, fc_units=16, latent_dim=4, n_classes=cfg.n_classes)
    Trainer(str(root / "w.h5"), mc, TrainConfig(epochs=30, batch_size=8, threads=1, lr=3e-3),
            out_dir=root / "run", data_workers=0).run()
    return root, root / "run" / "last.pt", root / "w.h5", info


def _copy_ws(trained, tmp_path):
    root, ck, ws, info = trained
    from training.store.workspace import copy_workspace

    return copy_workspace(ws, tmp_path / "w.h5")  # the head and its w.h5.d/


def test_cli_query_ranks_the_patients_other_series_first(trained, tmp_path, capsys):
    from training.cli import main
    from training.store.workspace import Workspace

    root, ck, _, info = trained
    ws = _copy_ws(trained, tmp_path)
    with Workspace.open(ws) as w:
        n_train, data_hash = len(w.index("train")), w.data_hash
    out = tmp_path / "report"
    assert main(["query", str(ck), str(ws), str(root / "query"), "--top", "3", "--out", str(out),
                 "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "PAT-0003-2" in printed and "KL(q_query || q_j)" in printed
    lines = (out / "ranking.csv").read_text().splitlines()
    assert lines[0].startswith("rank,entry,patient,")  # a plain header row, no '#' line
    side = json.loads((out / "ranking.json").read_text())
    assert side["query"] == "PAT-0003-2" and side["n_cohort"] == 6 and side["patient_posterior"] == "mixture"
    assert "KL(q_query || q_j)" in side["divergence"] and "Euclidean" in side["columns"]["euclidean_mu"]
    assert "pixel L2" in side["columns"]["pixel_l2"]
    rows = list(csv.DictReader(lines))
    assert len(rows) == 6 and [int(r["rank"]) for r in rows] == list(range(1, 7))
    assert rows[0]["entry"] == "PAT-0003" and rows[0]["same_patient"] == "True", rows[0]
    assert float(rows[0]["divergence"]) < float(rows[1]["divergence"])
    vols = (out / "roi_volumes.csv").read_text().splitlines()
    assert vols[0] == "rank,match,roi,query_cm3,match_cm3,difference_cm3" and len(vols) > 2
    assert "ROI volume" in json.loads((out / "roi_volumes.json").read_text())["volume"]
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report.pdf").read_bytes()[:5] == b"%PDF-"
    # privacy: the phantom's name, ID and birth date appear in no report file
    for p in out.iterdir():
        data = p.read_bytes()
        for ident in (info.patient_name, info.patient_id, info.patient_birth_date, "PHANTOM"):
            assert ident.encode() not in data, (p.name, ident)
    # stored as a query: never in the training index, the data hash unchanged
    with Workspace.open(ws) as w:
        q = w.patient_index("PAT-0003-2")
        assert w.patients[q].is_query
        assert len(w.index("train")) == n_train and q not in w.index("train")[:, 0]
        assert w.data_hash == data_hash


def test_cli_query_no_store_leaves_the_workspace_alone(trained, tmp_path):
    from training.cli import main

    root, ck, _, _ = trained
    ws = _copy_ws(trained, tmp_path)
    before = ws.read_bytes()
    out = tmp_path / "r"
    assert main(["query", str(ck), str(ws), str(root / "query"), "--top", "2", "--out", str(out),
                 "--no-store", "--workers", "1"]) == 0
    assert ws.read_bytes() == before
    rows = (out / "ranking.csv").read_text().splitlines()
    assert rows[1].split(",")[1] == "PAT-0003" and json.loads((out / "ranking.json").read_text())["query"] == "QUERY"


def test_cli_query_errors_are_one_line(trained, tmp_path, capsys):
    from training.cli import main

    root, ck, _, _ = trained
    ws = _copy_ws(trained, tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not DICOM")
    assert main(["query", str(ck), str(ws), str(empty), "--out", str(tmp_path / "r")]) == 1
    assert "no usable CT series" in capsys.readouterr().err
    assert main(["query", str(ck), str(tmp_path / "nope.h5"), str(root / "query"), "--out", str(tmp_path / "r")]) == 1
    assert "no such workspace" in capsys.readouterr().err


def test_cohort_cached_in_memory_follows_entries_a_query_moved(trained, tmp_path):
    """The in-memory cohort cache outlives adding a query (the data hash leaves queries
    out), but the query PAT-0003-2 sorts before PAT-0004 and moves it: the cached rows
    must follow the labels (they once ranked 5 of 6 and showed the query as a match)."""
    from training.explore.latent import load_latent_model
    from training.explore.query import answer_query, clear_cache, encode_cohort
    from training.store.ingest import ingest
    from training.store.workspace import Workspace

    root, ck, _, _ = trained
    ws_path = _copy_ws(trained, tmp_path)
    lm = load_latent_model(ck)
    clear_cache()
    with Workspace.open(ws_path) as ws:
        encode_cohort(lm.model, ws, model_key=lm.key)
        before = ws.data_hash
    ingest([root / "query"], ws_path, role="query", workers=1)
    with Workspace.open(ws_path) as ws:
        assert ws.data_hash == before and ws.patient_index("PAT-0004") > ws.patient_index("PAT-0003-2")
        warm = answer_query(lm.model, ws, "PAT-0003-2", top=6, model_key=lm.key)
        assert warm.seconds["cohort"] < 0.05  # served from memory
        clear_cache()
        fresh = answer_query(lm.model, ws, "PAT-0003-2", top=6, model_key=lm.key)
        for a in (warm, fresh):
            assert sorted(a.ranking.names) == [f"PAT-{i:04d}" for i in range(1, 7)] and a.n_cohort == 6
        assert warm.ranking.names == fresh.ranking.names
        np.testing.assert_allclose(warm.ranking.divergence, fresh.ranking.divergence, rtol=1e-6)
        for mw, mf in zip(warm.matches, fresh.matches):
            assert mw.name == mf.name and mw.match_images == mf.match_images
            np.testing.assert_array_equal(mw.images, mf.images)
        np.testing.assert_allclose(warm.pixel_l2, fresh.pixel_l2, rtol=1e-6)


def test_answer_pairs_slices_and_volumes(trained, tmp_path):
    from training.explore.latent import load_latent_model
    from training.explore.query import answer_query, roi_volumes_cm3
    from training.store.ingest import ingest
    from training.store.workspace import Workspace

    root, ck, _, info = trained
    ws_path = _copy_ws(trained, tmp_path)
    ingest([root / "query"], ws_path, role="query", workers=1)
    lm = load_latent_model(ck)
    with Workspace.open(ws_path) as ws:
        a = answer_query(lm.model, ws, "PAT-0003-2", top=2, model_key=lm.key)
        b = answer_query(lm.model, ws, "PAT-0003-2", top=2, direction="symmetric", model_key=lm.key)
        vq = roi_volumes_cm3(ws, ws.patient_index("PAT-0003-2"))
        src_hu, masks, geo = ws.read_source(ws.patient_index("PAT-0003-2"))
    assert a.matches[0].name == "PAT-0003" and a.matches[0].same_patient
    assert a.n_cohort == 6 and a.query_images_shown == [2, 4, 5]
    m = a.matches[0]
    assert m.images.shape == (3, SIZE, SIZE) and m.labels.shape == (3, SIZE, SIZE)
    assert len(m.match_images) == 3 and all(0 <= k < SLICES for k in m.match_images)
    assert m.match_images == sorted(set(m.match_images))  # the pairs keep the stacks' order
    assert b.direction == "symmetric" and b.matches[0].divergence == pytest.approx(b.matches[0].symmetric)
    # the cohort encoding was reused (cached by data hash; the query does not change it)
    assert b.seconds["cohort"] < a.seconds["cohort"] + 0.05
    # ROI volume: voxel count × voxel volume, independently from the stored mask
    heart = int(masks["Heart"].sum()) * float(np.prod(info.spacing)) / 1000.0
    assert vq["Heart"] == pytest.approx(heart)
    hv = {v.name: v for v in m.volumes}["Heart"]
    assert hv.query_cm3 == pytest.approx(heart) and hv.difference_cm3 == pytest.approx(hv.match_cm3 - heart)
    # ... close to the patient's other series (the same anatomy, shifted by a pixel)
    assert abs(hv.difference_cm3) < 0.05 * heart


# ----------------------------------------------------------------------------- GUI


@pytest.mark.timeout(240)
def test_query_drop_on_the_window_shows_ranked_list_with_images(trained, tmp_path, qtbot, make_window):
    from test_gui_support import drop_paths, wait_until

    from explorer.panels.query import QueryPanel
    from explorer.qt import QtWidgets
    from training.store.workspace import Workspace

    root, ck, _, _ = trained
    ws = _copy_ws(trained, tmp_path)
    w = make_window(ws)
    w.load_model(ck)
    panel = w.panel(QueryPanel)
    assert panel is not None and any(a.text() == "&Find similar patients…" for a in w.menuBar().actions()[0].menu().actions())
    w.tabs.setCurrentWidget(panel)
    drop_paths(w, [root / "query"])
    assert w.job is not None, "the drop did not start the query's ingest"
    wait_until(qtbot, lambda: w.job is None, timeout_s=120, what="the query ingest")
    wait_until(qtbot, lambda: panel.answer is not None and panel.answer.query == "PAT-0003-2", timeout_s=120,
               what="the answer")
    panel.wait_idle()
    qtbot.wait(50)
    assert [panel.queries.item(i).text() for i in range(panel.queries.count())] == ["PAT-0003-2"]
    assert panel.table.rowCount() == 6
    assert panel.table.item(0, 1).text() == "PAT-0003" and "same patient" in panel.table.item(0, 2).text()
    pics = panel.grid_host.findChildren(QtWidgets.QLabel, "query-image")
    assert len(pics) == 3 * (1 + 5) and all(not p.pixmap().isNull() for p in pics)
    assert panel.volumes.rowCount() > 0 and "KL(q_query || q_j)" in panel.definition.text()
    # the query is not training data
    with Workspace.open(ws) as wsr:
        q = wsr.patient_index("PAT-0003-2")
        assert wsr.patients[q].is_query and q not in wsr.index("train")[:, 0] and q not in wsr.index()[:, 0]
    # a report from the window, off the GUI thread
    job = panel.save_report(tmp_path / "rep")
    wait_until(qtbot, lambda: job not in panel._jobs, timeout_s=60, what="the report")
    assert (tmp_path / "rep" / "report.pdf").exists() and (tmp_path / "rep" / "ranking.csv").exists()
    # move it into the cohort: it leaves the query list and joins the training index
    panel.move_current_to_cohort()
    wait_until(qtbot, lambda: w.job is None and not panel._jobs, timeout_s=60, what="the move")
    qtbot.wait(50)
    assert panel.queries.count() == 0
    with Workspace.open(ws) as wsr:
        assert wsr.patient_index("PAT-0003-2") in wsr.index()[:, 0]
    w.close()


@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_answer_on_an_arrays_workspace_2d_and_3d(tmp_path, mode):
    """No stored source (no ROI volumes), 3D cubes paired by depth index, a query marked
    with roles.mark_as_query, and a cohort entry asked as a query leaves itself out."""
    from training.config import ModelConfig
    from training.explore.query import POSITION_METHOD_3D, answer_query
    from training.store.roles import mark_as_query
    from training.store.workspace import Workspace, write_arrays_workspace
    from training.vae.model import VAE

    rng = np.random.default_rng(1)
    shape = (4, 16, 16) if mode == "2d" else (1, 16, 16, 16)
    imgs = {f"PAT-{i:04d}": rng.random(shape, dtype=np.float32) for i in range(1, 6)}
    imgs["PAT-0006"] = np.clip(imgs["PAT-0002"] + 0.01 * rng.standard_normal(shape, dtype=np.float32), 0, 1)
    ws_path = write_arrays_workspace(tmp_path / "a.h5", imgs, test_fraction=0.0)
    assert mark_as_query(ws_path, ["PAT-0006"]) == ["PAT-0006"]
    torch.manual_seed(0)
    model = VAE(ModelConfig(input_size=16, n_blocks=2, filters=2, fc_units=8, latent_dim=3,
                            spatial_dims=2 if mode == "2d" else 3)).eval()
    with Workspace.open(ws_path) as ws:
        assert len(ws.index()) == 5 * shape[0]
        a = answer_query(model, ws, "PAT-0006", top=3)
        assert a.n_cohort == 5 and [m.volumes for m in a.matches] == [[], [], []]
        if mode == "3d":
            assert a.position_method == POSITION_METHOD_3D and a.query_images_shown == [4, 8, 11]
            assert a.matches[0].match_images == [4, 8, 11] and a.matches[0].images.shape == (3, 16, 16)
        else:
            assert a.query_images_shown == [1, 2] and a.matches[0].images.shape == (2, 16, 16)
        # an untrained encoder is nearly linear: the near-copy of PAT-0002 is nearest by pixels
        assert a.pixel_rank[a.ranking.names.index("PAT-0002")] == 1
        b = answer_query(model, ws, "PAT-0003", top=2)
        assert b.n_cohort == 4 and "PAT-0003" not in b.ranking.names
