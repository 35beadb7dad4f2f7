"""Export of any pyqtgraph plot or image view: PNG, SVG, PDF, CSV and the clipboard.

A "figure" is a pyqtgraph GraphicsView (GraphicsLayoutWidget, PlotWidget, ImageView's
view …): what is exported is what the view shows, drawn again by Qt into the target.

True pixel scale:
- PNG and the clipboard image are rendered at an integer scale of the view's logical
  size (its size in device-independent pixels, never halved or doubled by the screen's
  devicePixelRatio); the default scale is the smallest one at which every ImageItem in
  the view gets at least one output pixel per data pixel, so images are never
  downsampled. Images are scaled by nearest neighbour (no smoothing): pixels stay crisp.
- SVG embeds each image as a PNG of the full data resolution with
  image-rendering="pixelated" (viewers do not blur it); lines and text stay vectors.
- PDF: one page of the view's logical size at 96 dpi (1 px = 0.75 pt); images are embedded at full
  resolution without interpolation.
- CSV: the numbers behind the figure, from a table the panel provides (see `Table`).

Every file is written atomically (temp file in the same folder, fsync, os.replace).

`ExportButton` is the widget a panel attaches: a tool button whose menu saves each
format through a file dialog that remembers the last folder (AppSettings key
"export/last_dir"), copies the image to the clipboard, and takes extra actions
(e.g. "Save image as DICOM…" wired to training/latent/export.py).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import math
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import numpy as np

from explorer.qt import QtCore, QtGui, QtSvg, QtWidgets, Signal, pg
from training.atomic import atomic_write_bytes, atomic_write_text

MAX_SCALE = 8
FORMATS = ("png", "svg", "pdf", "csv")
FILTERS = {
    "png": "PNG image (*.png)",
    "svg": "SVG vector graphics (*.svg)",
    "pdf": "PDF document (*.pdf)",
    "csv": "CSV table (*.csv)",
    "npy": "NumPy array (*.npy)",
}
LAST_DIR_KEY = "export/last_dir"

# What a panel returns for CSV: (header, rows), a 2-D array (one CSV row per array row),
# or {column name: 1-D values} (equal lengths).
Table = Union[tuple[Sequence[str], Iterable[Sequence[Any]]], np.ndarray, Mapping[str, Sequence[Any]]]
ViewLike = Union[QtWidgets.QGraphicsView, Callable[[], QtWidgets.QGraphicsView]]


def _readable(path: Path) -> Path:
    """Exports are for sharing: the temp file behind the atomic write is created 0600;
    give the result the permissions a normally created file would have (umask)."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    try:
        os.chmod(path, 0o666 & ~mask)
    except OSError:
        pass
    return path


def _view(view: ViewLike) -> QtWidgets.QGraphicsView:
    v = view() if callable(view) and not isinstance(view, QtWidgets.QGraphicsView) else view
    if not isinstance(v, QtWidgets.QGraphicsView):
        raise TypeError(f"not a graphics view: {type(v).__name__}")
    return v


def _logical_size(view: QtWidgets.QGraphicsView) -> QtCore.QSize:
    """The viewport's size in device-independent pixels (what the user sees, unscaled)."""
    s = view.viewport().size()
    return QtCore.QSize(max(1, s.width()), max(1, s.height()))


def image_items(view: QtWidgets.QGraphicsView) -> list[pg.ImageItem]:
    """Every visible ImageItem with data in the view's scene."""
    scene = view.scene()
    if scene is None:
        return []
    return [it for it in scene.items()
            if isinstance(it, pg.ImageItem) and it.isVisible() and it.image is not None]


