"""`ct-vae ingest / info / export` from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.cli import main
from training.dicom.phantom import generate_cohort
from training.store.workspace import Workspace



@pytest.fixture
def drop(tmp_path):
    generate_cohort(tmp_path / "drop", 2, slices=4, size=32, seed=0, fsync=False)
    (tmp_path / "drop" / "junk.txt").write_text("not dicom")
    return tmp_path / "drop"


def test_ingest_info_export(drop, tmp_path, capsys):
    ws = tmp_path / "w.h5"
    rc = main(["ingest", str(drop), "--workspace", str(ws), "--crop", "16", "--window", "lung",
               "--rois", "Lung-Left,Lung-Right", "--workers", "1", "--json"])
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    events = {x["event"] for x in lines}
    assert events == {"progress", "patient", "report"}
    report = lines[-1]
    assert report["added"] == ["PAT-0001", "PAT-0002"]
    assert [s[0] for s in report["skipped"]] == ["junk.txt"]

    # unset options keep the workspace's settings; a second run changes nothing
    assert main(["ingest", str(drop), "-w", str(ws), "--workers", "1"]) == 0
    out = capsys.readouterr()
    assert "0 series added, 2 unchanged, 0 re-derived" in out.out and "junk.txt" in out.out
    with Workspace.open(ws) as w:
        assert w.preprocess.window_name == "lung" and w.preprocess.crop == 16
        assert w.roi_names == ("Lung-Left", "Lung-Right")

    assert main(["info", str(ws), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [p["pseudonym"] for p in info["series"]] == ["PAT-0001", "PAT-0002"]
    assert [p["patient"] for p in info["patients"]] == ["PAT-0001", "PAT-0002"]
    assert info["n_series"] == info["n_patients"] == 2
    assert info["series"][0]["source_slices"] == 4 and info["image_shape"] == [16, 16]
    assert info["skipped"] == [{"path": "junk.txt", "reason": info["skipped"][0]["reason"]}]
    assert main(["info", str(ws)]) == 0
    text = capsys.readouterr().out
    assert "PAT-0002" in text and "junk.txt" in text and "Lung-Left" in text

    out_dir = tmp_path / "export"
    assert main(["export", str(ws), "--patient", "PAT-0002", "--out", str(out_dir), "--source"]) == 0
    images = np.load(out_dir / "PAT-0002_images.npy")
    labels = np.load(out_dir / "PAT-0002_labels.npy")
    with Workspace.open(ws) as w:
        ref_i, ref_l = w.read_patient(1)
        hu, _, _ = w.read_source(1)
    np.testing.assert_array_equal(images, ref_i)
    np.testing.assert_array_equal(labels, ref_l)
    with np.load(out_dir / "PAT-0002.npz") as z:
        assert list(z["roi_names"]) == ["Lung-Left", "Lung-Right"]
        np.testing.assert_allclose(z["spacing"], (3.0, 1.5, 1.5))
    with np.load(out_dir / "PAT-0002_source.npz") as z:
        np.testing.assert_array_equal(z["hu"], hu)
    assert main(["export", str(ws), "--patient", "PAT-0009", "--out", str(out_dir)]) == 2
    assert "no patient" in capsys.readouterr().err


def test_bad_arguments(tmp_path, capsys):
    assert main(["ingest", str(tmp_path / "missing"), "-w", str(tmp_path / "w.h5")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path), "-w", str(tmp_path / "w.h5"), "--hu-min", "5"]) == 2
    assert "--hu-max" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "nope.h5")]) == 1
