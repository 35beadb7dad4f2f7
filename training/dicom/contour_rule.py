"""How the contours of one ROI on one slice combine into a region (the contour rule).

Polygons here are (n, 2) arrays of fractional (row i, column j) pixel coordinates on a
slice; `spacing` = (dy, dx) mm turns them into millimetres where a tolerance is in mm.

The rule, applied per ROI and slice (`resolve_slice`):

1. Duplicates count once. A CLOSED_PLANAR contour is a duplicate of one already kept
   when every vertex of each lies within `DUPLICATE_TOLERANCE_MM` (1 mm) of the other's
   outline (symmetric Hausdorff distance, vertices to edges). This holds for exact
   copies, copies with sub-millimetre jitter, reversed point order or another start
   point, and fails for a copy shifted by a few millimetres. Why not mask IoU: IoU
   depends on size (a 150 mm lung shifted by 3 mm still has IoU ≈ 0.95, a 3 mm node
   with 1 mm jitter may fall below 0.9) and on the pixel grid; a distance in mm does not.
2. Nested outlines are holes. An outline lies inside another when at least 90 % of its
   vertices do and it is the smaller; its depth is its smallest container's depth + 1.
   Even depth fills, odd depth cuts a hole, applied in order of depth (so an island in a
   hole is filled again).
3. Overlapping outlines that are not nested (their edges cross, neither inside the
   other) are united.
4. CLOSEDPLANAR_XOR contours combine by exclusive or, as their type states: with each
   other (two identical ones cancel; they are not de-duplicated) and with the region the
   CLOSED_PLANAR outlines of the slice make (an XOR contour inside it cuts a hole).

Where no two kept CLOSED_PLANAR outlines cross, rules 2 and 3 equal even–odd parity
over the kept outlines, which `fill_polygon_slices` computes for all slices at once;
only slices with crossing outlines or a mix of types are filled outline by outline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DUPLICATE_TOLERANCE_MM = 1.0
NESTED_FRACTION = 0.9
XOR_TYPES = ("CLOSEDPLANAR_XOR", "CLOSED_PLANAR_XOR")  # the standard's spelling, and a variant
RULE = ("duplicates (all points within 1 mm of each other's outline) count once; "
        "nested outlines are holes (islands in holes fill again); overlapping non-nested "
        "outlines are united; CLOSEDPLANAR_XOR contours combine by exclusive or (with each "
        "other and with that region)")


def polygon_area(p: np.ndarray) -> float:
    """Shoelace area (unsigned) in the polygon's units squared."""
    y, x = p[:, 0], p[:, 1]
    twice = np.dot(y[:-1], x[1:]) - np.dot(x[:-1], y[1:]) + y[-1] * x[0] - x[-1] * y[0]
    return 0.5 * abs(float(twice))


