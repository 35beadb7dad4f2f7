"""explorer.figures (PNG/SVG/PDF/CSV export at true pixel scale, clipboard, remembered
folder) and explorer.widgets.latest_worker (latest-wins background work)."""

from __future__ import annotations

import base64
import csv
import io
import threading
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from tests.test_gui_support import data_dir  # noqa: F401  (fixture)

pytest.importorskip("pytestqt")


def _image_view(qtbot, data: np.ndarray, size=(200, 150)):
    from explorer.qt import pg

    w = pg.GraphicsLayoutWidget()
    qtbot.addWidget(w)
    w.resize(*size)
    plot = w.addPlot(title="test figure")
    plot.invertY(True)
    item = pg.ImageItem(data, levels=(0, 1))
    plot.addItem(item)
    plot.setLabel("left", "z₁")
    plot.setLabel("bottom", "z₀")
    w.show()
    qtbot.waitExposed(w)
    plot.autoRange(padding=0)
    qtbot.wait(10)
    return w, item


def test_png_true_pixel_scale(qtbot, tmp_path):
    from explorer import figures
    from explorer.qt import QtGui

    data = np.random.default_rng(0).random((300, 400)).astype(np.float32)
    view, _ = _image_view(qtbot, data)
    scale = figures.true_pixel_scale(view)
    assert scale >= 2  # 400 data px in a ~200 px wide view need at least 2×
    out = figures.export_png(view, tmp_path / "f.png")
    img = QtGui.QImage(str(out))
    vp = view.viewport().size()
    assert (img.width(), img.height()) == (vp.width() * scale, vp.height() * scale)
    assert img.devicePixelRatio() == 1.0
    # every data pixel has at least one output pixel: the image's on-screen rect × scale
    item = figures.image_items(view)[0]
    rect = view.mapFromScene(item.mapRectToScene(item.boundingRect())).boundingRect()
    assert rect.width() * scale >= data.shape[1] - 1
    # an explicit scale is honoured exactly
    out1 = figures.export_png(view, tmp_path / "f1.png", scale=1)
    img1 = QtGui.QImage(str(out1))
    assert (img1.width(), img1.height()) == (vp.width(), vp.height())


def test_svg_embeds_full_resolution_image(qtbot, tmp_path):
    from explorer import figures
    from explorer.qt import QtGui

    from explorer.qt import pg

    data = np.linspace(0, 1, 37 * 23, dtype=np.float32).reshape(37, 23)
    view, _ = _image_view(qtbot, data)
    plot = view.getItem(0, 0)
    plot.addItem(pg.PlotCurveItem([0, 10, 20], [0, 30, 5], pen=pg.mkPen((200, 0, 0), width=2)))
    qtbot.wait(10)
    out = figures.export_svg(view, tmp_path / "f.svg", title="t")
    root = ET.parse(out).getroot()
    images = [e for e in root.iter() if e.tag.endswith("image")]
    assert images, "no <image> in the SVG"
    sizes = []
    for e in images:
        href = e.get("{http://www.w3.org/1999/xlink}href") or e.get("href")
        assert href.startswith("data:image/")
        raw = base64.b64decode(href.split(",", 1)[1])
        q = QtGui.QImage.fromData(raw)
        sizes.append((q.width(), q.height()))
        assert e.get("image-rendering") == "pixelated"
    assert (23, 37) in sizes  # the data's own resolution (width, height)
    # text stays text (axis labels)
    assert any(e.tag.endswith("text") for e in root.iter())
    # the 2 px cosmetic pen stays 2 px in renderers without vector-effect: width × scale
    import re

    assert "non-scaling-stroke" not in out.read_text()
    red = [g for g in root.iter() if g.tag.endswith("g") and g.get("stroke") == "#c80000"]
    assert red
    for g in red:
        a, b, c, d = (float(v) for v in re.search(r"matrix\(([^)]*)\)", g.get("transform")).group(1).split(",")[:4])
        assert float(g.get("stroke-width")) * abs(a * d - b * c) ** 0.5 == pytest.approx(2.0, rel=1e-3)