def true_pixel_scale(view: ViewLike, max_scale: int = MAX_SCALE) -> int:
    """Smallest integer scale at which every shown image gets ≥ 1 output pixel per data pixel.

    Measured in the view's logical pixels; 1 when the view shows no image (or shows its
    images magnified already). Capped at max_scale (a 512² image in a thumbnail view
    would otherwise ask for a huge file).
    """
    v = _view(view)
    scale = 1
    for item in image_items(v):
        rect = v.mapFromScene(item.mapRectToScene(item.boundingRect())).boundingRect()
        w, h = item.width() or 0, item.height() or 0
        if rect.width() <= 0 or rect.height() <= 0 or not w or not h:
            continue
        need = max(w / rect.width(), h / rect.height())
        scale = max(scale, math.ceil(need - 1e-6))
    return int(min(max(scale, 1), max_scale))


def _render(view: QtWidgets.QGraphicsView, painter: QtGui.QPainter, target: QtCore.QRectF) -> None:
    painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing, True)
    painter.setRenderHint(QtGui.QPainter.RenderHint.TextAntialiasing, True)
    # Nearest neighbour for images: a CT pixel stays one sharp square.
    painter.setRenderHint(QtGui.QPainter.RenderHint.SmoothPixmapTransform, False)
    view.render(painter, target, view.viewport().rect(),
                QtCore.Qt.AspectRatioMode.IgnoreAspectRatio)


def render_image(view: ViewLike, scale: int | None = None) -> QtGui.QImage:
    """The view drawn into a QImage of exactly logical size × scale pixels (dpr 1)."""
    v = _view(view)
    scale = true_pixel_scale(v) if scale is None else max(1, int(scale))
    size = _logical_size(v)
    img = QtGui.QImage(size.width() * scale, size.height() * scale,
                       QtGui.QImage.Format.Format_ARGB32_Premultiplied)
    img.setDevicePixelRatio(1.0)  # no HiDPI halving: one QImage pixel is one file pixel
    img.fill(QtGui.QColor("white"))
    p = QtGui.QPainter(img)
    try:
        _render(v, p, QtCore.QRectF(0, 0, img.width(), img.height()))
    finally:
        p.end()
    return img


def _qimage_bytes(img: QtGui.QImage, fmt: str = "PNG") -> bytes:
    buf = QtCore.QBuffer()
    buf.open(QtCore.QIODevice.OpenModeFlag.WriteOnly)
    if not img.save(buf, fmt):
        raise OSError(f"could not encode the image as {fmt}")
    return bytes(buf.data())


def export_png(view: ViewLike, path, scale: int | None = None) -> Path:
    """Write the view as PNG at true pixel scale (see module docstring); the path."""
    return _readable(atomic_write_bytes(Path(path), _qimage_bytes(render_image(view, scale))))


_IMAGE_TAG = re.compile(r"<image\b([^>]*)>")
_RENDERING_ATTR = re.compile(r'\s(?:image-rendering|style)="[^"]*"')


def _pixelated(match: re.Match) -> str:
    attrs = _RENDERING_ATTR.sub("", match.group(1))
    return f'<image image-rendering="pixelated" style="image-rendering:pixelated"{attrs}>'


_GROUP = re.compile(r"(<g\b[^>]*>)(.*?)(</g>)", re.S)
_MATRIX = re.compile(r'transform="matrix\(([^)]*)\)"')
_STROKE_W = re.compile(r'stroke-width="([0-9.eE+-]+)"')
_NON_SCALING = ' vector-effect="non-scaling-stroke"'


_NUMBER = r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_XY = re.compile(rf"({_NUMBER}),({_NUMBER})")
_GEOMETRY = re.compile(r'\b(points|d)="([^"]*)"')
_ELEMENT = re.compile(r"<(\w+)")


def _flatten(body: str, a: float, b: float, c: float, d: float, e: float, f: float) -> str | None:
    """The group's polylines and paths with the matrix applied to their coordinates (the
    group then needs no transform), or None when the body holds anything else (or path
    commands other than Qt's absolute M, L, C, Z)."""
    if any(el not in ("polyline", "polygon", "path") for el in _ELEMENT.findall(body)):
        return None
    for m in _GEOMETRY.finditer(body):
        if m.group(1) == "d" and re.search(r"[A-Za-z]", re.sub(r"[MLCZ]|[eE][-+]?\d", "", m.group(2))):
            return None

    def point(m: re.Match) -> str:
        x, y = float(m.group(1)), float(m.group(2))
        return f"{a * x + c * y + e:.7g},{b * x + d * y + f:.7g}"

    return _GEOMETRY.sub(lambda m: f'{m.group(1)}="{_XY.sub(point, m.group(2))}"', body)


