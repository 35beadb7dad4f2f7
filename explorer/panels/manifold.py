"""Manifold tab (SPEC F18, thesis 4.4): the n×n grid of decoded images over two latent
dimensions, with the encoded patients drawn over it.

The grid is training.latent.encode.manifold: positions z_i = σz Φ⁻¹((i + ½)/n) along both chosen
dimensions (dims[0] → x axis, dims[1] → y axis, increasing upward), the other dimensions
held at 0 or at a chosen patient's µ. The plot's axes are z values: each decoded image
is a square tile centred on its code (side = the smallest gap between positions,
training.explore.latent.tile_side, so tiles touch at the prior's centre and spread out in
its tails), drawn right way up (row 0, anterior, at the tile's top;
the patient's left on the tile's right). Patients are their aggregate posteriors
(training.explore.latent.encode_patients, "mixture"): a point at µ and the 1σ ellipse of
the 2-D marginal. Clicking a tile opens it large beside the grid with its full code and
the patients under whose posterior that code is most probable (−log q_i(z), nats;
training.explore.latent.nearest_to_code). The grid follows the current checkpoint.

Layout "tiled (prior quantiles)" shows the same grid as a seamless mosaic (thesis fig.
4.x style): the axes are u = n·Φ(z/σz) (training.explore.latent.quantile_coord), ticks
labelled with the z values of the grid positions, and patients and ellipses are mapped
through the same monotone function, so they keep their place relative to the tiles.
"""

from __future__ import annotations

import time

import numpy as np

from explorer.qt import Qt, QtGui, QtWidgets, pg
from explorer.widgets.latent_canvas import (CTImageView, LatentPanel, fill_dim_combo, fill_patient_combo,
                                            labelled_row)

ZERO = "zero (prior mean)"
PATIENT_COLOUR = (220, 40, 40)
SELECTED_COLOUR = (255, 170, 0)  # the patient picked in the patient list


