"""Widgets shared by the latent-space tabs (manifold, interpolation, samples, density).

- `CTImageView`: one CT image in a plot, right way up (row 0 = anterior at the top:
  the y axis is inverted; columns left → right = patient's right → left, so the
  patient's left is on the image's right), grey window [0, 1] (the workspace's HU
  window) or RGB with RT overlays, orientation letters, axis labels in pixels.
- `TileView`: a grid of images in one texture (samples, filmstrip) with captions;
  `tileClicked(int)`.
- `LatentPanel`: base of the four tabs: a LatestWorker, refresh when shown and when the
  checkpoint or workspace changes (hidden tabs only mark themselves stale, so a
  running training is not slowed by tabs nobody looks at), a status line, export of
  generated images (PNG, .npy, DICOM through training/latent/export.py).

Nothing here computes what a script would want: numbers come from training/latent/encode.py,
training/explore/latent.py, training/latent/sampling.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from explorer import figures
from explorer.panels import Panel
from explorer.qt import Qt, QtCore, QtGui, QtWidgets, pg
from explorer.widgets.latest_worker import LatestWorker

GREY = (0.0, 1.0)  # images are the workspace's HU window scaled to [0, 1]


def orientation_letters(view: pg.ViewBox, shape: tuple[int, int], items: list | None = None) -> list:
    """A/P/R/L letters at the edges of an image of `shape` (H, W) shown row 0 at the top."""
    for it in items or []:
        view.removeItem(it)
    h, w = shape
    out = []
    for text, pos, anchor in (("A", (w / 2, 0), (0.5, 0)), ("P", (w / 2, h), (0.5, 1)),
                              ("R", (0, h / 2), (0, 0.5)), ("L", (w, h / 2), (1, 0.5))):
        t = pg.TextItem(text, color=(255, 210, 0), anchor=anchor)
        t.setPos(*pos)
        t.setZValue(10)
        view.addItem(t)
        out.append(t)
    return out


class CTImageView(pg.GraphicsLayoutWidget):
    """One image, row 0 at the top (invertY), aspect locked, grey [0, 1] or RGB uint8."""

    def __init__(self, title: str = "", parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot = self.addPlot(title=title)
        self.plot.invertY(True)
        self.plot.setAspectLocked(True)
        self.plot.setMenuEnabled(False)
        self.plot.setLabel("bottom", "x (px, patient R → L)")
        self.plot.setLabel("left", "y (px, A → P)")
        for side in ("bottom", "left"):  # pixel indices: never "(×0.001)"
            self.plot.getAxis(side).enableAutoSIPrefix(False)
        self.plot.setRange(xRange=(0, 1), yRange=(0, 1), padding=0)  # until an image comes
        self.item = pg.ImageItem()
        self.plot.addItem(self.item)
        self.array: np.ndarray | None = None  # what is shown (grey float or RGB uint8)
        self._letters: list = []
        self._shape: tuple[int, int] | None = None

    def set_title(self, title: str) -> None:
        self.plot.setTitle(title)

    def set_image(self, image: np.ndarray, autorange: bool | None = None) -> None:
        """image: (H, W) float [0, 1] shown grey, or (H, W, 3) uint8 RGB (RT overlay)."""
        a = np.asarray(image)
        self.array = a
        if a.ndim == 3:
            self.item.setImage(a, autoLevels=False, levels=(0, 255))
        else:
            self.item.setImage(a, autoLevels=False, levels=GREY)
        shape = a.shape[:2]
        if shape != self._shape:
            self._shape = shape
            self._letters = orientation_letters(self.plot.vb, shape, self._letters)
            autorange = True if autorange is None else autorange
        if autorange:
            self.fit()

    def fit(self) -> None:
        """Show the whole image (the letters around it do not count)."""
        shape = getattr(self, "_shape", None)  # resize events come during __init__ too
        if shape is not None:
            h, w = shape
            self.plot.setRange(xRange=(0, w), yRange=(0, h), padding=0.02)

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        super().resizeEvent(event)
        self.fit()  # a side view resized by the layout keeps its image whole

    def clear_image(self) -> None:
        self.array = None
        self.item.clear()

    def table(self):
        """The grey values (H, W) shown (or the RGB's first channel), one CSV row per image row."""
        if self.array is None:
            return np.zeros((0, 0))
        return self.array if self.array.ndim == 2 else self.array[..., 0]


class TileView(pg.GraphicsLayoutWidget):
    """Images (N, H, W) [grey] or (N, H, W, 3) [RGB] tiled in rows of `columns`, one texture."""

    tileClicked = QtCore.Signal(int)

    def __init__(self, title: str = "", parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot = self.addPlot(title=title)
        self.plot.invertY(True)
        self.plot.setAspectLocked(True)
        self.plot.setMenuEnabled(False)
        self.plot.hideAxis("left")
        self.plot.hideAxis("bottom")
        self.item = pg.ImageItem()
        self.plot.addItem(self.item)
        self.images: np.ndarray | None = None
        self.mosaic: np.ndarray | None = None
        self.columns = 1
        self.pad = 2
        self._captions: list[pg.TextItem] = []
        self.scene().sigMouseClicked.connect(self._clicked)

    def set_tiles(self, images: np.ndarray, columns: int, captions: list[str] | None = None) -> None:
        from training.images import compose_grid

        imgs = np.asarray(images)
        self.images = imgs
        n = len(imgs)
        self.columns = columns = max(1, min(columns, max(n, 1)))
        rows = max(1, -(-n // columns))
        rgb = imgs.ndim == 4
        fill = 255 if rgb else 1.0
        grid = np.full((rows, columns, *imgs.shape[1:]), fill, imgs.dtype)
        grid.reshape(rows * columns, *imgs.shape[1:])[:n] = imgs
        self.mosaic = compose_grid(grid, pad=self.pad, pad_value=fill)
        self.item.setImage(self.mosaic, autoLevels=False, levels=(0, 255) if rgb else GREY)
        for t in self._captions:
            self.plot.removeItem(t)
        self._captions = []
        h, w = imgs.shape[1:3]
        for i, text in enumerate(captions or []):
            r, c = divmod(i, columns)
            t = pg.TextItem(text, color=(255, 210, 0), anchor=(0, 0))
            t.setPos(c * (w + self.pad), r * (h + self.pad))
            self.plot.addItem(t)
            self._captions.append(t)
        self.plot.autoRange(padding=0.01)

    def tile_at(self, x: float, y: float) -> int | None:
        if self.images is None or not len(self.images):
            return None
        h, w = self.images.shape[1:3]
        c, r = int(x // (w + self.pad)), int(y // (h + self.pad))
        i = r * self.columns + c
        if x < 0 or y < 0 or c >= self.columns or i >= len(self.images):
            return None
        return i

    def _clicked(self, ev) -> None:
        p = self.plot.vb.mapSceneToView(ev.scenePos())
        i = self.tile_at(p.x(), p.y())
        if i is not None:
            self.tileClicked.emit(i)

    def table(self):
        if self.mosaic is None:
            return np.zeros((0, 0))
        return self.mosaic if self.mosaic.ndim == 2 else self.mosaic[..., 0]


def labelled_row(*items) -> QtWidgets.QHBoxLayout:
    row = QtWidgets.QHBoxLayout()
    for it in items:
        if isinstance(it, str):
            row.addWidget(QtWidgets.QLabel(it))
        elif isinstance(it, QtWidgets.QLayout):
            row.addLayout(it)
        elif it is None:
            row.addStretch(1)
        else:
            row.addWidget(it)
    return row


class LatentPanel(Panel):
    """Base of the latent tabs: background refresh, staleness, status, generated exports.

    Subclasses implement `compute(request) -> result` (runs on the worker thread; calls
    training/ only) and `show_result(result)` (GUI thread), and build `request()` from
    their controls. `refresh()` submits; a newer request replaces a queued one.
    """

    defer_refresh_on_show = True

    @staticmethod
    def encode_optional(lm, workspace):
        """The workspace's encoded patients (cached), or None when there is no workspace or
        it cannot be encoded: views that draw patients over the latent space work without."""
        if not workspace:
            return None
        from training.explore import latent as latent_views

        try:
            return latent_views.encode_patients(lm, workspace)
        except Exception:  # no (readable) images
            import logging

            logging.getLogger(__name__).warning("could not encode %s", workspace, exc_info=True)
            return None

    needs_workspace = False  # the tab needs an encoded workspace to show anything

    def __init__(self, state, parent=None) -> None:
        super().__init__(state, parent)
        self.worker = LatestWorker(self, name=f"{type(self).__name__}-worker")
        self.worker.resultReady.connect(self._on_result)
        self.worker.failed.connect(self._on_failed)
        self.stale = True
        self.status = QtWidgets.QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.last_result: Any = None
        self.last_ms = 0.0
        self._submitted_at = 0.0
        self.refreshes = 0  # results shown (tests)
        state.busyChanged.connect(self._busy_changed)

    # -- what a subclass provides ------------------------------------------------------
    def request(self) -> dict | None:
        """The work to do for the current controls (None: nothing to show)."""
        return None

    def compute(self, req: dict) -> Any:
        raise NotImplementedError

    def show_result(self, result: Any) -> None:
        raise NotImplementedError

    # -- plumbing --------------------------------------------------------------------------
    def base_request(self) -> dict | None:
        """checkpoint and workspace paths, or None (with a status line) when absent."""
        ckpt = self.state.checkpoint_path
        if ckpt is None:
            self.set_status("No model yet: train one in the Train tab or load a checkpoint (File menu).")
            return None
        ws = self.state.workspace_path if self.state.has_workspace_data() else None
        if self.needs_workspace and ws is None:
            self.set_status("No workspace data: add DICOM folders first.")
            return None
        return {"checkpoint": str(ckpt), "workspace": str(ws) if ws else None}

    def refresh(self) -> int | None:
        """Submit the current request to the worker (latest wins); its id or None."""
        if self.state.busy and self.needs_workspace:
            self.stale = True  # an ingest is writing the workspace: wait until it ends
            return None
        req = self.request()
        if req is None:
            return None
        self.stale = False
        self._submitted_at = time.perf_counter()
        self.set_status("Computing…")
        return self.worker.submit(self.compute, req)

    def request_refresh(self) -> None:
        """Refresh now if the tab is visible; otherwise when it is next shown."""
        if self.visible_or_stale():
            self.refresh()

    def on_checkpoint_changed(self, path: str) -> None:
        self.request_refresh()

    def on_workspace_changed(self) -> None:
        self.request_refresh()

    def _busy_changed(self, busy: bool) -> None:
        if not busy and self.stale:
            self.request_refresh()  # deferred while a job was writing the workspace

    def _on_result(self, rid: int, result: Any) -> None:
        self.last_ms = (time.perf_counter() - self._submitted_at) * 1000.0
        self.last_result = result
        try:
            self.show_result(result)
        except Exception as exc:  # a display problem is one line, never a crash
            import logging

            logging.getLogger(__name__).exception("showing a result failed")
            self.set_status(f"Could not show the result: {exc}")
            return
        self.refreshes += 1

    def _on_failed(self, rid: int, message: str) -> None:
        self.set_status(message)
        self.state.show_message(message, 8000)

    @staticmethod
    def legend(lm) -> str:
        """" (RT overlay: ■ name …)" in the ROI colours, rich text for the status line."""
        from training.explore.latent import roi_legend

        items = [f'<span style="color: rgb{c}">■</span> {name}' for name, c in roi_legend(lm)]
        return f" (RT overlay: {', '.join(items)})" if items else ""

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    def shutdown(self) -> None:
        self.worker.shutdown()

    def wait_idle(self, timeout_ms: int = 30000) -> bool:
        """Tests and benchmarks: wait for the worker, then deliver its result."""
        ok = self.worker.wait_idle(timeout_ms)
        QtWidgets.QApplication.processEvents()
        QtWidgets.QApplication.processEvents()
        return ok

    # -- exports -------------------------------------------------------------------------
    def export_button(self, view, name: str, table=None) -> figures.ExportButton:
        btn = figures.ExportButton(view, name, table=table, settings=self.state.settings, parent=self)
        btn.exported.connect(lambda p: self.state.show_message(
            "Copied to the clipboard" if p == "clipboard" else f"Saved {p}", 5000))
        btn.failed.connect(lambda m: self.state.show_message(m, 0))
        return btn

    def add_generated_exports(self, button: figures.ExportButton,
                              get: Callable[[], tuple[np.ndarray, np.ndarray | None, str] | None]) -> None:
        """Menu entries writing the generated images (N, *spatial) through training/latent/export.py.

        get() -> (images in [0, 1], labels or None, file prefix) or None when empty.
        """
        for fmt, text in (("png", "Save generated images as PNG…"), ("npy", "Save generated arrays as .npy…"),
                          ("dicom", "Save generated images as DICOM CT (+ RTSTRUCT)…")):
            button.add_action(text, lambda f=fmt: self._export_generated(f, get))

    def export_generated(self, fmt: str, out_dir, images, labels, prefix: str, notes=None) -> dict:
        """Write generated images in one format (png, npy, dicom) to out_dir; the paths.
        notes: a list receiving what the DICOM files' reader should know."""
        from training.explore import latent as latent_views
        from training.latent.export import export_generated

        lm = latent_views.load_latent_model(self.state.checkpoint_path)
        ws = self.state.workspace_path if self.state.has_workspace_data() else None
        pre = latent_views.workspace_preprocess(lm, ws)
        spacing = latent_views.export_spacing(ws) if ws else (1.0, 1.0, 1.0)
        return export_generated(Path(out_dir), images, labels, preprocess=pre, spacing=spacing,
                                roi_names=lm.roi_names, formats=(fmt,), prefix=prefix, notes=notes)

    def _export_generated(self, fmt: str, get) -> None:
        got = get()
        if got is None:
            self.state.show_message("Nothing generated yet", 4000)
            return
        title = f"Folder for the generated images ({fmt.upper()})"
        if fmt == "dicom":  # what a DICOM viewer will show is not the patient's HU range
            title += " — HU outside the training window cannot be restored"
        out = figures.ask_save_folder(self, title, self.state.settings)
        if out is None:
            return
        QtWidgets.QApplication.setOverrideCursor(QtGui.QCursor(Qt.CursorShape.WaitCursor))
        try:
            notes: list[str] = []
            written = self.export_generated(fmt, out, *got, notes=notes)
            n = sum(len(v) for v in written.values())
            self.state.show_message(f"Wrote {n} file(s) to {out}" + "".join(f". Note: {t}" for t in notes),
                                    0 if notes else 6000)
        except Exception as exc:  # one line for the user; the app carries on
            from explorer.workers import readable_error

            self.state.show_message(f"Export failed: {readable_error(exc)}", 0)
        finally:
            QtWidgets.QApplication.restoreOverrideCursor()


def fill_dim_combo(combo: QtWidgets.QComboBox, latent_dim: int, default: int) -> None:
    """z0 … z{J-1} in a combo box, keeping the current choice when it still exists."""
    cur = combo.currentIndex()
    if combo.count() == latent_dim:
        return
    combo.blockSignals(True)
    combo.clear()
    combo.addItems([f"z{j}" for j in range(latent_dim)])
    combo.setCurrentIndex(cur if 0 <= cur < latent_dim else min(default, latent_dim - 1))
    combo.blockSignals(False)


def fill_patient_combo(combo: QtWidgets.QComboBox, names: list[str], extra: list[str]) -> None:
    """`extra` entries first (e.g. "zero", "random prior draw"), then the patients."""
    items = list(extra) + list(names)
    if [combo.itemText(i) for i in range(combo.count())] == items:
        return
    cur = combo.currentText()
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(items)
    if cur in items:
        combo.setCurrentText(cur)
    combo.blockSignals(False)


__all__ = ["CTImageView", "GREY", "LatentPanel", "TileView", "fill_dim_combo", "fill_patient_combo",
           "labelled_row", "orientation_letters"]
