"""Density tab (SPEC F21, thesis 4.5): the aggregate posterior beside the prior.

Left: the 2-D marginal over two chosen latent dimensions of p̃(z) = (1/N) Σ_n q(z|x_n),
the mixture of the posteriors of every encoded image of the workspace; right: the prior
N(0, σz² I) on the same grid (training.latent.sampling.density_grid; probability per unit area
of latent space). Both use the same colour scale, so they can be compared by eye; the
encoded images' µ are drawn over both. Axes are z values, y increasing upward.
"""

from __future__ import annotations

import numpy as np

from explorer.qt import QtCore, QtWidgets, pg
from explorer.widgets.latent_canvas import LatentPanel, fill_dim_combo, labelled_row


class DensityPanel(LatentPanel):
    title = "Density"
    tooltip = "Aggregate posterior p̃(z) over two latent dimensions beside the prior"
    needs_workspace = True

    def __init__(self, state, parent=None) -> None:
        super().__init__(state, parent)
        self.dim_x = QtWidgets.QComboBox()
        self.dim_y = QtWidgets.QComboBox()
        self.grid_n = QtWidgets.QSpinBox()
        self.grid_n.setRange(11, 401)
        self.grid_n.setValue(101)
        self.grid_n.setToolTip("Grid points per axis")
        self.extent = QtWidgets.QDoubleSpinBox()
        self.extent.setRange(0.5, 20.0)
        self.extent.setValue(4.0)
        self.extent.setSingleStep(0.5)
        self.extent.setSuffix(" σz")
        self.extent.setToolTip("Half-width of the grid in prior standard deviations")
        self.show_points = QtWidgets.QCheckBox("Encoded images (µ)")
        self.show_points.setChecked(True)

        self.view = pg.GraphicsLayoutWidget()
        self.plots, self.items, self.scatters = [], [], []
        cmap = pg.colormap.get("viridis")
        for k, title in enumerate(("Aggregate posterior p̃(z)", "Prior N(0, σz² I)")):
            plot = self.view.addPlot(row=0, col=k, title=title)
            plot.setAspectLocked(True)
            plot.setMenuEnabled(False)
            item = pg.ImageItem()
            item.setColorMap(cmap)
            plot.addItem(item)
            sc = pg.ScatterPlotItem(size=4, pen=None, brush=pg.mkBrush(255, 255, 255, 160))
            plot.addItem(sc)
            self.plots.append(plot)
            self.items.append(item)
            self.scatters.append(sc)
        # one colour bar for both: they share the colour scale so they can be compared
        self.bar = pg.ColorBarItem(colorMap=cmap, interactive=False, label="density (per unit area of z)")
        self.bar.setImageItem(self.items)
        self.view.addItem(self.bar, row=0, col=2)
        self.export = self.export_button(self.view, "density", table=self.table)

        lay = QtWidgets.QVBoxLayout(self)
        lay.addLayout(labelled_row("x:", self.dim_x, "y:", self.dim_y, "grid:", self.grid_n, "extent ±", self.extent,
                                   self.show_points, None, self.export))
        lay.addWidget(self.view, 1)
        lay.addWidget(self.status)
        for c in (self.dim_x, self.dim_y):
            c.currentIndexChanged.connect(self.refresh)
        self.grid_n.valueChanged.connect(self.refresh)
        self.extent.valueChanged.connect(self.refresh)
        self.show_points.toggled.connect(self._draw_points)
        self.result = None

    def request(self) -> dict | None:
        req = self.base_request()
        if req is None:
            return None
        dx, dy = self.dim_x.currentIndex(), self.dim_y.currentIndex()
        req.update(dims=(dx if dx >= 0 else 0, dy if dy >= 0 else 1), n=self.grid_n.value(),
                   extent=self.extent.value())
        return req

    @staticmethod
    def compute(req: dict) -> dict:
        from training.explore import latent as latent_views
        from training.latent import sampling

        lm = latent_views.load_latent_model(req["checkpoint"])
        d0, d1 = latent_views.two_dims(lm.latent_dim, req["dims"], "the density view")
        wl = latent_views.encode_patients(lm, req["workspace"])
        sd = float(np.sqrt(lm.prior_sigma2))
        grid = sampling.density_grid(wl.encoded.mu, wl.encoded.logvar, (d0, d1), n=req["n"],
                                     extent=req["extent"] * sd, prior_sigma2=lm.prior_sigma2)
        return {"lm": lm, "wl": wl, "grid": grid}

    def show_result(self, r: dict) -> None:
        self.result = r
        lm, g = r["lm"], r["grid"]
        fill_dim_combo(self.dim_x, lm.latent_dim, 0)
        fill_dim_combo(self.dim_y, lm.latent_dim, 1)
        d0, d1 = g.dims
        top = float(max(g.density.max(), g.prior.max()))
        dx = (g.x[-1] - g.x[0]) / max(len(g.x) - 1, 1)
        dy = (g.y[-1] - g.y[0]) / max(len(g.y) - 1, 1)
        # density[r, c] is at (x[c], y[r]) with y ascending: row 0 at the bottom of a y-up plot
        rect = QtCore.QRectF(g.x[0] - dx / 2, g.y[0] - dy / 2, dx * len(g.x), dy * len(g.y))
        self.bar.setLevels((0.0, top))
        for plot, item, arr in zip(self.plots, self.items, (g.density, g.prior)):
            item.setImage(arr.astype(np.float32), autoLevels=False, levels=(0.0, top))
            item.setRect(rect)
            plot.setLabel("bottom", f"z{d0}")
            plot.setLabel("left", f"z{d1}")
            plot.setRange(xRange=(g.x[0], g.x[-1]), yRange=(g.y[0], g.y[-1]), padding=0)
        n_img = len(r["wl"].encoded.mu)
        self.plots[0].setTitle(f"Aggregate posterior p̃(z) of {n_img} encoded images — epoch {lm.epoch}")
        self.plots[1].setTitle(f"Prior N(0, {lm.prior_sigma2:g}·I)")
        self._draw_points()
        self.set_status(f"marginals over z{d0}, z{d1} on a {len(g.x)}×{len(g.y)} grid in {self.last_ms:.0f} ms; "
                        "same colour scale on both")

    def _draw_points(self) -> None:
        r = self.result
        for sc in self.scatters:
            if r is None or not self.show_points.isChecked():
                sc.setData([], [])
            else:
                d0, d1 = r["grid"].dims
                mu = r["wl"].encoded.mu
                sc.setData(x=mu[:, d0], y=mu[:, d1])

    def arrays(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(p̃, prior) as shown, (ny, nx), row 0 = lowest y."""
        if self.result is None:
            return None
        return self.items[0].image, self.items[1].image

    def table(self):
        r = self.result
        if r is None:
            return (["x", "y"], [])
        g = r["grid"]
        d0, d1 = g.dims
        yy, xx = np.meshgrid(g.y, g.x, indexing="ij")
        return {f"z{d0}": xx.ravel(), f"z{d1}": yy.ravel(), "aggregate_posterior": g.density.ravel(),
                "prior": g.prior.ravel()}


PANEL = DensityPanel