def _bake_cosmetic_strokes(match: re.Match) -> str:
    """A cosmetic (screen-width) pen inside a scaled group: Qt writes the data-space
    transform and vector-effect="non-scaling-stroke", which SVG 1.1 renderers
    (ImageMagick, QSvgRenderer, older editors) ignore, drawing 1 px lines 50× thick.
    A uniform scale: divide the width by it. Otherwise (a plot's x and y scales differ,
    a log axis): apply the transform to the coordinates themselves and drop it, so the
    stroke keeps its screen width in every direction; where that is not possible, divide
    by the mean scale (as before)."""
    head, body, tail = match.groups()
    m = _MATRIX.search(head)
    if _NON_SCALING not in body or m is None:
        return match.group(0)
    try:
        a, b, c, d, e, f = (float(v) for v in m.group(1).replace(" ", ",").split(",")[:6])
    except ValueError:
        return match.group(0)
    scale = math.sqrt(abs(a * d - b * c))
    if scale <= 0:
        return match.group(0)
    uniform = abs(b) < 1e-12 and abs(c) < 1e-12 and abs(abs(a) - abs(d)) <= 1e-6 * max(abs(a), abs(d))
    if not uniform:
        flat = _flatten(body, a, b, c, d, e, f)
        if flat is not None:
            return _MATRIX.sub('transform="matrix(1,0,0,1,0,0)"', head) + flat.replace(_NON_SCALING, "") + tail
    w = _STROKE_W.search(head)
    width = float(w.group(1)) if w else 1.0
    new = f'stroke-width="{width / scale:.6g}"'
    head = _STROKE_W.sub(new, head) if w else head.replace("<g ", f"<g {new} ", 1)
    return head + body.replace(_NON_SCALING, "") + tail


_DATA_HREF = re.compile(r'((?:xlink:)?href=")data:image/([a-z]+);base64,([^"]*)(")')


def _svg_text(v: QtWidgets.QGraphicsView, title: str) -> str:
    size = _logical_size(v)
    buf = QtCore.QBuffer()
    buf.open(QtCore.QIODevice.OpenModeFlag.WriteOnly)
    gen = QtSvg.QSvgGenerator()
    gen.setOutputDevice(buf)
    gen.setSize(size)
    gen.setViewBox(QtCore.QRect(0, 0, size.width(), size.height()))
    gen.setResolution(96)
    gen.setTitle(title or "ct-vae-explorer figure")
    gen.setDescription("Exported by ct-vae-explorer")
    p = QtGui.QPainter(gen)
    try:
        _render(v, p, QtCore.QRectF(0, 0, size.width(), size.height()))
    finally:
        p.end()
    return bytes(buf.data()).decode("utf-8")


def svg_parts(view: ViewLike, title: str = "") -> tuple[str, list[QtGui.QImage]]:
    """The GUI-thread half of an SVG export (Qt draws scenes on the GUI thread only).

    Each ImageItem is drawn with a tiny placeholder picture (k + 1 by 1 pixels for the
    k-th item), so the SVG text holds its <image> element at the right place and scale
    without the expensive part, encoding the full-resolution pixels as PNG. Returns the
    text and copies of the items' real pictures, for `finish_svg` on any thread."""
    v = _view(view)
    items = []
    for item in image_items(v):
        if item.image is None:
            continue
        if getattr(item, "_renderRequired", False):
            item.render()
        if item.qimage is not None and not item.qimage.isNull():
            items.append(item)
    originals = [item.qimage for item in items]
    markers, clips = _add_clip_markers(v)
    try:
        for k, item in enumerate(items):
            placeholder = QtGui.QImage(k + 1, 1, QtGui.QImage.Format.Format_ARGB32)
            placeholder.fill(0)
            item.qimage = placeholder
        text = _svg_text(v, title)
    finally:
        for item, q in zip(items, originals):
            item.qimage = q
        for vb, m in markers:
            vb.removeItem(m)
    text = _clip_between_markers(text, clips)
    # copies: pyqtgraph may reuse the buffers behind its pictures once the view updates
    return text, [q.copy() for q in originals]


