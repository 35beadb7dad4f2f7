"""The Help menu's texts: keyboard shortcuts (read from the window's own actions and
buttons, so the list cannot drift), a short guide to each tab, and the versions in About."""

from __future__ import annotations

import html
import platform

from explorer.qt import QtGui, QtWidgets

# One paragraph per tab, by tab title; tabs without an entry show their tooltip.
TAB_GUIDE = {
    "Data": "Preprocessing of the workspace: HU window, crop or resize, which slices, 2D slices or 3D "
            "volumes, which ROIs. The preview shows the selected patient with the settings on the left "
            "(slider: slice and its z in mm). <i>Apply to workspace</i> re-derives every patient.",
    "Train": "Model and training settings, Start / Pause / Stop, and Continue (more epochs for the run "
             "shown, same folder). Curves are losses per image in nats (solid train, dashed test); below, "
             "fixed train and test images over their reconstructions, with a slider back through earlier "
             "epochs. Each figure has its own Export button.",
    "Manifold": "Decoded images on a grid over two latent dimensions at the prior's quantiles, with each "
                "patient's posterior mean and 1σ ellipse. Click a tile to see it large with its code and the "
                "patients under whose posterior it is most probable.",
    "Interpolation": "Decoded images along a straight line (or on the prior's sphere) between two patients' "
                     "codes.",
    "Samples": "Images decoded from codes drawn from the prior or from the patients' aggregate posterior.",
    "Density": "The density of the patients' codes over two latent dimensions.",
    "Volume": "A patient's input beside its reconstruction, a generated stack or an interpolation, slice by "
              "slice. Mouse wheel: next / previous slice; Ctrl + wheel: zoom; drag: pan. Window presets "
              "show their HU range.",
    "Similarity": "KL divergences between the patients' posteriors (direction stated), the nearest patients "
                  "of the one selected, and identification across slices.",
    "Query": "Find similar patients: drop a new patient's folder on this tab (or File ▸ Find similar "
             "patients…, Ctrl+F). It is ingested with the workspace's settings, stored apart as a query (never trained on), "
             "encoded with the current model and ranked against every earlier patient by KL divergence "
             "(the direction chosen in the tab), beside the Euclidean and pixel baselines; its slices are "
             "shown beside each match's, with each ROI's volume. \"Move into cohort\" makes it training data.",
}


def shortcuts(window: QtWidgets.QMainWindow) -> list[tuple[str, str]]:
    """(key sequence, what it does) for every menu action and button of the window."""
    seen: dict[str, str] = {}
    for act in window.findChildren(QtGui.QAction):
        key = act.shortcut().toString(QtGui.QKeySequence.SequenceFormat.NativeText)
        if key and key not in seen:
            seen[key] = act.text().replace("&", "").rstrip("…") or act.toolTip()
    for button in window.findChildren(QtWidgets.QAbstractButton):
        key = button.shortcut().toString(QtGui.QKeySequence.SequenceFormat.NativeText)
        if key and key not in seen:
            tab = _tab_of(window, button)
            seen[key] = f"{button.text().replace('&', '')}{f' ({tab} tab)' if tab else ''}"
    rows = sorted(seen.items(), key=lambda kv: kv[1].lower())
    rows += [("Mouse wheel", "next / previous slice (Volume tab)"),
             ("Ctrl + mouse wheel", "zoom (Volume tab; other image views zoom with the wheel)")]
    return rows


def _tab_of(window, widget) -> str:
    tabs = getattr(window, "tabs", None)
    if tabs is None:
        return ""
    for i in range(tabs.count()):
        if tabs.widget(i).isAncestorOf(widget):
            return tabs.tabText(i)
    return ""


def shortcuts_html(window) -> str:
    rows = "".join(f"<tr><td><b>{html.escape(k)}</b>&nbsp;&nbsp;</td><td>{html.escape(v)}</td></tr>"
                   for k, v in shortcuts(window))
    return f"<table>{rows}</table>"


def guide_html(window) -> str:
    parts = ["<p>Drop DICOM folders (CT with their RT Structure Sets) on the window: every file below "
             "them is read, grouped into series and listed as patients; files that cannot be used are "
             "listed under <i>Skipped files</i> with the reason. Then:</p>"]
    tabs = getattr(window, "tabs", None)
    for i in range(tabs.count() if tabs is not None else 0):
        title = tabs.tabText(i)
        text = TAB_GUIDE.get(title) or html.escape(tabs.tabToolTip(i) or "")
        parts.append(f"<p><b>{html.escape(title)}</b> — {text}</p>")
    parts.append("<p>File ▸ Export current view saves the tab's figure (PNG, SVG, PDF) or its numbers "
                 "(CSV); the Export buttons in the tabs do the same for each figure.</p>")
    return "".join(parts)


def versions() -> list[tuple[str, str]]:
    """(package, version) of the application and the libraries whose numbers matter."""
    from importlib import metadata

    out = []
    try:
        import training

        out.append(("ct-vae-explorer", training.__version__))
    except (ImportError, AttributeError):
        pass
    out.append(("Python", platform.python_version()))
    for dist in ("PySide6", "pyqtgraph", "torch", "numpy", "pydicom", "h5py", "scipy"):
        try:
            out.append((dist, metadata.version(dist)))
        except metadata.PackageNotFoundError:
            try:  # PySide6 may be installed as PySide6-Essentials: ask the module
                out.append((dist, str(__import__(dist).__version__)))
            except (ImportError, AttributeError):
                pass
    try:
        from explorer.qt import QtCore

        out.append(("Qt (runtime)", QtCore.qVersion()))
    except Exception:  # a version line is a nicety
        pass
    return out


def about_html() -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}&nbsp;&nbsp;</td><td>{html.escape(v)}</td></tr>" for k, v in versions())
    return ("<b>CT VAE Explorer</b><p>Drop CT scans (DICOM + RTSTRUCT), train a variational "
            "autoencoder on them and explore its latent space.</p>"
            f"<table>{rows}</table>")


def show_text(parent, title: str, body_html: str) -> QtWidgets.QDialog:
    """A non-modal, resizable window with scrollable rich text."""
    dialog = QtWidgets.QDialog(parent)
    dialog.setWindowTitle(title)
    view = QtWidgets.QTextBrowser()
    view.setHtml(body_html)
    view.setOpenExternalLinks(True)
    buttons = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Close)
    buttons.rejected.connect(dialog.close)
    lay = QtWidgets.QVBoxLayout(dialog)
    lay.addWidget(view)
    lay.addWidget(buttons)
    dialog.resize(560, 520)
    dialog.show()
    return dialog
