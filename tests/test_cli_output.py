"""What `ingest` and `info` print cannot be forged by a file name (newlines and terminal
escapes are printed escaped), and `ct-vae info | head` ends quietly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.commands._printable import printable
from training.dicom.phantom import generate_cohort

ROOT = Path(__file__).resolve().parents[1]
EVIL = "bad\nct-vae: FORGED line\x1b[2J\x1b]0;title\x07\r.dcm"


def test_printable_escapes_control_characters_and_bad_bytes():
    assert printable("plain ÄÖ name.dcm") == "plain ÄÖ name.dcm"
    assert printable("a\nb\rc\td\x1b[31m\x07") == "a\\nb\\rc\\td\\x1b[31m\\x07"
    assert printable("x\udcff\u200by") == "x\\xff\\u200by"
    assert "\n" not in printable(EVIL) and "\x1b" not in printable(EVIL)


def _run(*args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "training.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, **kw)


@pytest.mark.slow
def test_escaped_names_in_ingest_and_info_and_quiet_broken_pipe(tmp_path):
    drop = tmp_path / "drop"
    generate_cohort(drop, 1, slices=4, size=32, seed=0, fsync=False)
    (drop / EVIL).write_bytes(b"not dicom")
    junk = drop / ("many\x1bfolder")
    junk.mkdir()
    for i in range(1500):
        (junk / f"junk{i:04d}.txt").write_bytes(b"x")
    ws = tmp_path / "w.h5"
    out = _run("ingest", str(drop), "-w", str(ws), "--crop", "24", "--workers", "1")
    assert out.returncode == 0, out.stderr
    info = _run("info", str(ws))
    assert info.returncode == 0, info.stderr
    for text in (out.stdout, info.stdout):
        assert "\x1b" not in text and "\r" not in text and "\x07" not in text
        assert not any(line.startswith("ct-vae: FORGED") for line in text.splitlines())
        assert "bad\\nct-vae: FORGED line\\x1b[2J" in text
        assert "many\\x1bfolder" in text
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    piped = subprocess.run(f"{sys.executable} -m training.cli info '{ws}' | head -n 1; "
                           "echo \"status ${PIPESTATUS[0]}\"",
                           shell=True, executable="/bin/bash", cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert piped.stderr == ""
    lines = piped.stdout.splitlines()
    assert lines[0].startswith("workspace ") and lines[-1] in ("status 0", "status 141")


EVIL_ROI = "GTV\nct-vae: FORGED roi\x1b[31m\r\x07x"


@pytest.mark.filterwarnings("ignore:Found unknown escape sequence")
def test_roi_names_with_control_characters_are_printed_escaped(tmp_path, capsys):
    """An RTSTRUCT's ROI names (hand-built: a newline, an escape sequence, CR, BEL) appear
    escaped in every line `ct-vae info` prints them: the settings' ROI list, the series'
    ROIs and its per-ROI rasterisation report."""
    import pydicom

    from training.cli import main

    drop = tmp_path / "drop"
    generate_cohort(drop, 1, slices=4, size=32, seed=0, fsync=False)
    rs = next(drop.rglob("rs.dcm"))
    ds = pydicom.dcmread(rs)
    names = [str(r.ROIName) for r in ds.StructureSetROISequence]
    assert "Heart" in names and "Body" in names
    for r in ds.StructureSetROISequence:
        if r.ROIName == "Body":
            r.ROIName = EVIL_ROI
    ds.save_as(rs, enforce_file_format=True)
    assert EVIL_ROI in [str(r.ROIName) for r in pydicom.dcmread(rs).StructureSetROISequence]
    ws = tmp_path / "w.h5"
    assert main(["ingest", str(drop), "-w", str(ws), "--crop", "24", "--workers", "1",
                 "--rois", f"Heart,{EVIL_ROI}"]) == 0
    capsys.readouterr()
    assert main(["info", str(ws)]) == 0
    text = capsys.readouterr().out
    escaped = printable(EVIL_ROI)
    assert escaped == "GTV\\nct-vae: FORGED roi\\x1b[31m\\r\\x07x"
    assert "\x1b" not in text and "\r" not in text and "\x07" not in text
    assert not any(line.startswith("ct-vae: FORGED") for line in text.splitlines())
    lines = [line for line in text.splitlines() if escaped in line]
    assert any(line.startswith("preprocessing: ") for line in lines), text  # the chosen ROIs
    assert any(line.startswith("PAT-0001 ") for line in lines), text  # the series' ROIs
    assert any(line.strip().startswith(escaped + " [") for line in lines), text  # its fidelity report