def clip_to_box(p: np.ndarray, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
    """Sutherland–Hodgman clip of any simple or concave polygon to a rectangle (the clipped
    area is exact; degenerate edges along the box may remain)."""
    out = np.asarray(p, dtype=np.float64)
    lo, hi = out.min(axis=0), out.max(axis=0)
    if lo[0] >= y0 and hi[0] <= y1 and lo[1] >= x0 and hi[1] <= x1:
        return out  # inside the box: nothing to clip
    for axis, bound, keep_ge in ((0, y0, True), (0, y1, False), (1, x0, True), (1, x1, False)):
        if len(out) == 0:
            break
        v = out[:, axis] - bound
        inside = v >= 0 if keep_ge else v <= 0
        if inside.all():
            continue
        nxt = np.roll(out, -1, axis=0)
        vn = np.roll(v, -1)
        inside_n = np.roll(inside, -1)
        pts = []
        for a, b, va, vb, ia, ib in zip(out, nxt, v, vn, inside, inside_n):
            if ia:
                pts.append(a)
            if ia != ib:
                t = va / (va - vb)
                pts.append(a + t * (b - a))
        out = np.array(pts) if pts else np.zeros((0, 2))
    return out


def _bbox(p: np.ndarray) -> np.ndarray:
    """(y min, y max, x min, x max)."""
    lo, hi = p.min(axis=0), p.max(axis=0)
    return np.array([lo[0], hi[0], lo[1], hi[1]])


def _point_segment_distance(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Distance of each point (m, 2) to the closed polyline `poly` (n, 2)."""
    a = poly
    b = np.roll(poly, -1, axis=0)
    ab = b - a
    L = np.maximum((ab * ab).sum(1), 1e-30)
    best = np.full(len(pts), np.inf)
    for s in range(0, len(pts), 256):  # bounded memory for long outlines
        q = pts[s:s + 256, None, :]
        t = np.clip(((q - a) * ab).sum(-1) / L, 0.0, 1.0)
        d = q - (a + t[..., None] * ab)
        best[s:s + 256] = np.sqrt((d * d).sum(-1)).min(1)
    return best


def _within(p: np.ndarray, q: np.ndarray, tol: float) -> bool:
    """True when every point of p lies within tol of the closed polyline q (mm).

    A point with a vertex of q within tol passes at once (k-d tree); only the others are
    measured against q's edges, stopping at the first one further than tol.
    """
    from scipy.spatial import cKDTree

    d, _ = cKDTree(q).query(p, distance_upper_bound=tol * (1 + 1e-12))
    rest = p[~np.isfinite(d)]
    for s in range(0, len(rest), 64):
        if _point_segment_distance(rest[s:s + 64], q).max() > tol:
            return False
    return True


def _perimeter(p: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(p, axis=0, append=p[:1]), axis=1).sum())


def is_duplicate(a: np.ndarray, b: np.ndarray, spacing, tol_mm: float = DUPLICATE_TOLERANCE_MM,
                 ba: np.ndarray | None = None, bb: np.ndarray | None = None) -> bool:
    """True when every vertex of each polygon lies within tol_mm of the other's outline.
    ba, bb: their `_bbox`es when already known."""
    s = np.asarray(spacing, dtype=np.float64)
    ba = _bbox(a) if ba is None else ba
    bb = _bbox(b) if bb is None else bb
    if (np.abs(ba - bb) * s[[0, 0, 1, 1]]).max() > tol_mm:
        return False
    am, bm = a * s, b * s
    if am.shape == bm.shape and np.array_equal(am, bm):
        return True
    # outlines within tol of each other differ only inside a band of width tol around
    # either outline: their areas differ by less than 2 tol × perimeter + π tol²
    bound = 2 * tol_mm * max(_perimeter(am), _perimeter(bm)) + np.pi * tol_mm ** 2
    if abs(polygon_area(am) - polygon_area(bm)) > bound:
        return False
    return _within(am, bm, tol_mm) and _within(bm, am, tol_mm)


def inside_fraction(outer: np.ndarray, pts: np.ndarray, samples: int = 48,
                    ob: np.ndarray | None = None, pb: np.ndarray | None = None) -> float:
    """Fraction of `pts` inside polygon `outer` (even–odd ray test), estimated from at
    most `samples` evenly spaced points (enough for the 90 % nesting threshold)."""
    ob = _bbox(outer) if ob is None else ob
    pb = _bbox(pts) if pb is None else pb
    if pb[1] < ob[0] or pb[0] > ob[1] or pb[3] < ob[2] or pb[2] > ob[3]:
        return 0.0
    if len(pts) > samples:
        pts = pts[np.linspace(0, len(pts) - 1, samples).astype(np.int64)]
    n = len(pts)
    # points outside the outer outline's bounding box are outside it: test only the rest
    pts = pts[(pts[:, 0] >= ob[0]) & (pts[:, 0] <= ob[1]) & (pts[:, 1] >= ob[2]) & (pts[:, 1] <= ob[3])]
    if not len(pts):
        return 0.0
    a = outer
    b = np.roll(outer, -1, axis=0)
    y, x = pts[:, 0][:, None], pts[:, 1][:, None]
    ya, yb = a[:, 0][None], b[:, 0][None]
    straddle = (ya <= y) != (yb <= y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xc = a[:, 1][None] + (y - ya) / (yb - ya) * (b[:, 1] - a[:, 1])[None]
    crossings = (straddle & (xc > x)).sum(1)
    return float((crossings % 2 == 1).sum()) / n


def _edges_in(p: np.ndarray, y0: float, y1: float, x0: float, x1: float):
    """(starts, ends) of the edges of polygon p whose bounding box meets the box."""
    q = np.roll(p, -1, axis=0)
    lo, hi = np.minimum(p, q), np.maximum(p, q)
    keep = (hi[:, 0] >= y0) & (lo[:, 0] <= y1) & (hi[:, 1] >= x0) & (lo[:, 1] <= x1)
    return p[keep], q[keep]


def edges_cross(a: np.ndarray, b: np.ndarray, ba: np.ndarray | None = None,
                bb: np.ndarray | None = None) -> bool:
    """True when an edge of `a` properly crosses an edge of `b` (touching does not count).
    Only edges within the overlap of the two bounding boxes are compared."""
    ba = _bbox(a) if ba is None else ba
    bb = _bbox(b) if bb is None else bb
    y0, y1 = max(ba[0], bb[0]), min(ba[1], bb[1])
    x0, x1 = max(ba[2], bb[2]), min(ba[3], bb[3])
    if y0 > y1 or x0 > x1:
        return False
    p1, p2 = _edges_in(a, y0, y1, x0, x1)
    q1, q2 = _edges_in(b, y0, y1, x0, x1)
    if not len(p1) or not len(q1):
        return False

    def orient(p, q, r):  # sign of the cross product (q - p) × (r - p), broadcast (na, nb)
        return np.sign((q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1])
                       - (q[..., 1] - p[..., 1]) * (r[..., 0] - p[..., 0]))

    for s in range(0, len(p1), 256):
        P1, P2 = p1[s:s + 256, None, :], p2[s:s + 256, None, :]
        Q1, Q2 = q1[None], q2[None]
        d1, d2 = orient(P1, P2, Q1), orient(P1, P2, Q2)
        d3, d4 = orient(Q1, Q2, P1), orient(Q1, Q2, P2)
        if ((d1 * d2 < 0) & (d3 * d4 < 0)).any():
            return True
    return False


@dataclass
class SliceOutlines:
    """The contours of one ROI on one slice, resolved by the rule.

    closed: kept CLOSED_PLANAR outlines; depth: their nesting depth (odd = hole);
    xor: CLOSEDPLANAR_XOR polygons; simple: True when even–odd parity over
    closed + xor equals the rule (no crossing outlines, not both types)."""

    closed: list[np.ndarray] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    xor: list[np.ndarray] = field(default_factory=list)
    duplicates: int = 0
    overlaps: int = 0  # pairs of crossing, non-nested outlines (united)
    simple: bool = True

    @property
    def holes(self) -> int:
        return sum(d % 2 for d in self.depth)

    def polygons(self) -> list[np.ndarray]:
        return [*self.closed, *self.xor]


def resolve_slice(items: list[tuple[str, np.ndarray]], spacing) -> SliceOutlines:
    """items: (ContourGeometricType, polygon) of one ROI on one slice, in file order."""
    out = SliceOutlines()
    boxes: list[np.ndarray] = []
    for kind, poly in items:
        if kind in XOR_TYPES:
            out.xor.append(poly)
            continue
        box = _bbox(poly)
        if any(is_duplicate(poly, kept, spacing, ba=box, bb=kb)
               for kept, kb in zip(out.closed, boxes)):
            out.duplicates += 1
        else:
            out.closed.append(poly)
            boxes.append(box)
    n = len(out.closed)
    if n <= 1:
        out.depth = [0] * n
        out.simple = not (n and out.xor)
        if len(out.xor) > 1:
            out.simple = out.simple and not _any_cross(out.xor)
        return out
    areas = [polygon_area(p) for p in out.closed]
    # frac[i][j]: the fraction of outline i's vertices inside outline j
    frac = [[0.0 if i == j else inside_fraction(out.closed[j], out.closed[i],
                                                ob=boxes[j], pb=boxes[i]) for j in range(n)]
            for i in range(n)]
    order = sorted(range(n), key=lambda i: -areas[i])
    depth = [0] * n
    for pos, i in enumerate(order):
        parent = None
        for j in reversed(order[:pos]):  # the smallest larger outline that contains it
            if areas[j] > areas[i] and frac[i][j] >= NESTED_FRACTION:
                parent = j
                break
        depth[i] = 0 if parent is None else depth[parent] + 1
    crossing = False
    for x in range(n):
        for y in range(x + 1, n):
            # wholly inside one another: taken as not crossing (a concave outline whose edge
            # cuts through a nested one between its vertices is missed; the area check shows it)
            if {frac[x][y], frac[y][x]} == {0.0, 1.0}:
                continue
            if edges_cross(out.closed[x], out.closed[y], boxes[x], boxes[y]):
                crossing = True
                if max(frac[x][y], frac[y][x]) < NESTED_FRACTION:
                    out.overlaps += 1
    out.depth = depth
    out.simple = not crossing and not out.xor
    return out


def _any_cross(polys: list[np.ndarray]) -> bool:
    return any(edges_cross(polys[a], polys[b])
               for a in range(len(polys)) for b in range(a + 1, len(polys)))


def combine(res: SliceOutlines, fill, shape: tuple[int, int]) -> np.ndarray:
    """The rule's region on a (ny, nx) grid; fill(polygons, shape) is the even–odd fill."""
    region = np.zeros(shape, dtype=bool)
    for d in sorted(set(res.depth)):
        for poly, pd in zip(res.closed, res.depth):
            if pd == d:
                m = fill([poly], shape)
                region = region | m if d % 2 == 0 else region & ~m
    if res.xor:
        region ^= fill(res.xor, shape)
    return region


def region_area(res: SliceOutlines, fill, ny: int, nx: int, supersample: int = 8) -> float:
    """Area (pixels²) of the rule's region inside the grid's field [-0.5, n - 0.5].

    Exact (clipped shoelace, signed by depth) where parity equals the rule and the xor
    contours do not cross; otherwise measured on a grid `supersample` times finer over
    the outlines' bounding box (error about a 1/supersample pixel strip along edges).
    """
    box = (-0.5, ny - 0.5, -0.5, nx - 0.5)
    if res.simple:
        total = 0.0
        for poly, d in zip(res.closed, res.depth):
            a = polygon_area(clip_to_box(poly, *box))
            total += -a if d % 2 else a
        if res.xor:  # xor only, not crossing: laminar, parity by containment count
            for i, p in enumerate(res.xor):
                inside = sum(inside_fraction(q, p) >= NESTED_FRACTION
                             for j, q in enumerate(res.xor) if j != i)
                a = polygon_area(clip_to_box(p, *box))
                total += -a if inside % 2 else a
        return total
    allp = np.concatenate(res.polygons())
    y0 = max(np.floor(allp[:, 0].min()) - 1, -0.5)
    y1 = min(np.ceil(allp[:, 0].max()) + 1, ny - 0.5)
    x0 = max(np.floor(allp[:, 1].min()) - 1, -0.5)
    x1 = min(np.ceil(allp[:, 1].max()) + 1, nx - 0.5)
    if y1 <= y0 or x1 <= x0:
        return 0.0
    f = supersample
    fy, fx = int(round((y1 - y0) * f)), int(round((x1 - x0) * f))

    def fine(p):  # fine cell u covers [y0 + u/f, y0 + (u+1)/f]; its centre is at index u
        return np.stack([(p[:, 0] - y0) * f - 0.5, (p[:, 1] - x0) * f - 0.5], axis=1)

    scaled = SliceOutlines(closed=[fine(p) for p in res.closed], depth=res.depth,
                           xor=[fine(p) for p in res.xor], simple=False)
    return float(combine(scaled, fill, (fy, fx)).sum()) / (f * f)