def test_svg_pictures_encoded_off_the_gui_thread_are_each_items_own(qtbot, tmp_path):
    """SVG export draws on the GUI thread with placeholder pictures and encodes the real
    ones in the job: each <image> must carry its own ImageItem's full picture, pixel for
    pixel, and the job's file must equal the synchronous export."""
    from explorer import figures
    from explorer.qt import QtGui, pg

    rng = np.random.default_rng(5)
    a = rng.random((37, 23)).astype(np.float32)
    view, item_a = _image_view(qtbot, a)
    item_b = pg.ImageItem(rng.random((11, 19)).astype(np.float32), levels=(0, 1))
    item_b.setPos(30, 0)
    view.getItem(0, 0).addItem(item_b)
    view.getItem(0, 0).autoRange(padding=0)
    qtbot.wait(10)
    text, pictures = figures.svg_parts(view, "t")
    assert len(pictures) == 2 and len(text) < 40_000  # no full pictures drawn on the GUI thread
    want = {(q.width(), q.height()): q for q in (item_a.qimage, item_b.qimage)}
    sync = figures.export_svg(view, tmp_path / "sync.svg", title="t")
    figures.start_export(view, tmp_path / "job.svg", title="t")
    qtbot.waitUntil((tmp_path / "job.svg").exists, timeout=10000)  # written atomically
    assert (tmp_path / "job.svg").read_bytes() == sync.read_bytes()
    found = {}
    for e in ET.parse(sync).getroot().iter():
        if e.tag.endswith("image"):
            href = e.get("{http://www.w3.org/1999/xlink}href") or e.get("href")
            q = QtGui.QImage.fromData(base64.b64decode(href.split(",", 1)[1]))
            found[(q.width(), q.height())] = q
    assert set(found) == {(23, 37), (19, 11)}
    for size, q in found.items():
        ref = want[size].convertToFormat(QtGui.QImage.Format.Format_ARGB32)
        got = q.convertToFormat(QtGui.QImage.Format.Format_ARGB32)
        assert all(got.pixel(x, y) == ref.pixel(x, y) for x in range(size[0]) for y in range(size[1]))
    # the items keep their own pictures after the export
    assert (item_a.qimage.width(), item_b.qimage.width()) == (23, 19)


def test_svg_cosmetic_pen_keeps_its_width_under_unequal_axis_scales(qtbot, tmp_path):
    """A loss plot: x spans 40 epochs, y a few decades, so the data→screen scales differ
    ~10×. Renderers that ignore vector-effect (QSvgRenderer, ImageMagick) drew a 2 px line
    ~5 px thick one way and <1 px the other; the coordinates are transformed instead."""
    import re

    from explorer import figures
    from explorer.qt import pg

    w = pg.PlotWidget()
    qtbot.addWidget(w)
    w.resize(320, 200)
    x = np.arange(1, 41, dtype=float)
    w.plot(x, 4 - np.log10(x), pen=pg.mkPen((0, 120, 200), width=2))
    w.show()
    qtbot.waitExposed(w)
    qtbot.wait(10)
    text = figures.svg_bytes(w).decode()
    groups = [g for g in re.findall(r"<g\b([^>]*)>(.*?)</g>", text, re.S) if 'stroke="#0078c8"' in g[0]]
    assert groups
    for head, body in groups:
        assert 'transform="matrix(1,0,0,1,0,0)"' in head and 'stroke-width="2"' in head
        assert "non-scaling-stroke" not in body
        pts = [tuple(map(float, p.split(","))) for p in re.findall(r"-?[\d.eE+-]+,-?[\d.eE+-]+", body)]
        assert len(pts) >= 40
        xs, ys = zip(*pts)
        assert 0 <= min(xs) < max(xs) <= 320 and 0 <= min(ys) < max(ys) <= 200  # screen units now
        assert all(a <= b for a, b in zip(xs, xs[1:]))  # the curve's order kept (segments share ends)


