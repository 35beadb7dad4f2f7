"""Every CSV the project writes starts with its plain header row: no leading '#' comment
line (spreadsheets and naive readers trip on it). What such a line used to say is in the
header cell (KL matrices: the direction) or in a sidecar beside the CSV (ranking.json,
roi_volumes.json, encoded_series.json, encoded_patients.json, identify.json, report.json).

Small end-to-end runs of every command that writes CSV, then each CSV read back with
Python's csv module."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from test_experiment import FAST, phantom_ws  # noqa: F401 (fixture)
from test_latent_cli import files  # noqa: F401 (fixture)
from training.cli import main

torch.set_num_threads(1)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_csvs(root: Path) -> dict[str, list[str]]:
    """{relative path: header} of every CSV under root, each checked: the first row is a
    header (named cells, the first not a '#' comment, not a number), no row anywhere is a
    comment, and every row has the header's width."""
    out = {}
    for path in sorted(Path(root).rglob("*.csv")):
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        name = str(path.relative_to(root))
        assert rows, name
        header = rows[0]
        assert header and header[0] and not header[0].lstrip().startswith("#"), (name, header)
        assert all(h and not _is_number(h) for h in header[:3]), (name, header)
        assert not any(r and r[0].lstrip().startswith("#") for r in rows), name
        assert all(len(r) == len(header) for r in rows), name
        out[name] = header
    return out


def test_latent_commands_write_plain_csv(files, tmp_path):  # noqa: F811
    _, ck, ws = files
    assert main(["encode", ck, ws, "--out", str(tmp_path / "enc"), "--threads", "1"]) == 0
    assert main(["similarity", ck, ws, "--out", str(tmp_path / "sim" / "kl.csv")]) == 0
    assert main(["similarity", ck, ws, "--out", str(tmp_path / "sim" / "skl.csv"), "--symmetric",
                 "--level", "image"]) == 0
    assert main(["identify", ck, ws, "--slice-a", "0", "--slice-b", "2", "--out", str(tmp_path / "id")]) == 0
    headers = check_csvs(tmp_path)
    assert set(headers) == {"enc/encoded_images.csv", "enc/encoded_series.csv", "enc/encoded_patients.csv",
                            "sim/kl.csv", "sim/skl.csv", "id/identify.csv", "id/identify_kl.csv"}
    assert headers["enc/encoded_series.csv"][:3] == ["series", "patient", "n_images"]
    assert headers["enc/encoded_patients.csv"][:3] == ["patient", "n_series", "n_images"]
    assert headers["id/identify.csv"][:2] == ["series", "patient"]
    # the former comment lines: direction in the KL header cell, the rest in sidecars
    assert "KL(q_i || q_j)" in headers["sim/kl.csv"][0]
    assert "KL(q_b,i || q_a,j)" in headers["id/identify_kl.csv"][0]
    assert "KL(q_b,i || q_a,j)" in json.loads((tmp_path / "id" / "identify.json").read_text())["direction"]
    for name in ("encoded_series", "encoded_patients"):
        side = json.loads((tmp_path / "enc" / f"{name}.json").read_text())
        assert side["file"] == f"{name}.csv" and side["aggregate"] == "mixture"
        assert "slice posteriors" in side["posterior"]


def test_experiment_and_query_write_plain_csv(phantom_ws, tmp_path):  # noqa: F811
    from training.dicom.phantom import write_rescan

    root, ws = phantom_ws
    rep = tmp_path / "identify"
    assert main(["experiment", "identify", str(ws), "--out", str(rep), "--distances-mm", "2.5", *FAST]) == 0
    ck = rep / "model" / "last.pt"
    assert main(["experiment", "recon", str(ws), "--out", str(tmp_path / "recon"), "--checkpoint", str(ck)]) == 0
    write_rescan(tmp_path / "new", 1, slices=10, size=32, seed=1, slice_thickness=2.5, fsync=False)
    # --no-store: the module's workspace stays as the other tests expect it
    assert main(["query", str(ck), str(ws), str(tmp_path / "new"), "--top", "2", "--out", str(tmp_path / "query"),
                 "--no-store", "--no-cache", "--workers", "1"]) == 0
    headers = check_csvs(tmp_path)
    assert set(headers) == {"identify/identify.csv", "recon/recon_metrics.csv", "query/ranking.csv",
                            "query/roi_volumes.csv"}, sorted(headers)
    assert headers["identify/identify.csv"][0] == "distance_mm"
    assert headers["query/ranking.csv"][:2] == ["rank", "entry"]
    assert headers["query/roi_volumes.csv"][0] == "rank"
    report = json.loads((rep / "report.json").read_text())
    assert report["protocol"] and report["settings"]["level"] == "patient" and report["data_hash"]
    ranking = json.loads((tmp_path / "query" / "ranking.json").read_text())
    assert ranking["query"] == "QUERY" and "KL(q_query || q_j)" in ranking["divergence"]
    assert "ROI volume" in json.loads((tmp_path / "query" / "roi_volumes.json").read_text())["volume"]
