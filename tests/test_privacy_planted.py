"""Planted markers: distinct identifiers in every identifying header field, in private tags
and free-text fields, and in folder and file names of phantom and real CT series, an
MR-only, an RTSTRUCT-only and a dose-only patient. Ingest, info, train, encode,
similarity, identify, export, generate (DICOM), manifold and a short window session
(drop, load model, every tab, every export format) run on it; then every byte written —
workspace, run folder, CSV/NPZ/PNG/SVG/PDF, DICOM, settings, logs, stdout/stderr — is
searched (ASCII, UTF-16, any case, inside zip/zlib/HDF5 content) for every marker."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from pathlib import Path

import pydicom
import pytest

from planted import plant_drop, search_markers
from test_gui_support import data_dir, make_window, wait_until  # noqa: F401

TRAIN = ["--filters", "2", "--latent-dim", "2", "--n-blocks", "2", "--fc-units", "8", "--threads", "1",
         "--batch-size", "4", "--epochs", "1", "--no-progress", "--device", "cpu"]


def _cli(texts: dict[str, str], name: str, *argv: str) -> int:
    from training.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    texts[f"{name} stdout"] = out.getvalue()
    texts[f"{name} stderr"] = err.getvalue()
    assert rc == 0, (name, err.getvalue()[-2000:])
    return rc


@pytest.mark.slow
def test_no_planted_marker_reaches_any_output(tmp_path, make_window, qtbot, caplog, monkeypatch):
    from explorer.qt import QtWidgets

    caplog.set_level(logging.DEBUG)
    real_root = os.environ.get("CT_VAE_TEST_DATA")
    real = Path(real_root) / "dicom/sts/STS_001/CT" if real_root else None
    if real is not None:
        assert real.is_dir(), f"{real} missing"
    src = tmp_path / "src"
    drop, people = plant_drop(src, real=real)
    markers = [m for p in people for m in p.all_markers()]
    assert len(markers) > 100
    out = tmp_path / "out"
    ws, run = out / "w.h5", out / "run"
    texts: dict[str, str] = {}

    _cli(texts, "ingest", "ingest", str(drop), "-w", str(ws), "--crop", "24", "--rois", "Heart", "--workers", "2")
    # The ROIs named after their patient ("GTV_<family name>") are stored under the
    # pseudonym; train on them too, so their names go through the model, its history,
    # the CSVs and the generated RTSTRUCT (chosen by their stored names, as a user would
    # from `ct-vae info`; the change re-derives the labels from the stored masks).
    _cli(texts, "info first", "info", str(ws), "--json")
    gtvs = sorted(r for r in json.loads(texts["info first stdout"])["available_rois"] if r.startswith("GTV_"))
    assert "GTV_PAT-0001" in gtvs and len(gtvs) >= 2, gtvs  # patients A and B (and E)
    rois = ",".join(["Heart", *gtvs])
    (drop / "late.txt").write_text("x")  # a second drop re-reads known headers for names
    _cli(texts, "ingest json", "ingest", str(drop), "-w", str(ws), "--json", "--workers", "1", "--rois", rois)
    _cli(texts, "info", "info", str(ws))
    _cli(texts, "info json", "info", str(ws), "--json")
    assert "GTV_PAT-0001" in texts["info stdout"]
    assert json.loads(texts["info json stdout"])["roi_names"] == ["Heart", *gtvs]
    _cli(texts, "train", "train", "--workspace", str(ws), *TRAIN, "--out", str(run), "--log-json")
    ck = str(run / "last.pt")
    _cli(texts, "encode", "encode", ck, str(ws), "--out", str(out / "enc"))
    _cli(texts, "similarity", "similarity", ck, str(ws), "--out", str(out / "kl.csv"), "--nearest", "2")
    _cli(texts, "identify", "identify", ck, str(ws), "--slice-a", "0", "--slice-b", "2", "--out", str(out / "ident"))
    _cli(texts, "export", "export", str(ws), "--patient", "all", "--source", "--out", str(out / "exp"))
    _cli(texts, "generate", "generate", ck, "--workspace", str(ws), "--n", "2", "--formats", "png,npy,dicom",
         "--out", str(out / "gen"))
    _cli(texts, "manifold", "manifold", ck, "--n", "3", "--out", str(out / "manifold.png"))
    assert list((out / "gen").rglob("*.dcm"))
    # the identifier-bearing ROIs did reach the outputs searched below (pseudonymous)
    gen_rois = {str(r.ROIName) for p in (out / "gen").rglob("*.dcm")
                for r in pydicom.dcmread(p, stop_before_pixels=True).get("StructureSetROISequence", [])}
    assert set(gtvs) <= gen_rois, gen_rois
    assert all(g in (run / "history.json").read_text() for g in gtvs)
    import torch

    assert torch.load(run / "last.pt", map_location="cpu", weights_only=False)["roi_names"] == ["Heart", *gtvs]

    # the window: a drop into another workspace, then the first one with its model
    w = make_window(out / "gui.h5")
    w.ingest_paths([drop])
    wait_until(qtbot, lambda: w.job is None, 60, "the window's ingest")
    w.open_workspace(ws)
    assert w.load_model(run / "last.pt")
    exports = out / "gui-exports"
    exports.mkdir()
    for i in range(w.tabs.count()):
        w.tabs.setCurrentIndex(i)
        qtbot.wait(50)
        for ext, filt in (("png", "PNG image (*.png)"), ("svg", "SVG vector image (*.svg)"),
                          ("pdf", "PDF document (*.pdf)")):
            target = exports / f"tab{i}.{ext}"
            monkeypatch.setattr(QtWidgets.QFileDialog, "getSaveFileName",
                                lambda *a, t=target, f=filt, **k: (str(t), f))
            w.export_dialog()
        wait_until(qtbot, lambda: not w._save_jobs, 30, "exports")
    texts["status bar"] = w.statusBar().currentMessage()
    texts["window title"] = w.windowTitle()
    w.close()
    texts["log"] = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)

    written = [out, data_dir if isinstance(data_dir, Path) else Path(os.environ["CT_VAE_EXPLORER_DATA_DIR"])]
    hits = search_markers(written, texts, markers)
    assert not hits, "\n".join(hits[:40])
    # the search itself finds what it is looking for
    assert search_markers([drop], {}, markers[:3])
