"""Find similar patients (issue 16), second round: the encoded cohort kept beside the model
(RUN/encoded/<model>-<data hash>.npz), `ct-vae roles`, a dropped cohort folder on the Query
tab, the File menu flow and the direction box.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from test_gui_support import _one_torch_thread, data_dir, make_window  # noqa: F401 (fixtures)

torch.set_num_threads(1)
SLICES, SIZE = 6, 32


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """5 phantom patients, a model trained 2 epochs (the ranking's quality is not tested
    here, only where the posteriors come from), and a rescan of PAT-0003 as a query."""
    from training.config import ModelConfig, PreprocessConfig, TrainConfig
    from training.dicom.phantom import generate_cohort, write_rescan
    from training.store.ingest import ingest
    from training.vae.trainer import Trainer

    root = tmp_path_factory.mktemp("query_cache")
    infos = generate_cohort(root / "cohort", 5, slices=SLICES, size=SIZE, fsync=False)
    qinfo = write_rescan(root / "query", 2, slices=SLICES, size=SIZE, fsync=False)
    cfg = PreprocessConfig(crop=None, rois=("Lung-Left", "Heart"))
    ingest([root / "cohort"], root / "w.h5", cfg, workers=1, test_fraction=0.0)
    mc = ModelConfig(input_size=SIZE, n_blocks=2, filters=4, fc_units=16, latent_dim=4, n_classes=cfg.n_classes)
    Trainer(str(root / "w.h5"), mc, TrainConfig(epochs=2, batch_size=8, threads=1),
            out_dir=root / "run", data_workers=0).run()
    return root, infos, qinfo


@pytest.fixture
def copy(made, tmp_path):
    """(root, checkpoint, workspace) copies of the module's run and workspace."""
    from training.explore.query import clear_cache
    from training.store.workspace import copy_workspace

    root, _, _ = made
    (tmp_path / "run").mkdir()
    shutil.copy2(root / "run" / "last.pt", tmp_path / "run" / "last.pt")
    ws = copy_workspace(root / "w.h5", tmp_path / "w.h5")
    clear_cache()  # another test's in-memory encoding must not answer for the file
    yield root, tmp_path / "run" / "last.pt", ws
    clear_cache()


def _model(ck):
    from training.vae.checkpoint import load_model

    return load_model(ck)[0]


class _CountEncodes:
    """Counts the images the encoder is run on (training.latent.encode.encode_arrays)."""

    def __init__(self, monkeypatch):
        from training.latent import encode

        self.images = 0
        orig = encode.encode_arrays

        def spy(model, images, labels=None, batch_size=32):
            self.images += len(images)
            return orig(model, images, labels, batch_size)

        monkeypatch.setattr(encode, "encode_arrays", spy)


# ----------------------------------------------------------------------------- the cache file


def test_cohort_file_is_written_once_then_read_and_survives_a_new_query(copy, monkeypatch):
    from training.explore import query as xq
    from training.store.ingest import ingest
    from training.store.workspace import Workspace

    root, ck, ws_path = copy
    store = ck.parent / "encoded"
    model = _model(ck)
    count = _CountEncodes(monkeypatch)
    with Workspace.open(ws_path) as ws:
        a = xq.encode_cohort(model, ws, store=store)
        n_images, data_hash = ws.n_images, ws.data_hash
    assert a.source == "encoded" and count.images == n_images == 5 * SLICES
    fp = xq.model_fingerprint(model)
    files = sorted(store.iterdir())
    assert files == [store / f"{fp[:16]}-{data_hash}.npz"] and a.cache_file == files[0]
    assert a.cache_note == f"wrote {files[0]}"
    # a new process (cleared memory), the same model read from the file again
    xq.clear_cache()
    model2 = _model(ck)
    assert xq.model_fingerprint(model2) == fp
    with Workspace.open(ws_path) as ws:
        b = xq.encode_cohort(model2, ws, store=store)
    assert b.source == "file" and count.images == n_images  # nothing encoded
    np.testing.assert_array_equal(b.encoded.mu, a.encoded.mu)
    np.testing.assert_array_equal(b.encoded.logvar, a.encoded.logvar)
    np.testing.assert_array_equal(b.encoded.rows, a.encoded.rows)
    np.testing.assert_array_equal(b.mean_images, a.mean_images)
    np.testing.assert_array_equal(b.posteriors.mu, a.posteriors.mu)
    assert b.names == a.names
    # a query is added: it sorts between cohort entries (PAT-0003-2), the data hash does
    # not change, the file still answers, and its rows are the workspace's rows now
    ingest([root / "query"], ws_path, role="query", workers=1)
    xq.clear_cache()
    with Workspace.open(ws_path) as ws:
        assert ws.data_hash == data_hash
        q = ws.patient_index("PAT-0003-2")
        c = xq.encode_cohort(model2, ws, store=store)
        ans = xq.answer_query(model2, ws, "PAT-0003-2", top=2, store=store)
        assert c.source == "file" and count.images == n_images + SLICES  # the query itself only
        assert q not in set(c.encoded.rows[:, 0].tolist())
        by_row = lambda e: {(e.names[r], i): k for k, (r, i) in enumerate(e.rows.tolist())}  # noqa: E731
        ra, rc = by_row(a.encoded), by_row(c.encoded)
        assert set(ra) == set(rc)
        k_a, k_c = zip(*[(ra[key], rc[key]) for key in ra])
        np.testing.assert_array_equal(c.encoded.mu[list(k_c)], a.encoded.mu[list(k_a)])
        # the same answer as without any cache
        xq.clear_cache()
        fresh = xq.answer_query(model2, ws, "PAT-0003-2", top=2)
    assert ans.cohort_source == "memory" and fresh.cohort_source == "encoded"
    assert ans.ranking.names == fresh.ranking.names
    np.testing.assert_array_equal(ans.ranking.divergence, fresh.ranking.divergence)
    np.testing.assert_array_equal(ans.pixel_l2, fresh.pixel_l2)
    assert [m.match_images for m in ans.matches] == [m.match_images for m in fresh.matches]
    assert not ans.query_in_cohort
    assert len(list(store.iterdir())) == 1


