"""The fidelity report through ingest: stored with the entry, printed by `ct-vae info`
(and `--json`), and the ROI frame-of-reference fallback on a real ingest."""

from __future__ import annotations

import json

import numpy as np

from training.cli import main
from training.config import PreprocessConfig
from training.dicom.fidelity import NOT_RECORDED, format_report
from training.store.ingest import ingest
from training.store.workspace import Workspace, write_arrays_workspace

from dicom_factory import ramp_volume, write_ct_series
from test_contour_rule import OTHER_FOR, write_set

FOR_UID = "1.2.826.0.1.3680043.8.498.3"  # dicom_factory's default Frame of Reference


def lps_circle(spec, k, ci, cj, r, n=120):
    t = (np.arange(n) + 0.5) * 2 * np.pi / n
    i, j = ci + r * np.sin(t), cj + r * np.cos(t)
    dy, dx = spec.pixel_spacing
    return spec.ipp[k] + np.outer(j * dx, spec.row_dir) + np.outer(i * dy, spec.col_dir)


def make_drop(root):
    """A 4-slice CT with a structure set: 'Lung' doubled on every slice (an even count
    erased it under even–odd parity), 'GTV' naming a frame the file does not list."""
    spec = write_ct_series(root / "ct", ramp_volume(4, 24, 24), pixel_spacing=(1.0, 1.0))
    lung = [("CLOSED_PLANAR", lps_circle(spec, k, 12, 12, 9), spec.sop_uids[k])
            for k in range(4) for _ in range(2)]
    gtv = [("CLOSED_PLANAR", lps_circle(spec, 1, 12, 12, 3), spec.sop_uids[1])]
    write_set(root / "rs.dcm", [(1, "Lung", FOR_UID, lung), (2, "GTV", OTHER_FOR, gtv)],
              for_uid=FOR_UID, series_uid=spec.series_uid)
    return spec


def test_ingest_stores_the_report_and_info_shows_it(tmp_path, capsys):
    make_drop(tmp_path / "drop")
    ws_path = tmp_path / "w.h5"
    ingest([tmp_path / "drop"], ws_path, PreprocessConfig(crop=None, rois=("Lung", "GTV")),
           workers=1)
    with Workspace.open(ws_path) as ws:
        p = ws.patients[0]
        assert set(p.rois) == {"Lung", "GTV"}
        _, masks, _ = ws.read_source(0)
        assert masks["Lung"].sum(axis=(1, 2)).min() > 200  # no slice erased
        assert masks["GTV"][1].sum() > 20  # the fallback kept it
        rep = ws.fidelity(0)
    rois = {r["roi"]: r for r in rep["rois"]}
    assert rois["Lung"]["duplicates"] == 4 and rois["Lung"]["contours"] == 8
    assert rois["GTV"]["frame"] == "structure set's (fallback)"
    assert rois["Lung"]["structure_set"] == "rs.dcm"  # relative to the drop, no absolute path
    assert 0 <= rois["Lung"]["area_max_diff"] < 0.05  # a 254-pixel disc: quantisation
    assert "duplicates" in rep["rule"]
    assert any("GTV" in w and "rasterised" in w for w in p.warnings)

    assert main(["info", str(ws_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["series"][0]["fidelity"] == rep
    assert main(["info", str(ws_path)]) == 0
    out = capsys.readouterr().out
    assert "fidelity (rule: duplicates" in out
    assert "Lung [rs.dcm]: 8 contours, 4 duplicates collapsed, 0 holes" in out
    assert "frame: structure set's (fallback)" in out


def test_old_workspace_says_not_recorded(tmp_path, capsys):
    ws_path = write_arrays_workspace(tmp_path / "old.h5", {"PAT-0001": np.zeros((1, 8, 8), np.float32)})
    assert main(["info", str(ws_path)]) == 0
    assert NOT_RECORDED in capsys.readouterr().out
    assert main(["info", str(ws_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["series"][0]["fidelity"] is None


def test_ct_without_structure_set_and_failed_set():
    assert format_report({"rois": [], "failed": []}) == ["  fidelity: no RT structure set"]
    lines = format_report({"rule": "r", "rois": [], "failed": [{"structure_set": "rs.dcm",
                                                               "reason": "bad"}]})
    assert lines[-1] == "    rs.dcm: not used (bad)"