def test_svg_clips_what_a_plot_draws_outside_its_axes(qtbot, tmp_path):
    """QSvgGenerator writes no clipping: an ellipse reaching past the axes (the manifold's
    1σ ellipses) showed outside the plot. The view box's contents are wrapped in a clip
    path of its rectangle; the marker items that find them leave no trace."""
    import re

    from explorer import figures
    from explorer.qt import pg

    w = pg.PlotWidget()
    qtbot.addWidget(w)
    w.resize(300, 220)
    t = np.linspace(0, 2 * np.pi, 100)
    w.plot(5 * np.cos(t), 5 * np.sin(t), pen=pg.mkPen((200, 0, 0), width=1))  # radius 5 …
    w.setRange(xRange=(-2, 2), yRange=(-2, 2), padding=0)  # … seen through a 4 × 4 window
    w.show()
    qtbot.waitExposed(w)
    qtbot.wait(10)
    n_items = len(w.getViewBox().addedItems)
    text = figures.svg_bytes(w).decode()
    assert "#fe01" not in text and len(w.getViewBox().addedItems) == n_items  # markers gone
    (clip,) = re.findall(r'<clipPath id="([^"]+)"><rect x="(\d+)" y="(\d+)" width="(\d+)" height="(\d+)"/>', text)
    vb = w.getViewBox()
    rect = w.mapFromScene(vb.sceneBoundingRect()).boundingRect()
    assert tuple(int(v) for v in clip[1:]) == (rect.x(), rect.y(), rect.width(), rect.height())
    start = text.index(f'<g clip-path="url(#{clip[0]})">')
    depth, end = 0, None
    for m in re.finditer(r"<g\b|</g>", text[start:]):
        depth += 1 if m.group(0) != "</g>" else -1
        if depth == 0:
            end = start + m.end()
            break
    assert 'stroke="#c80000"' in text[start:end]  # the curve is inside the clipped group
    assert 'version="1.1"' in text and 'baseProfile="tiny"' not in text
    ET.fromstring(text.encode())  # still well-formed


def test_pdf_and_csv(qtbot, tmp_path):
    from explorer import figures

    data = np.random.default_rng(1).random((16, 16)).astype(np.float32)
    view, _ = _image_view(qtbot, data)
    pdf = figures.export_pdf(view, tmp_path / "f.pdf")
    raw = pdf.read_bytes()
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(pdf.stat().st_mode) == 0o666 & ~mask  # not the temp file's 0600
    assert raw.startswith(b"%PDF") and b"%%EOF" in raw[-64:]
    assert b"/Width 16" in raw and b"/Height 16" in raw  # the image at its own resolution
    assert b"/Interpolate true" not in raw  # viewers must not smooth CT pixels
    # the page is the view's logical size at 96 dpi (1 px = 0.75 pt): laid out at 72 dpi
    # (1 px = 1 pt), pyqtgraph's axes were drawn shifted and scaled against the data
    import re

    size = figures._logical_size(figures._view(view))
    box = [float(v) for v in re.search(rb"/MediaBox \[([^\]]*)\]", raw).group(1).split()]
    assert box[2] - box[0] == pytest.approx(size.width() * 0.75, abs=0.51)  # whole points in the file
    assert box[3] - box[1] == pytest.approx(size.height() * 0.75, abs=0.51)

    # the three table forms
    figures.export_csv({"x": [1.5, 2.0], "n": np.array([3, 4])}, tmp_path / "a.csv")
    rows = list(csv.reader(open(tmp_path / "a.csv")))
    assert rows == [["x", "n"], ["1.5", "3"], ["2.0", "4"]]
    figures.export_csv(data, tmp_path / "b.csv")
    back = np.loadtxt(tmp_path / "b.csv", delimiter=",", dtype=np.float32)
    np.testing.assert_array_equal(back, data)  # shortest round-trip text
    figures.export_csv((["a", "b"], [[1, "x"]]), tmp_path / "c.csv")
    assert open(tmp_path / "c.csv").read() == "a,b\n1,x\n"
    with pytest.raises(ValueError):
        figures.export_csv({"x": [1], "y": [1, 2]}, tmp_path / "d.csv")


def test_export_button_and_clipboard(qtbot, tmp_path, data_dir, monkeypatch):
    from explorer import figures
    from explorer.qt import QtWidgets
    from explorer.settings import AppSettings

    data = np.random.default_rng(2).random((8, 8)).astype(np.float32)
    view, _ = _image_view(qtbot, data)
    settings = AppSettings()
    btn = figures.ExportButton(view, "my figure", table=lambda: data, settings=settings)
    qtbot.addWidget(btn)
    written = []
    btn.exported.connect(written.append)
    for fmt in figures.FORMATS:
        p = btn.export(fmt, tmp_path / f"x.{fmt}")
        assert p.exists() and p.stat().st_size > 0
    assert len(written) == 4
    img = btn.copy()
    assert QtWidgets.QApplication.clipboard().image().size() == img.size()

    # the dialog starts in the remembered folder and remembers the new one
    sub = tmp_path / "sub"
    sub.mkdir()
    seen = {}

    def fake_dialog(parent, title, start, filt):
        seen["start"] = start
        return str(sub / "chosen"), filt

    monkeypatch.setattr(QtWidgets.QFileDialog, "getSaveFileName", staticmethod(fake_dialog))
    out = btn.export_with_dialog("png")
    assert out == sub / "chosen.png" and out.exists()
    assert figures.last_folder(settings) == sub
    btn.export_with_dialog("csv")
    assert seen["start"].startswith(str(sub))
    # failures are one message, no exception
    failed = []
    btn.failed.connect(failed.append)
    monkeypatch.setattr(QtWidgets.QFileDialog, "getSaveFileName",
                        staticmethod(lambda *a: (str(tmp_path / "nodir" / "x" / "y.bin"), "")))
    (tmp_path / "nodir").write_text("a file, not a folder")
    assert btn.export_with_dialog("pdf") is None and failed