def _marker_colour(k: int, end: bool) -> str:
    return f"#fe01{(2 * k + int(end)) % 256:02x}"


def _add_clip_markers(v: QtWidgets.QGraphicsView) -> tuple[list, list[QtCore.QRect]]:
    """QSvgGenerator keeps no clipping, so what a plot draws outside its axes (ellipses,
    zoomed-in images) would show in the SVG. Each visible ViewBox gets two tiny marker
    items, painted first and last among its contents, in colours no plot uses; the SVG
    text between them is then wrapped in a clip path of the ViewBox's rectangle."""
    markers, clips = [], []
    boxes = [it for it in v.scene().items() if isinstance(it, pg.ViewBox) and it.isVisible()]
    for k, vb in enumerate(boxes[:100]):
        rect = v.mapFromScene(vb.sceneBoundingRect()).boundingRect()
        centre = vb.viewRect().center()
        tiny = vb.viewRect().width() * 1e-6 or 1e-9, vb.viewRect().height() * 1e-6 or 1e-9
        for end, z in ((False, -1e12), (True, 1e12)):
            m = QtWidgets.QGraphicsRectItem(QtCore.QRectF(centre.x(), centre.y(), *tiny))
            pen = QtGui.QPen(QtGui.QColor(_marker_colour(k, end)))
            pen.setCosmetic(True)
            m.setPen(pen)
            m.setZValue(z)
            vb.addItem(m, ignoreBounds=True)
            markers.append((vb, m))
        clips.append(rect)
    return markers, clips


def _clip_between_markers(text: str, clips: list[QtCore.QRect]) -> str:
    defs = []
    for k, rect in enumerate(clips):
        groups = []
        for end in (False, True):
            pattern = re.compile(r'<g\b[^>]*stroke="' + _marker_colour(k, end) + r'"[^>]*>(?:(?!<g\b).)*?</g>\s*', re.S)
            groups.append(pattern.search(text))
        start, stop = groups
        if start is None or stop is None or stop.start() < start.end():
            # not both drawn (or in an unexpected order): drop what is there, no clip
            for g in groups:
                if g is not None:
                    text = text.replace(g.group(0), "", 1)
            continue
        clip_id = f"ctvae-clip-{k}"
        text = (text[:start.start()] + f'<g clip-path="url(#{clip_id})">\n' + text[start.end():stop.start()]
                + "</g>\n" + text[stop.end():])
        defs.append(f'<clipPath id="{clip_id}"><rect x="{rect.x()}" y="{rect.y()}" '
                    f'width="{rect.width()}" height="{rect.height()}"/></clipPath>')
    if defs:
        # clip paths are SVG 1.1 (Qt declares the Tiny 1.2 profile, which has none)
        head_end = text.index(">", text.index("<svg")) + 1
        head = text[:head_end].replace(' version="1.2" baseProfile="tiny"', ' version="1.1"')
        text = head + "\n<defs>" + "".join(defs) + "</defs>" + text[head_end:]
    return text


