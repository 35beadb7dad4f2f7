"""A query's answer as a report a person reads: one PNG and the same page as PDF
(`ct-vae query --out REPORT/`), plus the ranking and ROI-volume CSVs with their JSON sidecars.

Drawn with Pillow (a dependency of scikit-image), so it runs without a screen or Qt.
The page: what was asked and how it was measured (divergence direction, position method,
baselines), the top matches as a table, the query's and each match's images side by side
at the paired positions with ROI overlays, and each ROI's volume for the query and the
match. Only pseudonyms appear.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from training.explore import query as xq

CELL = 176  # px of one image cell
# Pillow's built-in font has no glyphs for these; the page is written in ASCII throughout
# (the same on every machine, whatever fonts it has).
_ASCII = str.maketrans({"‖": "||", "—": "-", "–": "-", "−": "-", "³": "^3", "µ": "mu", "σ": "sigma",
                        "≤": "<=", "²": "^2", "…": "..."})


def ascii_text(text: str) -> str:
    return str(text).translate(_ASCII).encode("ascii", "replace").decode()
MARGIN = 24
LINE = 18


def _font(size: int = 14):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _rgb(ct, labels, n_classes: int) -> np.ndarray:
    from training.images import overlay_labels, roi_colour_table

    colours = roi_colour_table(max(n_classes + 1, 2, (int(labels.max()) + 1) if labels is not None and labels.size else 0))
    return overlay_labels(ct, labels, colours)


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}g}"


def render(answer: "xq.QueryAnswer"):
    """The report page as a PIL RGB image."""
    from PIL import Image, ImageDraw

    from training.images import roi_colour_table

    a = answer
    font, bold, small = _font(14), _font(18), _font(12)
    n_pos = len(a.query_images_shown)
    label_w = 230
    width = max(MARGIN * 2 + label_w + n_pos * (CELL + 8), 1180)
    import textwrap

    header0 = [
        f"Query {a.query}: the most similar earlier patients ({a.n_cohort} in the cohort; "
        f"{a.n_query_images} query image(s); patient posterior: {a.aggregate})",
        f"Ranked by {a.definition}",
        f"Images paired by position — {a.position_method}",
        f"Baselines: {xq.EUCLID_TEXT}; {xq.PIXEL_L2_TEXT}",
        f"{xq.VOLUME_TEXT}",
    ]
    header = [w for line in header0 for w in textwrap.wrap(ascii_text(line), 170, subsequent_indent="    ")]
    cols = ["rank", "entry", "patient", "KL(q‖q_j)", "KL(q_j‖q)", "symmetric", "Euclid µ (rank)",
            "pixel L2 (rank)", "split"]
    col_x = [0, 50, 160, 350, 460, 570, 680, 830, 980]
    table_h = LINE * (len(a.matches) + 2)
    grid_h = (len(a.matches) + 1) * (CELL + 30) + 30
    n_vol_rows = sum(len(m.volumes) + 1 for m in a.matches)
    vol_h = LINE * (n_vol_rows + 2)
    height = MARGIN * 2 + 28 + LINE * len(header) + 16 + table_h + 16 + grid_h + vol_h + 40
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    _text = d.text

    def text(xy, t, **kw):
        _text(xy, ascii_text(t), **kw)

    d.text = text  # every string on the page goes through ascii_text
    y = MARGIN
    d.text((MARGIN, y), f"Find similar patients — {a.query}", fill="black", font=bold)
    y += 28
    for line in header:
        d.text((MARGIN, y), line, fill=(40, 40, 40), font=small)
        y += LINE
    y += 16
    for c, x in zip(cols, col_x):
        d.text((MARGIN + x, y), c, fill="black", font=font)
    y += LINE + 2
    d.line((MARGIN, y - 2, width - MARGIN, y - 2), fill=(160, 160, 160))
    for m in a.matches:
        same = " (same patient)" if m.same_patient else ""
        vals = [str(m.rank), m.name, m.patient + same, _fmt(m.kl_query), _fmt(m.kl_reverse), _fmt(m.symmetric),
                f"{_fmt(m.euclid)} ({m.euclid_rank})", f"{_fmt(m.pixel_l2)} ({m.pixel_rank})", m.split]
        for v, x in zip(vals, col_x):
            d.text((MARGIN + x, y), v, fill="black", font=font)
        y += LINE
    y += 16 + LINE

    # images: query row, then each match
    def cell(x0, y0, ct, lab, caption):
        rgb = _rgb(ct, lab, a.n_classes)
        im = Image.fromarray(rgb).resize((CELL, CELL), Image.NEAREST)
        img.paste(im, (x0, y0))
        d.text((x0, y0 + CELL + 2), caption, fill=(40, 40, 40), font=small)

    x_img = MARGIN + label_w
    what = "depth" if a.spatial_dims == 3 else "slice"
    d.text((MARGIN, y), "query", fill="black", font=bold)
    d.text((MARGIN, y + 24), a.query, fill="black", font=font)
    for c in range(n_pos):
        lab = None if a.query_labels is None else a.query_labels[c]
        cell(x_img + c * (CELL + 8), y, a.query_images[c], lab, f"{what} {a.query_images_shown[c] + 1}")
    y += CELL + 30
    for m in a.matches:
        d.text((MARGIN, y), f"#{m.rank} {m.name}", fill="black", font=bold)
        d.text((MARGIN, y + 24), f"KL {_fmt(m.divergence)}", fill="black", font=font)
        if m.same_patient:
            d.text((MARGIN, y + 24 + LINE), "same patient, other series", fill=(150, 0, 0), font=small)
        for c in range(min(n_pos, len(m.match_images))):
            lab = None if m.labels is None else m.labels[c]
            cap = f"{what} {m.match_images[c] + 1}"
            if a.spatial_dims != 3:
                cap += f"  slice KL {_fmt(m.slice_kl[c], 3)}"
            cell(x_img + c * (CELL + 8), y, m.images[c], lab, cap)
        y += CELL + 30
    # ROI legend
    colours = roi_colour_table(max(a.n_classes + 1, 2))
    x = MARGIN
    for k, name in enumerate(a.roi_names, start=1):
        if k < len(colours):
            d.rectangle((x, y + 3, x + 12, y + 15), fill=tuple(int(v) for v in colours[k]))
            d.text((x + 16, y), name, fill="black", font=font)
            x += 30 + int(d.textlength(ascii_text(name), font=font))
    y += LINE + 12
    d.text((MARGIN, y), "ROI volumes (cm³): query | match | match − query", fill="black", font=bold)
    y += LINE + 6
    for m in a.matches:
        d.text((MARGIN, y), f"#{m.rank} {m.name}", fill="black", font=font)
        y += LINE
        if not m.volumes:
            d.text((MARGIN + 20, y), "no stored masks", fill=(90, 90, 90), font=small)
            y += LINE
        for v in m.volumes:
            d.text((MARGIN + 20, y), v.name, fill="black", font=small)
            d.text((MARGIN + 260, y), _fmt(v.query_cm3, 5), fill="black", font=small)
            d.text((MARGIN + 380, y), _fmt(v.match_cm3, 5), fill="black", font=small)
            diff = v.difference_cm3
            d.text((MARGIN + 500, y), ("+" if diff is not None and diff > 0 else "") + _fmt(diff, 4),
                   fill="black", font=small)
            y += LINE
    return img.crop((0, 0, width, min(height, y + MARGIN)))


def write_report(answer: "xq.QueryAnswer", out_dir) -> dict[str, Path]:
    """Write ranking.csv, roi_volumes.csv, report.png and report.pdf into `out_dir`
    (atomic each), and beside each CSV its sidecar (ranking.json, roi_volumes.json) with
    what the CSV's numbers mean: the CSVs start with a plain header row, no '#' comment
    lines. Returns {kind: path} (kinds csv, csv_json, volumes, volumes_json, png, pdf)."""
    import json

    from training.atomic import atomic_write_bytes, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    page = render(answer)
    png, pdf = io.BytesIO(), io.BytesIO()
    page.save(png, format="PNG")
    page.save(pdf, format="PDF", resolution=96.0)

    def js(d):
        return json.dumps(d, indent=1, ensure_ascii=False) + "\n"

    paths = {
        "csv": atomic_write_text(out / "ranking.csv", answer.csv_text()),
        "csv_json": atomic_write_text(out / "ranking.json", js(answer.csv_sidecar())),
        "volumes": atomic_write_text(out / "roi_volumes.csv", answer.volumes_csv_text()),
        "volumes_json": atomic_write_text(out / "roi_volumes.json", js(answer.volumes_sidecar())),
        "png": atomic_write_bytes(out / "report.png", png.getvalue()),
        "pdf": atomic_write_bytes(out / "report.pdf", pdf.getvalue()),
    }
    return {k: Path(v) for k, v in paths.items()}
