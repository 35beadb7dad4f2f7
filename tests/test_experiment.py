"""`ct-vae experiment` on the phantom with fast settings (issue 15): the thesis 7.5
protocol end to end, the other chapter-7 experiments, and the query plan by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.cli import main

torch.set_num_threads(1)

FAST = ["--epochs", "2", "--set", "filters=4", "--set", "n_blocks=2", "--set", "fc_units=16",
        "--set", "latent_dim=3", "--set", "batch_size=4", "--set", "threads=1"]


@pytest.fixture(scope="module")
def phantom_ws(tmp_path_factory):
    from training.config import PreprocessConfig
    from training.dicom.phantom import generate_cohort
    from training.store.ingest import ingest

    tmp = tmp_path_factory.mktemp("exp")
    generate_cohort(tmp / "dicom", 4, slices=10, size=32, seed=1, slice_thickness=2.5, fsync=False)
    pre = PreprocessConfig.preset("thorax", crop=None, size=16, rois=("Body",) if False else ())
    ingest([tmp / "dicom"], tmp / "w.h5", pre, workers=1, test_fraction=0.25)
    return tmp, tmp / "w.h5"


def test_list_names_every_experiment(capsys):
    assert main(["experiment", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("identify", "recon", "manifold", "samples"):
        assert name in out


def test_identify_experiment_on_the_phantom(phantom_ws, capsys):
    tmp, ws = phantom_ws
    out = tmp / "report"
    assert main(["experiment", "identify", str(ws), "--out", str(out), "--distances-mm", "2.5,5,7.5",
                 *FAST]) == 0
    text = capsys.readouterr().out
    assert "pixel_l2" in text and "kl_directed" in text
    report = json.loads((out / "report.json").read_text())
    assert report["trained_here"] and report["training"]["epochs"] == 2
    assert report["data_hash"] and report["training_subset_hash"]
    assert [r["distance_mm"] for r in report["results"]] == [2.5, 5.0, 7.5]
    # 2.5 mm slices: 1, 2, 3 slices away; every entry has them
    assert [r["actual_mm_mean"] for r in report["results"]] == [2.5, 5.0, 7.5]
    assert all(r["n"] == 4 for r in report["results"])
    assert set(report["results"][0]["methods"]) == {"kl_directed", "kl_symmetric", "euclidean_mu",
                                                     "pixel_l2", "recon_l2"}
    csv_lines = (out / "identify.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 3 * 5  # a plain header row, no '#' line: report.json has the protocol
    header = csv_lines[0].split(",")
    assert header[0] == "distance_mm"
    assert "unit" in header and all(line.split(",")[header.index("unit")] == "series" for line in csv_lines[1:])
    assert report["protocol"].startswith("thesis 7.5") and report["settings"]["level"]
    assert report["protocol"] in (out / "README.md").read_text()
    svg = (out / "identify.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == 5
    # the model saw only slice a of each entry (the middle one)
    from training.store.workspace import Workspace

    with Workspace.open(out / "train_slices.h5") as tws:
        assert len(tws.index("train")) == 4 and len(tws.index("test")) == 0
    assert all(e["slice_a"] == 4 for e in report["entries"])  # (10 - 1) // 2


def test_query_plan_by_hand(phantom_ws):
    from training.explore.experiments import plan_queries
    from training.store.workspace import Workspace

    _, ws = phantom_ws
    with Workspace.open(ws) as w:
        plan = plan_queries(w, 8, (2.5, 6.0, 100.0))
        assert plan.ref_rows[:, 1].tolist() == [8] * 4
        sel, rows, actual = plan.queries[2.5]
        assert rows[:, 1].tolist() == [9] * 4 and actual.tolist() == [2.5] * 4
        sel, rows, actual = plan.queries[6.0]  # round(6 / 2.5) = 2 slices; 8 + 2 is past the end
        assert rows[:, 1].tolist() == [6] * 4 and actual.tolist() == [5.0] * 4
        assert len(plan.queries[100.0][0]) == 0  # no slice that far: left out, not guessed
        with pytest.raises(ValueError, match="unknown entries"):
            plan_queries(w, None, (2.5,), entries=("PAT-9999",))


def test_query_plan_on_a_workspace_resampled_along_z(phantom_ws):
    """2.5 mm slices resampled onto a 1 mm grid: 6 mm is 6 images, not round(6 / 2.5) = 2."""
    from training.config import PreprocessConfig
    from training.explore.experiments import image_z, plan_queries
    from training.store.ingest import ingest
    from training.store.workspace import Workspace

    tmp, _ = phantom_ws
    pre = PreprocessConfig.preset("thorax", crop=None, size=16, rois=(), z_spacing=1.0)
    ws = tmp / "w_z1.h5"
    ingest([tmp / "dicom"], ws, pre, workers=1, test_fraction=0.25)
    with Workspace.open(ws) as w:
        i = int(np.asarray(w.index(None)).reshape(-1, 2)[0, 0])
        z = image_z(w, i)
        n = w.patients[i].n_images
        assert n == len(z) and n > 10  # 10 slices 2.5 mm apart → 23 images 1 mm apart
        assert np.allclose(np.diff(z), 1.0)
        plan = plan_queries(w, 5, (6.0, 2.5))
        assert plan.spacing.tolist() == pytest.approx([1.0] * len(plan.entries))
        sel, rows, actual = plan.queries[6.0]
        assert rows[:, 1].tolist() == [11] * len(sel) and actual == pytest.approx([6.0] * len(sel))
        sel, rows, actual = plan.queries[2.5]  # the nearest image: 2 or 3 mm away
        assert set(rows[:, 1].tolist()) <= {7, 8} and np.all(np.abs(actual - 2.5) <= 0.5 + 1e-9)


def test_query_slice_on_uneven_positions():
    from training.explore.experiments import query_slice

    z = np.array([0.0, 2.0, 4.0, 9.0, 11.0, 13.0])  # a gap of 5 mm
    assert query_slice(z, 1, 7.0) == 3  # 9 − 2 = 7 mm
    assert query_slice(z, 1, 0.5) == 2  # closer than one slice: the next image
    assert query_slice(z, 4, 9.0) == 1  # past the end after a: before a, 11 − 2 = 9 mm
    assert query_slice(z, 4, 7.0) == 2  # 11 − 4 = 7 mm
    assert query_slice(z, 2, 30.0) is None  # no slice that far on either side


@pytest.mark.parametrize("name,files", [("recon", "recon_epoch_00002.png"), ("manifold", "manifold.png"),
                                        ("samples", "samples.png")])
def test_other_experiments(phantom_ws, name, files):
    tmp, ws = phantom_ws
    out = tmp / name
    args = ["experiment", name, str(ws), "--out", str(out), "--n", "3", *FAST]
    if name == "recon":
        args += ["--set", "recon_every=1"]
    assert main(args) == 0
    assert (out / files).exists()
    report = json.loads((out / "report.json").read_text())
    assert report["experiment"] == name and report["data_hash"]
    if name == "recon":
        rows = (out / "recon_metrics.csv").read_text().splitlines()
        assert rows[0].startswith("epoch,split") and len(rows) == 1 + 2 * 2
    if name == "manifold":
        from training.vae.checkpoint import load_checkpoint

        assert load_checkpoint(out / "model" / "last.pt").model_config.latent_dim == 3  # --set wins over 2


def test_bad_requests_are_one_line(phantom_ws, capsys):
    tmp, ws = phantom_ws
    assert main(["experiment", "nope", str(ws), "--out", str(tmp / "x")]) == 1
    assert "unknown experiment" in capsys.readouterr().err
    assert main(["experiment", "identify", str(ws), "--out", str(tmp / "x"), "--set", "bogus=1"]) == 1
    assert "unknown setting" in capsys.readouterr().err
    assert main(["experiment", "identify", str(ws), "--out", str(tmp / "x"), "--preset", "thesis",
                 "--epochs", "1"]) == 1
    assert "input size 128" in capsys.readouterr().err