def finish_svg(text: str, images: Sequence[QtGui.QImage]) -> bytes:
    """The slow half of an SVG export, safe off the GUI thread (QImage is reentrant):
    placeholders replaced by the PNG of the full-resolution pictures, images marked
    pixelated, cosmetic strokes baked."""
    def real_picture(m: re.Match) -> str:
        try:
            ph = QtGui.QImage.fromData(base64.b64decode(m.group(3)))
        except (ValueError, TypeError):
            return m.group(0)
        k = ph.width() - 1
        if ph.height() != 1 or not 0 <= k < len(images):
            return m.group(0)  # an image drawn by something else than an ImageItem
        data = base64.b64encode(_qimage_bytes(images[k])).decode("ascii")
        return f"{m.group(1)}data:image/png;base64,{data}{m.group(4)}"

    text = _DATA_HREF.sub(real_picture, text)
    # Viewers smooth embedded images by default; a CT pixel must stay a square.
    text = _IMAGE_TAG.sub(_pixelated, text)
    text = _GROUP.sub(_bake_cosmetic_strokes, text)
    return text.encode("utf-8")


def svg_bytes(view: ViewLike, title: str = "") -> bytes:
    """The view as SVG: vectors for lines and text, images embedded at full resolution."""
    return finish_svg(*svg_parts(view, title))


def export_svg(view: ViewLike, path, title: str = "") -> Path:
    return _readable(atomic_write_bytes(Path(path), svg_bytes(view, title)))


# PDF pages are laid out at the screen's reference 96 dpi: 1 logical px = 0.75 pt. At 72 dpi
# (1 px = 1 pt) pyqtgraph's axes came out shifted and scaled against the data they label.
PDF_DPI = 96


def _pdf_writer(buf: QtCore.QBuffer, size: QtCore.QSize, title: str) -> QtGui.QPdfWriter:
    writer = QtGui.QPdfWriter(buf)
    writer.setTitle(title or "ct-vae-explorer figure")
    writer.setCreator("ct-vae-explorer")
    writer.setResolution(PDF_DPI)
    pt = 72.0 / PDF_DPI  # the file holds whole points: the page may be up to ½ pt larger
    writer.setPageSize(QtGui.QPageSize(QtCore.QSizeF(size.width() * pt, size.height() * pt),
                                       QtGui.QPageSize.Unit.Point, "figure",
                                       QtGui.QPageSize.SizeMatchPolicy.ExactMatch))
    writer.setPageMargins(QtCore.QMarginsF(0, 0, 0, 0), QtGui.QPageLayout.Unit.Point)
    return writer


def pdf_bytes(view: ViewLike, title: str = "") -> bytes:
    """The view as a one-page PDF of its logical size at 96 dpi (1 px → 0.75 pt).

    Drawn directly (on the GUI thread): QSvgGenerator keeps no clipping, so a PDF made
    from the SVG showed items outside the plot area."""
    v = _view(view)
    size = _logical_size(v)
    buf = QtCore.QBuffer()
    buf.open(QtCore.QIODevice.OpenModeFlag.WriteOnly)
    writer = _pdf_writer(buf, size, title)
    p = QtGui.QPainter(writer)
    try:
        _render(v, p, QtCore.QRectF(p.viewport()))
    finally:
        p.end()
    return bytes(buf.data())


def export_pdf(view: ViewLike, path, title: str = "") -> Path:
    return _readable(atomic_write_bytes(Path(path), pdf_bytes(view, title)))


def widget_bytes(widget: QtWidgets.QWidget, fmt: str, title: str = "") -> bytes:
    """Any widget (a whole tab: form, plots, labels) as PNG, SVG or PDF bytes.

    For tabs that are not one graphics view; SVG and PDF keep text and lines as vectors
    (QWidget.render into QSvgGenerator / QPdfWriter): 1 logical px → 1 px (SVG), 0.75 pt (PDF).
    """
    fmt = fmt.lower()
    if fmt == "png":
        # unbound QWidget methods: a tab may shadow `size` or `grab` with a child widget
        return _qimage_bytes(QtWidgets.QWidget.grab(widget).toImage())
    size = QtWidgets.QWidget.size(widget)
    buf = QtCore.QBuffer()
    buf.open(QtCore.QIODevice.OpenModeFlag.WriteOnly)
    if fmt == "svg":
        target = QtSvg.QSvgGenerator()
        target.setOutputDevice(buf)
        target.setSize(size)
        target.setViewBox(QtCore.QRect(0, 0, size.width(), size.height()))
        target.setTitle(title or "ct-vae-explorer figure")
    elif fmt == "pdf":
        target = _pdf_writer(buf, size, title)
    else:
        raise ValueError(f"cannot export a tab as {fmt!r} (use png, svg or pdf)")
    p = QtGui.QPainter(target)
    try:
        QtWidgets.QWidget.render(widget, p, QtCore.QPoint(0, 0))
    finally:
        p.end()
    if fmt == "svg":  # the plots inside draw cosmetic pens too: bake them as svg_bytes does
        return finish_svg(bytes(buf.data()).decode("utf-8"), [])
    return bytes(buf.data())