def test_cohort_file_holds_no_names_or_ids(copy, made):
    from training.explore import query as xq
    from training.store.workspace import Workspace

    root, ck, ws_path = copy
    _, infos, _ = made
    with Workspace.open(ws_path) as ws:
        xq.encode_cohort(_model(ck), ws, store=ck.parent / "encoded")
    (f,) = (ck.parent / "encoded").iterdir()
    data = f.read_bytes()
    for info in infos:
        for ident in (info.patient_name, info.patient_id, info.patient_birth_date):
            assert ident.encode() not in data and ident.encode("utf-32-le") not in data, ident
    with np.load(f, allow_pickle=False) as z:
        assert set(z.files) == xq._CACHE_KEYS
        assert z["labels"].tolist() == [f"PAT-{i:04d}" for i in range(1, 6)]


def _rewrite(path: Path, **changes) -> None:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    for k, v in list(arrays.items()):
        if v is None:
            del arrays[k]
    np.savez(path, **arrays)


class _Boom:
    """Unpickling this would run code (it writes a marker file)."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("damage", [
    "truncated", "garbage", "pickled", "other_model", "other_data", "short_mu", "wrong_counts",
    "missing_key", "extra_key", "nan", "float64", "huge", "wrong_rows",
])
def test_a_damaged_or_stale_file_is_ignored_and_rewritten(copy, monkeypatch, damage, tmp_path):
    from training.explore import query as xq
    from training.store.workspace import Workspace

    root, ck, ws_path = copy
    store = ck.parent / "encoded"
    model = _model(ck)
    with Workspace.open(ws_path) as ws:
        good = xq.encode_cohort(model, ws, store=store)
    (f,) = store.iterdir()
    original = f.read_bytes()
    marker = tmp_path / "code-ran"
    if damage == "truncated":
        f.write_bytes(original[: len(original) // 2])
    elif damage == "garbage":
        f.write_bytes(b"\x00not a zip file" * 10)
    elif damage == "pickled":
        boom = _Boom()
        boom.marker = marker
        _rewrite(f, mu=np.array([boom], dtype=object))
    elif damage == "other_model":
        _rewrite(f, model_key=np.array("0" * 64))
    elif damage == "other_data":
        _rewrite(f, data_hash=np.array("f" * 16))
    elif damage == "short_mu":
        with np.load(f) as z:
            _rewrite(f, mu=z["mu"][:-1])
    elif damage == "wrong_counts":
        with np.load(f) as z:
            c = z["counts"].copy()
        c[0] -= 1
        c[1] += 1
        _rewrite(f, counts=c)
    elif damage == "missing_key":
        _rewrite(f, mean_images=None)
    elif damage == "extra_key":
        _rewrite(f, names=np.array(["someone"]))
    elif damage == "nan":
        with np.load(f) as z:
            lv = z["logvar"].copy()
        lv[3, 1] = np.nan
        _rewrite(f, logvar=lv)
    elif damage == "float64":
        with np.load(f) as z:
            _rewrite(f, mu=z["mu"].astype(np.float64))
    elif damage == "huge":
        _rewrite(f, mean_images=np.zeros((5, 2048, 2048), np.float32))
    elif damage == "wrong_rows":
        with np.load(f) as z:
            r = z["rows"].copy()
        r[[0, 1]] = r[[1, 0]]
        _rewrite(f, rows=r)
    xq.clear_cache()
    count = _CountEncodes(monkeypatch)
    with Workspace.open(ws_path) as ws:
        with pytest.raises(xq.CacheRejected):
            xq.load_cohort_file(f, ws, xq.model_fingerprint(model))
        again = xq.encode_cohort(model, ws, store=store)
    assert not marker.exists(), "a pickled object in the file was executed"
    assert again.source == "encoded" and count.images == 5 * SLICES
    assert again.cache_note.startswith("ignored (") and again.cache_note.endswith(f"wrote {f}")
    np.testing.assert_array_equal(again.encoded.mu, good.encoded.mu)
    # rewritten: the next process reads it again
    xq.clear_cache()
    with Workspace.open(ws_path) as ws:
        assert xq.encode_cohort(model, ws, store=store).source == "file"


def test_another_model_or_moved_roles_get_their_own_file(copy):
    from training.explore import query as xq
    from training.store.ingest import ingest
    from training.store.roles import move_to_cohort
    from training.store.workspace import Workspace

    root, ck, ws_path = copy
    store = ck.parent / "encoded"
    model = _model(ck)
    ingest([root / "query"], ws_path, role="query", workers=1)
    with Workspace.open(ws_path) as ws:
        assert xq.encode_cohort(model, ws, store=store).source == "encoded"
        h0 = ws.data_hash
    # the next epoch's weights (same path, same architecture): not the same model
    other = _model(ck)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    assert xq.model_fingerprint(other) != xq.model_fingerprint(model)
    with Workspace.open(ws_path) as ws:
        b = xq.encode_cohort(other, ws, store=store)
    assert b.source == "encoded" and len(list(store.iterdir())) == 2
    # the query joins the cohort: the data hash changes, the old files no longer answer
    move_to_cohort(ws_path, ["PAT-0003-2"])
    xq.clear_cache()
    with Workspace.open(ws_path) as ws:
        assert ws.data_hash != h0
        c = xq.encode_cohort(model, ws, store=store)
    assert c.source == "encoded" and len(c.names) == 6 and len(list(store.iterdir())) == 3
    assert c.cache_file.name.endswith(f"-{ws.data_hash}.npz")


def test_unwritable_store_still_answers_and_old_files_are_pruned(copy):
    from training.explore import query as xq
    from training.store.workspace import Workspace

    root, ck, ws_path = copy
    blocked = ck.parent / "blocked"
    blocked.write_text("a file where the folder should be")
    model = _model(ck)
    with Workspace.open(ws_path) as ws:
        a = xq.encode_cohort(model, ws, store=blocked)
    assert a.source == "encoded" and a.cache_file is None and "not written" in a.cache_note
    store = ck.parent / "encoded"
    store.mkdir()
    for i in range(xq.CACHE_KEEP + 3):
        (store / f"{i:016x}-{'0' * 16}.npz").write_bytes(b"old")
    keep_other = store / "notes.txt"
    keep_other.write_text("not ours")
    xq.clear_cache()
    with Workspace.open(ws_path) as ws:
        xq.encode_cohort(model, ws, store=store)
    ours = [p for p in store.iterdir() if xq._CACHE_NAME.match(p.name)]
    assert len(ours) == xq.CACHE_KEEP and keep_other.exists()


# ----------------------------------------------------------------------------- CLI


def test_cli_query_reads_the_cohort_file_the_second_time(copy, capsys):
    from training.cli import main
    from training.explore.query import clear_cache

    root, ck, ws = copy
    args = [str(ck), str(ws), str(root / "query"), "--top", "2", "--workers", "1"]
    assert main(["query", *args, "--out", str(ck.parent / "r1")]) == 0
    err = capsys.readouterr().err
    assert "cohort: encoded in" in err and "wrote" in err and "encoded" in err
    (f,) = (ck.parent / "encoded").iterdir()
    mtime = f.stat().st_mtime_ns
    clear_cache()  # as a new `ct-vae query` process
    assert main(["query", *args, "--out", str(ck.parent / "r2")]) == 0
    err = capsys.readouterr().err
    assert f"cohort: 5 patients' posteriors read {f}" in err and "encoding the cohort" not in err
    assert f.stat().st_mtime_ns == mtime
    assert (ck.parent / "r1" / "ranking.csv").read_text() == (ck.parent / "r2" / "ranking.csv").read_text()
    # --no-cache: neither read nor written
    shutil.rmtree(ck.parent / "encoded")
    assert main(["query", *args, "--out", str(ck.parent / "r3"), "--no-cache"]) == 0
    assert "cohort: encoded in" in capsys.readouterr().err and not (ck.parent / "encoded").exists()


def test_cli_roles_lists_and_moves_entries(copy, capsys):
    from training.cli import main
    from training.store.ingest import ingest
    from training.store.workspace import Workspace

    root, ck, ws = copy
    assert main(["roles", str(ws)]) == 0
    assert "no query entries" in capsys.readouterr().out
    ingest([root / "query"], ws, role="query", workers=1)
    with Workspace.open(ws) as w:
        h0 = w.data_hash
    assert main(["roles", str(ws)]) == 0
    assert capsys.readouterr().out.splitlines() == ["PAT-0003-2"]
    assert main(["roles", str(ws), "--to-cohort", "PAT-0003-2"]) == 0
    out = capsys.readouterr().out
    with Workspace.open(ws) as w:
        p = w.patients[w.patient_index("PAT-0003-2")]
        assert not p.is_query and w.patient_index("PAT-0003-2") in w.index()[:, 0]
        h1 = w.data_hash
    assert "PAT-0003-2: moved to the cohort" in out and f"data hash {h0} -> {h1}" in out and "no longer match" in out
    assert main(["roles", str(ws), "--to-cohort", "PAT-0003-2"]) == 0
    assert "already in the cohort" in (out := capsys.readouterr().out) and f"data hash unchanged ({h1})" in out
    assert main(["roles", str(ws), "--to-query", "PAT-0003-2", "PAT-0005"]) == 0
    assert capsys.readouterr().out.count("moved to the queries") == 2
    with Workspace.open(ws) as w:
        assert [p.pseudonym for p in w.patients if p.is_query] == ["PAT-0003-2", "PAT-0005"]
    # errors: one line, exit 1, nothing changed
    assert main(["roles", str(ws), "--to-cohort", "PAT-0099"]) == 1
    assert "PAT-0099" in capsys.readouterr().err
    assert main(["roles", str(ws), "--to-cohort", "PAT-0005", "--to-query", "PAT-0005"]) == 1
    assert "both" in capsys.readouterr().err
    assert main(["roles", str(ws.parent / "nope.h5")]) == 1
    with Workspace.open(ws) as w:
        assert [p.pseudonym for p in w.patients if p.is_query] == ["PAT-0003-2", "PAT-0005"]


# ----------------------------------------------------------------------------- GUI


def _window(make_window, ws, ck):
    from explorer.panels.query import QueryPanel

    w = make_window(ws)
    w.load_model(ck)
    return w, w.panel(QueryPanel)


@pytest.mark.timeout(240)
def test_file_menu_flow_and_the_direction_box(copy, qtbot, make_window, monkeypatch):
    """File ▸ Find similar patients… (the folder dialog answers with the query folder):
    the Query tab is shown, the folder is ingested as a query and answered from the cohort
    file written beside the model before the window opened; then each direction of the
    box re-ranks by that direction."""
    from test_gui_support import wait_until

    from explorer.qt import Qt, QtWidgets
    from training.explore import query as xq
    from training.store.workspace import Workspace

    root, ck, ws = copy
    with Workspace.open(ws) as w0:  # as an earlier `ct-vae query` or window would have
        xq.encode_cohort(_model(ck), w0, store=ck.parent / "encoded")
    xq.clear_cache()
    asked = []

    def dialog(parent, caption, *a, **k):
        asked.append(caption)
        return str(root / "query")

    monkeypatch.setattr(QtWidgets.QFileDialog, "getExistingDirectory", staticmethod(dialog))
    w, panel = _window(make_window, ws, ck)
    w.tabs.setCurrentIndex(0)
    (action,) = [a for a in w.menuBar().actions()[0].menu().actions() if a.text() == "&Find similar patients…"]
    action.trigger()
    assert asked and "Find similar patients" in asked[0] and w.tabs.currentWidget() is panel
    assert w.job is not None, "the menu did not start the query's ingest"
    wait_until(qtbot, lambda: w.job is None, timeout_s=120, what="the query ingest")
    wait_until(qtbot, lambda: panel.answer is not None and panel.answer.query == "PAT-0003-2", timeout_s=120,
               what="the answer")
    panel.wait_idle()
    a = panel.answer
    assert a.direction == "query" and a.cohort_source == "file" and a.n_cohort == 5
    assert [panel.queries.item(i).text() for i in range(panel.queries.count())] == ["PAT-0003-2"]
    for idx, key, col in ((1, "reverse", 4), (2, "symmetric", 5), (0, "query", 3)):
        panel.direction.setCurrentIndex(idx)
        assert panel.direction.currentData() == key
        wait_until(qtbot, lambda: panel.answer.direction == key, timeout_s=60, what=f"the {key} ranking")
        panel.wait_idle()
        qtbot.wait(20)
        b = panel.answer
        want = {"query": b.ranking.kl_query, "reverse": b.ranking.kl_reverse,
                "symmetric": 0.5 * (b.ranking.kl_query + b.ranking.kl_reverse)}[key]
        np.testing.assert_allclose(b.ranking.divergence, want)
        order = [b.ranking.names[j] for j in np.argsort(want, kind="stable")]
        assert [panel.table.item(r, 1).text() for r in range(panel.table.rowCount())] == order
        shown = [panel.table.item(r, col).data(Qt.ItemDataRole.DisplayRole) for r in range(panel.table.rowCount())]
        assert shown == sorted(shown)  # the chosen direction's column is the ranked one
        assert [m.name for m in b.matches] == order[: len(b.matches)]
        assert b.cohort_source == "memory" and b.definition in panel.definition.text()
    w.close()


@pytest.mark.timeout(240)
def test_dropping_a_cohort_folder_answers_it_with_a_note(copy, qtbot, make_window):
    from test_gui_support import drop_paths, wait_until

    from training.store.workspace import Workspace

    root, ck, ws = copy
    w, panel = _window(make_window, ws, ck)
    w.tabs.setCurrentWidget(panel)
    drop_paths(w, [root / "cohort" / "patient_001"])  # PAT-0002, already training data
    wait_until(qtbot, lambda: w.job is None, timeout_s=120, what="the ingest")
    wait_until(qtbot, lambda: panel.answer is not None, timeout_s=120, what="the answer")
    panel.wait_idle()
    qtbot.wait(20)
    a = panel.answer
    assert a.query == "PAT-0002" and a.query_in_cohort and a.n_cohort == 4 and "PAT-0002" not in a.ranking.names
    assert "PAT-0002 is already in the cohort" in panel.message.text()
    assert "ranked against the other 4 patients" in panel.message.text()
    assert panel.queries.count() == 0 and not panel.move_btn.isEnabled()
    with Workspace.open(ws) as wsr:  # still cohort data, not turned into a query
        assert not wsr.patients[wsr.patient_index("PAT-0002")].is_query
    w.close()


@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_arrays_workspace_round_trip_2d_and_3d(tmp_path, mode):
    """A model in memory (no checkpoint): the file answers exactly as encoding does, in 2D
    and in 3D (one cube per entry), with a query entry left out."""
    from training.config import ModelConfig
    from training.explore import query as xq
    from training.store.roles import mark_as_query
    from training.store.workspace import Workspace, write_arrays_workspace
    from training.vae.model import VAE

    rng = np.random.default_rng(2)
    shape = (3, 16, 16) if mode == "2d" else (1, 16, 16, 16)
    ws_path = write_arrays_workspace(tmp_path / "a.h5", {f"PAT-{i:04d}": rng.random(shape, dtype=np.float32)
                                                         for i in range(1, 5)}, test_fraction=0.0)
    mark_as_query(ws_path, ["PAT-0002"])
    torch.manual_seed(0)
    model = VAE(ModelConfig(input_size=16, n_blocks=2, filters=2, fc_units=8, latent_dim=3,
                            spatial_dims=2 if mode == "2d" else 3)).eval()
    store = tmp_path / "enc"
    xq.clear_cache()
    with Workspace.open(ws_path) as ws:
        a = xq.answer_query(model, ws, "PAT-0002", top=2, store=store)
        xq.clear_cache()
        b = xq.answer_query(model, ws, "PAT-0002", top=2, store=store)
    xq.clear_cache()
    assert (a.cohort_source, b.cohort_source) == ("encoded", "file") and b.n_cohort == 3
    np.testing.assert_array_equal(a.ranking.divergence, b.ranking.divergence)
    np.testing.assert_array_equal(a.pixel_l2, b.pixel_l2)
    assert [m.match_images for m in a.matches] == [m.match_images for m in b.matches]