def test_latest_worker_replaces_queued_and_drops_stale(qtbot):
    from explorer.widgets.latest_worker import LatestWorker

    worker = LatestWorker()
    results, failures = [], []
    worker.resultReady.connect(lambda rid, r: results.append((rid, r)))
    worker.failed.connect(lambda rid, m: failures.append((rid, m)))
    gate = threading.Event()
    started = []

    def slow(x):
        started.append(x)
        gate.wait(5)
        return x

    first = worker.submit(slow, 1)
    deadline = time.monotonic() + 5
    while not started and time.monotonic() < deadline:
        time.sleep(0.005)
    ids = [worker.submit(slow, x) for x in (2, 3, 4)]  # 2 and 3 are replaced while 1 runs
    gate.set()
    assert worker.wait_idle(5000)
    qtbot.waitUntil(lambda: bool(results), timeout=5000)
    qtbot.wait(20)
    assert started == [1, 4]  # never queued up behind itself
    assert results == [(ids[-1], 4)]  # 1 was superseded: its result dropped
    assert worker.dropped == 1 and first not in [r[0] for r in results]

    def boom():
        raise ValueError("bad input in file x")

    rid = worker.submit(boom)
    qtbot.waitUntil(lambda: bool(failures), timeout=5000)
    assert failures[0][0] == rid and "bad input" in failures[0][1]

    # cancel drops the running one's result
    gate.clear()
    worker.submit(slow, 9)
    worker.cancel()
    gate.set()
    assert worker.wait_idle(5000)
    qtbot.wait(30)
    assert all(r[1] != 9 for r in results)
    assert not worker.is_busy()
    worker.shutdown()
    assert worker.submit(slow, 1) == -1


_HIDPI_SCRIPT = r"""
import sys
import numpy as np
from explorer.qt import QtGui, pg
from explorer import figures
app = pg.mkQApp()
w = pg.GraphicsLayoutWidget()
w.resize(200, 150)
plot = w.addPlot()
plot.invertY(True)
data = np.zeros((40, 60), np.float32)
data[:, 30:] = 1.0
item = pg.ImageItem(data, levels=(0, 1))
plot.addItem(item)
w.show()
app.processEvents()
plot.autoRange(padding=0)
app.processEvents()
out = figures.export_png(w, sys.argv[1])
img = QtGui.QImage(str(out))
vp = w.viewport().size()
s = figures.true_pixel_scale(w)
r = w.mapFromScene(item.mapRectToScene(item.boundingRect())).boundingRect()
cy = (r.top() + r.height() // 2) * s
left = QtGui.QColor(img.pixel((r.left() + r.width() // 4) * s, cy)).value()
right = QtGui.QColor(img.pixel((r.left() + 3 * r.width() // 4) * s, cy)).value()
print(left, right, w.devicePixelRatioF(), vp.width(), vp.height(), s, img.width(), img.height())
"""


def test_png_not_halved_on_hidpi(tmp_path):
    """Under a 2× screen scale the PNG is still logical size × true-pixel scale (no halving
    and no doubling by the device pixel ratio)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "QT_SCALE_FACTOR": "2"}
    res = subprocess.run([sys.executable, "-c", _HIDPI_SCRIPT, str(tmp_path / "h.png")], env=env,
                         capture_output=True, text=True, timeout=120, cwd=os.getcwd())
    assert res.returncode == 0, res.stderr
    left, right, dpr, w, h, scale, iw, ih = res.stdout.split()[-8:]
    assert float(dpr) == 2.0
    assert int(left) < 30 and int(right) > 225  # the image fills its place, black | white
    assert (int(iw), int(ih)) == (int(w) * int(scale), int(h) * int(scale))