def export_widget(widget: QtWidgets.QWidget, path, title: str = "") -> Path:
    """Write a whole widget as PNG/SVG/PDF by the path's suffix, atomically; the path."""
    path = Path(path)
    return _readable(atomic_write_bytes(path, widget_bytes(widget, path.suffix.lstrip(".") or "png", title)))


def table_rows(table: Table) -> tuple[list[str], list[list[Any]]]:
    """(header, rows) of any accepted Table form (header [] for a bare 2-D array)."""
    if isinstance(table, Mapping):
        header = [str(k) for k in table]
        cols = [np.asarray(v).ravel() for v in table.values()]
        n = {len(c) for c in cols}
        if len(n) > 1:
            raise ValueError(f"columns of different lengths: {dict(zip(header, map(len, cols)))}")
        return header, [list(r) for r in zip(*cols)]
    if isinstance(table, np.ndarray):
        a = table if table.ndim == 2 else np.atleast_2d(table.reshape(table.shape[0], -1) if table.ndim > 2 else table)
        return [], a.tolist()
    header, rows = table
    return [str(h) for h in header], [list(r) for r in rows]


def _cell(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return repr(float(v))  # shortest round-trip text
    if isinstance(v, np.integer):
        return int(v)
    return v


def csv_text(table: Table) -> str:
    header, rows = table_rows(table)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    if header:
        w.writerow(header)
    for r in rows:
        w.writerow([_cell(v) for v in r])
    return out.getvalue()


def export_csv(table: Table, path) -> Path:
    """Write the numbers behind a figure as CSV (floats in shortest round-trip form)."""
    return _readable(atomic_write_text(Path(path), csv_text(table)))


def copy_to_clipboard(view: ViewLike, scale: int | None = None) -> QtGui.QImage:
    """Put the view's true-pixel-scale image on the clipboard; returns it."""
    img = render_image(view, scale)
    QtWidgets.QApplication.clipboard().setImage(img)
    return img


def export_figure(view: ViewLike, path, fmt: str | None = None, table: Table | Callable[[], Table] | None = None,
                  title: str = "") -> Path:
    """Write `view` (or its table for csv) in the format given by `fmt` or the path's suffix."""
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt == "png":
        return export_png(view, path)
    if fmt == "svg":
        return export_svg(view, path, title)
    if fmt == "pdf":
        return export_pdf(view, path, title)
    if fmt == "csv":
        if table is None:
            raise ValueError("this figure has no table to export")
        return export_csv(table() if callable(table) else table, path)
    raise ValueError(f"unknown export format {fmt!r} (use one of {', '.join(FORMATS)})")


def start_export(view: ViewLike, path, fmt: str | None = None,
                 table: Table | Callable[[], Table] | None = None, title: str = "", parent=None):
    """export_figure without the long part on the GUI thread; a started explorer.workers.Job
    whose done(Path) / failed(str) arrive on the GUI thread.

    PNG: the view is drawn now (Qt draws on the GUI thread only) and encoded and written in
    the job — encoding is most of the time (a 15×15 manifold at true pixel scale is a
    3780×4002 image: 75 ms to draw, 750 ms to encode). SVG likewise: drawn with placeholder
    pictures now, the full-resolution PNGs encoded in the job (see svg_parts). PDF (drawn
    and written at once, see pdf_bytes) and CSV are written now."""
    from explorer.workers import Job

    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt == "png":
        image = render_image(view)  # QImage is reentrant: the job's thread alone uses it

        def work(_ctx):
            return _readable(atomic_write_bytes(path, _qimage_bytes(image)))
    elif fmt == "svg":
        text, images = svg_parts(view, title)  # drawing now, PNG encoding in the job

        def work(_ctx):
            return _readable(atomic_write_bytes(path, finish_svg(text, images)))
    else:
        out = export_figure(view, path, fmt, table, title)

        def work(_ctx):
            return out
    job = Job(work, parent=parent)
    job.ended.connect(job.deleteLater)
    job.start()
    return job


# -- dialogs ------------------------------------------------------------------------------


def _settings(settings):
    if settings is not None:
        return settings
    from explorer.settings import AppSettings

    return AppSettings()


def last_folder(settings=None) -> Path:
    value = _settings(settings).value(LAST_DIR_KEY, "")
    path = Path(value) if value else Path.home()
    return path if path.is_dir() else Path.home()


def remember_folder(path, settings=None) -> None:
    s = _settings(settings)
    s.set_value(LAST_DIR_KEY, str(Path(path).parent))
    if hasattr(s, "sync"):
        s.sync()


def safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "figure"


def ask_save_path(parent: QtWidgets.QWidget | None, title: str, default_name: str, fmt: str,
                  settings=None) -> Path | None:
    """A save dialog starting in the last export folder; remembers the chosen folder."""
    start = last_folder(settings) / f"{safe_filename(default_name)}.{fmt}"
    name, _ = QtWidgets.QFileDialog.getSaveFileName(parent, title, str(start),
                                                    FILTERS.get(fmt, f"*.{fmt}"))
    if not name:
        return None
    path = Path(name)
    if fmt and path.suffix.lower() != f".{fmt}":
        path = path.with_name(path.name + f".{fmt}")
    remember_folder(path, settings)
    return path


def ask_save_folder(parent: QtWidgets.QWidget | None, title: str, settings=None) -> Path | None:
    """A folder dialog (DICOM series) starting in the last export folder."""
    name = QtWidgets.QFileDialog.getExistingDirectory(parent, title, str(last_folder(settings)))
    if not name:
        return None
    path = Path(name)
    s = _settings(settings)
    s.set_value(LAST_DIR_KEY, str(path))
    return path


class ExportButton(QtWidgets.QToolButton):
    """"Export ▾" button: PNG, SVG, PDF, CSV of a figure, copy image, and extra actions.

    view: the GraphicsView to export (or a zero-argument callable returning it).
    name: the default file name (no suffix) and the files' title.
    table: a Table or a zero-argument callable returning one (None: no CSV entry).
    settings: AppSettings (remembers the last folder); None uses the default file.

    Signals: exported(str path), failed(str message). `export(fmt, path)` writes without
    a dialog (tests, scripts).
    """

    exported = Signal(str)
    failed = Signal(str)

    def __init__(self, view: ViewLike, name: str, table: Table | Callable[[], Table] | None = None,
                 settings=None, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._view_ref = view
        self.name = name
        self.table = table
        self.settings = settings
        self.setText("Export")
        self.setToolTip("Save this figure as PNG, SVG or PDF, its numbers as CSV, or copy it")
        self.setPopupMode(QtWidgets.QToolButton.ToolButtonPopupMode.InstantPopup)
        self.menu_ = QtWidgets.QMenu(self)
        self.setMenu(self.menu_)
        self.actions_by_format: dict[str, QtGui.QAction] = {}
        for fmt, text in (("png", "Save figure as PNG…"), ("svg", "Save figure as SVG…"),
                          ("pdf", "Save figure as PDF…"), ("csv", "Save numbers as CSV…")):
            act = self.menu_.addAction(text)
            act.triggered.connect(lambda _=False, f=fmt: self.export_in_background(f))
            self.actions_by_format[fmt] = act
        self.actions_by_format["csv"].setEnabled(table is not None)
        copy = self.menu_.addAction("Copy image")
        copy.triggered.connect(self.copy)
        self.actions_by_format["copy"] = copy
        self._extra_separator = False
        self._transient: list = []

    def hide_while_exporting(self, *items) -> None:
        """Graphics items (hover readouts, selection boxes) left out of every export:
        hidden while the figure is drawn, then shown again as they were."""
        self._transient.extend(items)

    @contextlib.contextmanager
    def _without_transient(self):
        shown = [it for it in self._transient if it.isVisible()]
        for it in shown:
            it.setVisible(False)
        try:
            yield
        finally:
            for it in shown:
                it.setVisible(True)

    def view(self) -> QtWidgets.QGraphicsView:
        return _view(self._view_ref)

    def set_table(self, table: Table | Callable[[], Table] | None) -> None:
        self.table = table
        self.actions_by_format["csv"].setEnabled(table is not None)

    def add_action(self, text: str, callback: Callable[[], Any]) -> QtGui.QAction:
        """An extra menu entry below the standard ones (e.g. "Save image as DICOM…")."""
        if not self._extra_separator:
            self.menu_.addSeparator()
            self._extra_separator = True
        act = self.menu_.addAction(text)
        act.triggered.connect(lambda _=False: callback())
        return act

    def export(self, fmt: str, path) -> Path:
        """Write the figure in `fmt` to `path` (no dialog); raises on failure."""
        with self._without_transient():
            out = export_figure(self.view(), path, fmt, self.table, title=self.name)
        self.exported.emit(str(out))
        return out

    def start_export(self, fmt: str, path):
        """Like export(), with a PNG's encoding and writing off the GUI thread (see the
        module's start_export); the started Job. exported/failed are emitted when it ends."""
        path = Path(path)
        with self._without_transient():  # drawn now; encoded in the job
            job = start_export(self.view(), path, fmt, self.table, title=self.name, parent=self)
        job.done.connect(lambda out: self.exported.emit(str(out)))
        job.failed.connect(lambda msg: self.failed.emit(f"Could not write {path.name}: {msg}"))
        return job

    def export_in_background(self, fmt: str):
        """The menu's entries: ask for a file, then start_export; the Job, or None."""
        path = ask_save_path(self, f"Export {self.name} as {fmt.upper()}", self.name, fmt, self.settings)
        if path is None:
            return None
        try:
            return self.start_export(fmt, path)
        except Exception as exc:  # SVG/PDF/CSV are written at once: their errors are here
            from explorer.workers import readable_error

            self.failed.emit(f"Could not write {path.name}: {readable_error(exc)}")
            return None

    def export_with_dialog(self, fmt: str) -> Path | None:
        path = ask_save_path(self, f"Export {self.name} as {fmt.upper()}", self.name, fmt, self.settings)
        if path is None:
            return None
        try:
            return self.export(fmt, path)
        except Exception as exc:  # the user sees one line; the app carries on
            from explorer.workers import readable_error

            self.failed.emit(f"Could not write {path.name}: {readable_error(exc)}")
            return None

    def copy(self) -> QtGui.QImage:
        with self._without_transient():
            img = copy_to_clipboard(self.view())
        self.exported.emit("clipboard")
        return img


__all__ = [
    "ExportButton", "FORMATS", "Table", "ask_save_folder", "ask_save_path", "copy_to_clipboard",
    "csv_text", "export_csv", "export_widget", "start_export", "widget_bytes", "export_figure", "export_pdf", "export_png", "export_svg",
    "finish_svg", "image_items", "last_folder", "pdf_bytes", "remember_folder", "render_image",
    "svg_bytes", "svg_parts", "table_rows", "true_pixel_scale",
]