class ManifoldPanel(LatentPanel):
    title = "Manifold"
    tooltip = "Decoded images on a grid over two latent dimensions, with the encoded patients"

    def __init__(self, state, parent=None) -> None:
        super().__init__(state, parent)
        self.n_spin = QtWidgets.QSpinBox()
        self.n_spin.setRange(2, 31)
        self.n_spin.setValue(15)
        self.n_spin.setToolTip("Images per side: positions σz·Φ⁻¹((i+½)/n)")
        self.dim_x = QtWidgets.QComboBox()
        self.dim_y = QtWidgets.QComboBox()
        self.dim_x.setToolTip("Latent dimension along the x axis")
        self.dim_y.setToolTip("Latent dimension along the y axis")
        self.base = QtWidgets.QComboBox()
        self.base.setToolTip("What the other latent dimensions are held at")
        self.base.addItem(ZERO)
        self.layout_mode = QtWidgets.QComboBox()
        self.layout_mode.addItem("z (linear)", "z")
        self.layout_mode.addItem("tiled (prior quantiles)", "quantile")
        self.layout_mode.setToolTip("Axes in z (tiles at their codes) or a seamless mosaic on the "
                                    "prior's quantile scale n·Φ(z/σz), ticks labelled in z")
        self.show_patients = QtWidgets.QCheckBox("Patients (µ, 1σ)")
        self.show_patients.setChecked(True)

        self.view = pg.GraphicsLayoutWidget()
        self.plot = self.view.addPlot(title="Manifold")
        self.plot.setAspectLocked(True)
        self.plot.setMenuEnabled(False)
        self.plot.showGrid(False, False)
        self.plot.getAxis("left").setWidth(56)  # room for tick labels and the rotated label
        self.hover = pg.TextItem("", color=(0, 0, 0), anchor=(0, 1), fill=pg.mkBrush(255, 255, 255, 200))
        self.hover.setZValue(20)
        self.hover.setVisible(False)  # an empty TextItem still paints its filled box
        self.plot.addItem(self.hover, ignoreBounds=True)
        self.points = pg.ScatterPlotItem(size=7, pen=pg.mkPen("w", width=1), brush=pg.mkBrush(*PATIENT_COLOUR))
        self.points.setZValue(10)
        self.plot.addItem(self.points)
        self.ellipses: list[pg.PlotCurveItem] = []
        self.tiles: list[pg.ImageItem] = []
        self.selection = pg.PlotCurveItem(pen=pg.mkPen((255, 200, 0), width=2))
        self.selection.setZValue(15)
        self.plot.addItem(self.selection)
        self.view.scene().sigMouseMoved.connect(self._moved)
        self.view.scene().sigMouseClicked.connect(self._clicked)

        self.cell_view = CTImageView("Cell")
        self.cell_info = QtWidgets.QLabel("Click a tile to see it here.")
        self.cell_info.setWordWrap(True)
        self.cell_info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.cell_info.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)

        self.export = self.export_button(self.view, "manifold", table=self.table)
        # what the mouse points at is not part of the figure
        self.export.hide_while_exporting(self.hover, self.selection)
        self.key = QtWidgets.QLabel(
            f'<span style="color: rgb{PATIENT_COLOUR}">●</span> a patient\'s posterior mean µ with its '
            f'1σ ellipse (2-D marginal) &nbsp; <span style="color: rgb{SELECTED_COLOUR}">●</span> the patient '
            'selected in the list &nbsp; <span style="color: rgb(255, 200, 0)">□</span> the tile shown on the right')
        self.key.setWordWrap(True)
        self.outside = QtWidgets.QLabel()  # patients whose µ lies outside the grid
        self.outside.setWordWrap(True)
        self.key.setToolTip("Patients are their aggregate posteriors over all their images (mixture)")
        self.add_generated_exports(self.export, self._generated)
        self.cell_export = self.export_button(self.cell_view, "manifold-cell", table=self.cell_view.table)
        self.add_generated_exports(self.cell_export, self._generated_cell)

        side = QtWidgets.QWidget()
        sl = QtWidgets.QVBoxLayout(side)
        sl.setContentsMargins(0, 0, 0, 0)
        sl.addWidget(self.cell_view, 3)
        sl.addWidget(self.cell_info, 2)
        sl.addLayout(labelled_row(None, self.cell_export))
        split = QtWidgets.QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.view)
        split.addWidget(side)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        split.setSizes([700, 280])
        self.splitter = split

        lay = QtWidgets.QVBoxLayout(self)
        lay.addLayout(labelled_row("n:", self.n_spin, "x:", self.dim_x, "y:", self.dim_y,
                                   "other dims at:", self.base, "axes:", self.layout_mode, self.show_patients,
                                   None, self.export))
        lay.addWidget(split, 1)
        lay.addWidget(self.key)
        lay.addWidget(self.outside)
        lay.addWidget(self.status)

        for w in (self.n_spin,):
            w.valueChanged.connect(self.refresh)
        for c in (self.dim_x, self.dim_y, self.base):
            c.currentIndexChanged.connect(self.refresh)
        self.show_patients.toggled.connect(self._draw_patients)
        self.layout_mode.currentIndexChanged.connect(self._relayout)
        self.result = None
        self.selected: tuple[int, int] | None = None

    # -- work --------------------------------------------------------------------------
    def request(self) -> dict | None:
        req = self.base_request()
        if req is None:
            return None
        dx, dy = self.dim_x.currentIndex(), self.dim_y.currentIndex()
        req.update(n=self.n_spin.value(), dims=(dx if dx >= 0 else 0, dy if dy >= 0 else 1),
                   base=self.base.currentText())
        return req

    @staticmethod
    def compute(req: dict) -> dict:
        from training.latent import encode as latent
        from training.explore import latent as latent_views

        lm = latent_views.load_latent_model(req["checkpoint"])
        d0, d1 = latent_views.two_dims(lm.latent_dim, req["dims"], "the manifold")
        t_enc = time.perf_counter()
        wl = LatentPanel.encode_optional(lm, req["workspace"])
        base = None
        if req["base"] != ZERO and wl is not None and req["base"] in wl.names:
            base = wl.patient_mu(req["base"])
        t0 = time.perf_counter()
        encode_ms = (t0 - t_enc) * 1000.0  # ~0 when the encoding is cached
        m = latent.manifold(lm.model, n=req["n"], dims=(d0, d1), base=base,
                            prior_sigma2=lm.prior_sigma2, decoder=lm.decoder)
        t1 = time.perf_counter()
        ct = latent_views.display_slice(m.images, lm.spatial_dims)
        lab = latent_views.display_slice(m.labels, lm.spatial_dims)
        shown = latent_views.display_rgb(ct, lab, lm.n_classes) if lab is not None else ct
        return {"decode_ms": (t1 - t0) * 1000.0, "encode_ms": encode_ms, "overlay_ms": (time.perf_counter() - t1) * 1000.0,"manifold": m, "shown": shown, "lm": lm, "wl": wl, "base_name": req["base"] if base is not None else ZERO,
                "side": latent_views.tile_side(m.positions)}

    # -- display -----------------------------------------------------------------------
    def show_result(self, r: dict) -> None:
        self.result = r
        lm, m = r["lm"], r["manifold"]
        fill_dim_combo(self.dim_x, lm.latent_dim, 0)
        fill_dim_combo(self.dim_y, lm.latent_dim, 1)
        fill_patient_combo(self.base, r["wl"].names if r["wl"] is not None else [], [ZERO])
        d0, d1 = m.dims
        n = len(m.positions)
        shown = r["shown"]
        while len(self.tiles) < n * n:
            it = pg.ImageItem()
            self.plot.addItem(it)
            self.tiles.append(it)
        for it in self.tiles[n * n:]:
            it.setVisible(False)
        rgb = shown.ndim == 5
        levels = (0, 255) if rgb else (0.0, 1.0)
        for k in range(n * n):
            self.tiles[k].setImage(shown[k // n, k % n], autoLevels=False, levels=levels)
        self.plot.setTitle(f"Manifold over z{d0}, z{d1}: {n}×{n} at σz·Φ⁻¹((i+½)/n) — epoch {lm.epoch}")
        self._relayout()
        if self.selected is not None and self.selected[0] < n and self.selected[1] < n:
            self.select_cell(*self.selected)
        else:
            self.selected = None
            self.selection.setData([], [])
        kind = "CT + RT" + self.legend(lm) if lm.n_classes else "CT only"
        enc = f", encoding the workspace {r['encode_ms']:.0f} ms" if r["encode_ms"] > 50 else ""
        self.set_status(f"{n}×{n} images in {self.last_ms:.0f} ms (decoding {r['decode_ms']:.0f} ms{enc}) · {kind} model, "
                        f"J = {lm.latent_dim}, σz² = {lm.prior_sigma2:g}"
                        + ("" if r["wl"] is not None else " · no workspace encoded (no patients shown)"))

    def quantile_layout(self) -> bool:
        return self.layout_mode.currentData() == "quantile"

    def to_plot(self, z) -> np.ndarray:
        """Latent values → plot coordinates of the current layout."""
        if not self.quantile_layout():
            return np.asarray(z, np.float64)
        from training.explore.latent import quantile_coord

        return quantile_coord(z, len(self.result["manifold"].positions), self.result["lm"].prior_sigma2)

    def to_z(self, u) -> np.ndarray:
        if not self.quantile_layout():
            return np.asarray(u, np.float64)
        from training.explore.latent import quantile_to_z

        return quantile_to_z(u, len(self.result["manifold"].positions), self.result["lm"].prior_sigma2)

    def _relayout(self) -> None:
        """Place the tiles, axes, patients and selection for the chosen layout."""
        r = self.result
        if r is None:
            return
        m = r["manifold"]
        d0, d1 = m.dims
        n = len(m.positions)
        h, w = r["shown"].shape[2:4]
        if self.quantile_layout():
            self._centres, self._side = np.arange(n) + 0.5, 0.96  # a thin white line between tiles
        else:
            self._centres, self._side = np.asarray(m.positions, np.float64), r["side"]
        side = self._side
        for k in range(n * n):
            row, col = divmod(k, n)
            cx, cy = self._centres[col], self._centres[n - 1 - row]
            # y points up in this plot: flip each tile so its row 0 (anterior) is on top
            tr = QtGui.QTransform()
            tr.translate(cx - side / 2, cy + side / 2)
            tr.scale(side / w, -side / h)
            self.tiles[k].setTransform(tr)
            self.tiles[k].setVisible(True)
        if self.quantile_layout():
            step = max(1, n // 8)
            ticks = [[(float(self._centres[i]), f"{m.positions[i]:.2f}") for i in range(0, n, step)]]
            for ax in ("bottom", "left"):
                self.plot.getAxis(ax).setTicks(ticks)
            scale = " (prior quantile scale)"
        else:
            for ax in ("bottom", "left"):
                self.plot.getAxis(ax).setTicks(None)
            scale = ""
        self.plot.setLabel("bottom", f"z{d0}{scale}  (other dims: {r['base_name']})")
        self.plot.setLabel("left", f"z{d1}{scale}")
        self._draw_patients()
        # The grid sets the view: patients far out in the tails would otherwise shrink the
        # tiles to a patch of a few pixels. Those outside are counted in the status line.
        lim_hi = self._centres[-1] + side / 2
        lim_lo = self._centres[0] - side / 2
        self.plot.setRange(xRange=(lim_lo, lim_hi), yRange=(lim_lo, lim_hi), padding=0.02)
        if self.selected is not None:
            self._draw_selection()

    def _draw_patients(self) -> None:
        from training.explore.latent import sigma_ellipse

        for e in self.ellipses:
            self.plot.removeItem(e)
        self.ellipses = []
        r = self.result
        if r is None or r["wl"] is None or not self.show_patients.isChecked():
            self.points.setData([], [])
            self.outside.setVisible(False)
            return
        d0, d1 = r["manifold"].dims
        pp = r["wl"].patients
        mu, sd = pp.mu[:, [d0, d1]], pp.sigma[:, [d0, d1]]
        # Patients whose µ lies outside the grid: on the z scale they are drawn where they
        # are, outside the view the grid sets (zoom out to see them); on the quantile scale
        # they would be squashed against the frame as distorted ellipses, so they are left
        # out there. The status line counts them either way.
        pos = np.asarray(r["manifold"].positions, np.float64)
        half = r["side"] / 2
        inside = np.all((mu >= pos[0] - half) & (mu <= pos[-1] + half), axis=1)
        self.patients_outside = [name for name, ok in zip(pp.names, inside) if not ok]
        keep = inside if self.quantile_layout() else np.ones(len(mu), bool)
        names = [name for name, ok in zip(pp.names, keep) if ok]
        mu, sd = mu[keep], sd[keep]
        out = self.patients_outside
        self.outside.setText(
            f"{len(out)} patient(s) with µ outside the grid (beyond ±{float(np.max(np.abs(pos))):.2f}), "
            + ("not drawn on the quantile scale: " if self.quantile_layout() else "outside the view (zoom out): ")
            + ", ".join(out[:6]) + (" …" if len(out) > 6 else "") if out else "")
        self.outside.setVisible(bool(out))
        xy = self.to_plot(mu)
        chosen = [name == self.state.selected_patient for name in names]
        self.points.setData(x=xy[:, 0], y=xy[:, 1], data=names,
                            brush=[pg.mkBrush(*(SELECTED_COLOUR if c else PATIENT_COLOUR)) for c in chosen],
                            size=[11 if c else 7 for c in chosen],
                            tip=lambda x, y, data: f"{data}\nµ = ({self.to_z(x):.3f}, {self.to_z(y):.3f})")
        for i in range(len(mu)):
            ring = sigma_ellipse(mu[i], sd[i])
            if self.quantile_layout():
                # the parts of the 1σ ellipse beyond the grid are left out rather than
                # pressed against the frame by the quantile scale
                beyond = np.any((ring < pos[0] - half) | (ring > pos[-1] + half), axis=1)
                ring = np.where(beyond[:, None], np.nan, ring)
            pts = self.to_plot(ring)
            colour = SELECTED_COLOUR if chosen[i] else PATIENT_COLOUR
            e = pg.PlotCurveItem(pts[:, 0], pts[:, 1], connect="finite",
                                 pen=pg.mkPen(*colour, width=2.4 if chosen[i] else 1.2))
            e.setZValue(9)
            self.plot.addItem(e)
            self.ellipses.append(e)

    patients_outside: list = []

    def on_patient_selected(self, pseudonym: str) -> None:
        self._draw_patients()  # highlight the patient picked in the list

    # -- interaction -------------------------------------------------------------------
    def cell_at(self, x: float, y: float) -> tuple[int, int] | None:
        """(row, column) of the tile containing plot point (x, y), or None."""
        if self.result is None:
            return None
        pos, side = self._centres, self._side
        n = len(pos)
        c = int(np.argmin(np.abs(pos - x)))
        k = int(np.argmin(np.abs(pos - y)))
        if abs(pos[c] - x) > side / 2 or abs(pos[k] - y) > side / 2:
            return None
        return n - 1 - k, c

    def cell_centre(self, row: int, col: int) -> tuple[float, float]:
        """Plot coordinates of tile (row, col)'s centre in the current layout."""
        return float(self._centres[col]), float(self._centres[len(self._centres) - 1 - row])

    def _moved(self, scene_pos) -> None:
        if self.result is None or not self.plot.vb.sceneBoundingRect().contains(scene_pos):
            self.hover.setVisible(False)
            return
        p = self.plot.vb.mapSceneToView(scene_pos)
        d0, d1 = self.result["manifold"].dims
        zx, zy = (float(v) for v in self.to_z([p.x(), p.y()]))
        text = f"z{d0} = {zx:.3f}, z{d1} = {zy:.3f}"
        cell = self.cell_at(p.x(), p.y())
        if cell is not None:
            code = self.result["manifold"].codes[cell]
            text += f"\ntile ({cell[0]}, {cell[1]}): z{d0} = {code[d0]:.3f}, z{d1} = {code[d1]:.3f}"
        self.hover.setText(text)
        self.hover.setPos(p.x(), p.y())
        self.hover.setVisible(True)

    def _clicked(self, ev) -> None:
        if self.result is None or ev.button() != Qt.MouseButton.LeftButton:
            return
        p = self.plot.vb.mapSceneToView(ev.scenePos())
        cell = self.cell_at(p.x(), p.y())
        if cell is not None:
            self.select_cell(*cell)

    def select_cell(self, row: int, col: int) -> np.ndarray:
        """Show tile (row, col) large with its code and nearest patients; returns its code."""
        from training.explore.latent import nearest_to_code

        r = self.result
        m = r["manifold"]
        self.selected = (row, col)
        z = m.codes[row, col]
        self.cell_code = z
        self.cell_view.set_image(r["shown"][row, col], autorange=True)
        d0, d1 = m.dims
        # Short: a long title widens the plot past its narrow side pane (the full z is below).
        self.cell_view.set_title(f"z{d0} = {z[d0]:.3f}, z{d1} = {z[d1]:.3f}")
        self._draw_selection()
        lines = ["<b>z</b> = (" + ", ".join(f"{v:.3f}" for v in z) + ")"]
        if r["wl"] is not None:
            pp = r["wl"].patients
            near = nearest_to_code(z, pp.mu, pp.logvar, k=5)
            self.cell_neighbours = [(pp.names[i], v) for i, v in near]
            lines.append("<b>Nearest patients</b> by −log q<sub>i</sub>(z) (nats, all "
                         f"{len(z)} dims; lower = more probable under that patient's posterior):")
            lines += [f"&nbsp;&nbsp;{name}: {v:.2f}" for name, v in self.cell_neighbours]
        else:
            self.cell_neighbours = []
        self.cell_info.setText("<br>".join(lines))
        return z

    def _draw_selection(self) -> None:
        cx, cy = self.cell_centre(*self.selected)
        s = self._side / 2
        self.selection.setData([cx - s, cx + s, cx + s, cx - s, cx - s], [cy - s, cy - s, cy + s, cy + s, cy - s])

    # -- exports -------------------------------------------------------------------------
    def table(self):
        r = self.result
        if r is None:
            return (["row", "col"], [])
        m = r["manifold"]
        n, j = m.codes.shape[0], m.codes.shape[2]
        rows = [[i, c, *m.codes[i, c].tolist()] for i in range(n) for c in range(n)]
        table_rows = rows
        if r["wl"] is not None:
            pp = r["wl"].patients
            table_rows = rows + [[f"patient {name}", "µ", *pp.mu[k].tolist()] for k, name in enumerate(pp.names)] \
                + [[f"patient {name}", "σ", *pp.sigma[k].tolist()] for k, name in enumerate(pp.names)]
        return (["row", "col"] + [f"z{k}" for k in range(j)], table_rows)

    def _generated(self):
        r = self.result
        if r is None:
            return None
        m = r["manifold"]
        n = m.codes.shape[0]
        lab = None if m.labels is None else m.labels.reshape(n * n, *m.labels.shape[2:])
        return m.images.reshape(n * n, *m.images.shape[2:]), lab, "manifold"

    def _generated_cell(self):
        r = self.result
        if r is None or self.selected is None:
            return None
        m = r["manifold"]
        i, c = self.selected
        return m.images[i, c][None], None if m.labels is None else m.labels[i, c][None], f"manifold_r{i}_c{c}"


PANEL = ManifoldPanel
