"""Synthetic thorax CT cohort written as DICOM CT series + RTSTRUCT.

Each patient is a stack of axial slices of a simple thorax: body outline (superellipse,
skin and a subcutaneous fat layer), soft tissue, two lungs whose cross-section changes
along z, the heart with pericardial fat, vertebral body and posterior arch (bone), the
spinal canal with the spinal cord, ribs (bone ring segments), air outside, a light
partial-volume blur and Gaussian noise. Size, shape and position vary per patient.

Conventions: arrays (z, y, x) = (slice k, row i, column j); HU; geometry in DICOM patient
coordinates (LPS, mm) with standard axial orientation (IOP 1,0,0,0,1,0, head-first
supine): column index j increases toward the patient's LEFT (+x), row index i toward
POSTERIOR (+y), slice index k toward SUPERIOR (+z). Hence the heart sits at larger j
than the midline, Lung-Left at larger j than Lung-Right, the spine at larger i.

Determinism: patient i of seed s depends only on (s, i) and the size arguments, never on
how many patients are generated. UIDs are new on every run.

Privacy: each patient carries a fake name "PHANTOM^007", ID "PH007" and birth date in the
DICOM files only (so tests can check they never leak); folder names ("patient_007") and
progress messages do not contain them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
from scipy.ndimage import gaussian_filter

from training.dicom.write import default_geometry, masks_to_rois, write_ct_series, write_rtstruct
from training.dicom.geometry import VolumeGeometry

ROI_NAMES = ("Body", "Lung-Left", "Lung-Right", "Heart", "Spinal-Cord", "Spine")

HU_AIR = -1000.0
HU_LUNG = -850.0
HU_FAT = -100.0
HU_SOFT = 40.0
HU_SKIN = 30.0
HU_HEART = 40.0
HU_BONE = 700.0
HU_CORTEX = 900.0
HU_CSF = 10.0
HU_CORD = 30.0


class Phantom(NamedTuple):
    """One synthetic patient in memory: hu float32 (z, y, x) in HU, masks name -> bool
    (z, y, x), geometry (LPS, mm; no UIDs)."""

    hu: np.ndarray
    masks: dict[str, np.ndarray]
    geometry: VolumeGeometry


@dataclass(frozen=True)
class PatientInfo:
    """One written phantom patient. `patient_name` / `patient_id` are the fake identifiers
    stored in its DICOM files (kept so privacy tests can look for them)."""

    index: int
    folder: Path  # DIR/patient_007
    ct_dir: Path  # DIR/patient_007/CT
    rtstruct: Path  # DIR/patient_007/RTSTRUCT/rs.dcm
    ct_files: tuple[Path, ...]
    n_slices: int
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # (dz, dy, dx) mm
    patient_name: str
    patient_id: str
    patient_birth_date: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str


def patient_identity(i: int, seed: int = 0) -> tuple[str, str, str]:
    """Fake (PatientName, PatientID, PatientBirthDate YYYYMMDD) of phantom patient i."""
    year = 1940 + (i * 7 + seed * 3) % 50
    month = 1 + (i * 5 + seed) % 12
    day = 1 + (i * 11 + seed) % 28
    return f"PHANTOM^{i:03d}", f"PH{i:03d}", f"{year:04d}{month:02d}{day:02d}"


def folder_name(i: int) -> str:
    return f"patient_{i:03d}"


def _superellipse(du: np.ndarray, dv: np.ndarray, a: float, b: float, p: float, p_post: float) -> np.ndarray:
    """Normalised radius (1 on the outline); flatter on the posterior side (dv > 0)."""
    x, y = np.abs(du / a), np.abs(dv / b)
    pe = np.where(dv > 0, p_post, p)
    return (x**pe + y**pe) ** (1.0 / pe)


def _ellipse(du, dv, a, b, angle=0.0):
    c, s = np.cos(angle), np.sin(angle)
    x, y = c * du + s * dv, -s * du + c * dv
    return (x / a) ** 2 + (y / b) ** 2


def phantom_patient(
    i: int,
    seed: int = 0,
    *,
    slices: int = 24,
    size: int = 128,
    pixel_spacing: float = 1.5,
    slice_thickness: float = 3.0,
    noise: bool = True,
) -> Phantom:
    """Build phantom patient i of `seed` in memory (see the module docstring).

    Anatomy is laid out in image-relative units (the body fills most of the field of view
    whatever `size` and `pixel_spacing` are); `pixel_spacing` (mm, square pixels) and
    `slice_thickness` (mm, = slice spacing) set the geometry only.
    """
    if slices < 1 or size < 8:
        raise ValueError(f"phantom_patient: need slices >= 1 and size >= 8, got {slices}, {size}")
    rng = np.random.default_rng([int(seed), int(i)])
    u01 = rng.uniform

    # Per-patient anatomy (u: toward patient's left, v: toward posterior; half-FOV units).
    cu, cv = np.clip(rng.normal(0, 0.035, 2), -0.07, 0.07)
    body_a = u01(0.72, 0.88)
    body_b = body_a * u01(0.60, 0.76)
    body_p, body_p_post = u01(2.0, 2.6), u01(2.8, 3.6)
    taper = u01(0.0, 0.15)  # narrower toward the apex
    fat_t = u01(0.04, 0.11)  # subcutaneous fat, fraction of the radius
    skin_t = 1.2 / (size / 2 * body_a)
    lung_a = [u01(0.29, 0.35), u01(0.29, 0.35)]  # right, left (fraction of body_a)
    lung_b = [u01(0.62, 0.76), u01(0.62, 0.76)]  # fraction of body_b
    lung_u = [u01(0.42, 0.50), u01(0.42, 0.50)]
    lung_v = [u01(-0.12, 0.0), u01(-0.12, 0.0)]
    lung_tilt = [u01(-0.25, 0.05), u01(-0.05, 0.25)]
    lung_phase, lung_span = u01(0.18, 0.3), u01(0.62, 0.75)
    heart_u, heart_v = u01(0.12, 0.24), -u01(0.08, 0.22)
    heart_a = u01(0.25, 0.32)
    heart_b = heart_a * u01(0.72, 0.92)
    heart_rot = u01(-0.5, 0.0)
    heart_tc, heart_w = u01(0.2, 0.35), u01(0.42, 0.55)
    vb_v = u01(0.34, 0.42)  # vertebral body centre, fraction of body_b behind the centre
    vb_r = body_b * u01(0.15, 0.19)
    canal_r = vb_r * u01(0.42, 0.5)
    cord_r = canal_r * u01(0.55, 0.68)
    n_ribs = int(rng.integers(8, 11))
    rib_phase, rib_drift, rib_duty = u01(0, 1), u01(0.3, 0.9), u01(0.28, 0.4)
    noise_sd = u01(10.0, 20.0)

    half = size / 2.0
    jj = (np.arange(size) + 0.5 - half) / half
    U, V = np.meshgrid(jj, jj)  # U[i, j] varies with column j, V with row i

    hu = np.full((slices, size, size), HU_AIR, dtype=np.float32)
    masks = {name: np.zeros((slices, size, size), dtype=bool) for name in ROI_NAMES}
    for k in range(slices):
        t = k / (slices - 1) if slices > 1 else 0.5  # 0 inferior .. 1 superior
        scale = 1.0 - taper * (t - 0.5)
        a, b = body_a * scale, body_b * scale
        du, dv = U - cu, V - cv
        rho = _superellipse(du, dv, a, b, body_p, body_p_post)
        body = rho < 1.0
        sl = hu[k]
        sl[body] = HU_FAT
        sl[body & (rho >= 1.0 - skin_t)] = HU_SKIN
        inner = rho < 1.0 - fat_t
        sl[inner] = HU_SOFT

        # Spine: vertebral body, posterior arch with spinous process, canal, cord.
        sv = b * vb_v
        d_vb = np.hypot(du, dv - sv)
        vb = d_vb < vb_r
        cc = sv + vb_r + canal_r * 1.15
        d_canal = np.hypot(du, dv - cc)
        canal = d_canal < canal_r
        arch = (d_canal < canal_r + vb_r * 0.38) & ~canal & (dv > sv)
        spinous = (np.abs(du) < canal_r * 0.35) & (dv > cc) & (dv < cc + canal_r + vb_r * 0.95)
        spine = (vb | arch | spinous) & inner
        sl[spine] = HU_BONE
        sl[vb & (d_vb > vb_r * 0.8)] = HU_CORTEX
        sl[canal] = HU_CSF
        cord = d_canal < cord_r
        sl[cord] = HU_CORD

        # Ribs: ring segments just inside the muscle wall, rotating with z.
        theta = np.arctan2(dv, du)
        ring = (rho > (1.0 - fat_t) * 0.86) & (rho < (1.0 - fat_t) * 0.93)
        seg = np.mod(theta * n_ribs / (2 * np.pi) + rib_phase + rib_drift * t, 1.0) < rib_duty
        away = (np.abs(theta - np.pi / 2) > 0.45) & (np.abs(theta + np.pi / 2) > 0.3)
        ribs = ring & seg & away & ~spine
        sl[ribs] = HU_BONE

        # Heart, shrinking toward the apex of the thorax, wrapped in pericardial fat.
        hz = 1.0 - ((t - heart_tc) / heart_w) ** 2
        heart = np.zeros_like(body)
        if hz > 0.05:
            hs = np.sqrt(hz)
            e = _ellipse(du - heart_u * a, dv - heart_v * b, heart_a * a * hs, heart_b * a * hs, heart_rot)
            heart = (e < 1.0) & inner & ~spine
            sl[(e < 1.25) & inner & ~spine & ~heart] = HU_FAT
            sl[heart] = HU_HEART

        # Lungs: cross-section grows from the apex, is widest in the middle, recedes
        # posteriorly at the base (diaphragm dome).
        lz = np.sin(np.pi * (lung_phase + lung_span * t))
        lung_space = (rho < (1.0 - fat_t) * 0.84) & ~spine & (d_vb > vb_r * 1.5)
        if hz > 0.05:
            lung_space &= e >= 1.3
        for side, name in ((0, "Lung-Right"), (1, "Lung-Left")):
            sign = -1.0 if side == 0 else 1.0  # right lung at smaller column index
            base_shift = 0.25 * (1.0 - t) ** 2 * b
            e_l = _ellipse(
                du - sign * lung_u[side] * a,
                dv - (lung_v[side] * b + base_shift),
                lung_a[side] * a * (0.55 + 0.45 * lz),
                lung_b[side] * b * lz,
                sign * lung_tilt[side],
            )
            lung = (e_l < 1.0) & lung_space & (sign * du > 0.06 * a)
            sl[lung] = HU_LUNG
            masks[name][k] = lung
        masks["Body"][k] = body
        masks["Heart"][k] = heart
        masks["Spine"][k] = spine
        masks["Spinal-Cord"][k] = cord

    # Lung texture (smooth fluctuations), partial-volume blur, then scanner noise.
    lungs = masks["Lung-Left"] | masks["Lung-Right"]
    if lungs.any():
        tex = gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32), sigma=(0.8, 1.5, 1.5))
        hu[lungs] += 120.0 * tex[lungs]
    hu = gaussian_filter(hu, sigma=(0.0, 0.6, 0.6))
    if noise:
        hu += rng.normal(0.0, noise_sd, hu.shape).astype(np.float32)
    hu = hu.astype(np.float32, copy=False)

    geometry = default_geometry(
        (slices, size, size),
        pixel_spacing=(float(pixel_spacing), float(pixel_spacing)),
        slice_spacing=float(slice_thickness),
        origin=(
            -(size - 1) / 2 * pixel_spacing,
            -(size - 1) / 2 * pixel_spacing,
            round(float(u01(-300.0, -150.0)), 1),
        ),
    )
    return Phantom(hu, masks, geometry)


def _clear_old_series(ct_dir: Path) -> None:
    """Remove CT files of an earlier run (our own naming only) so one folder = one series."""
    if ct_dir.is_dir():
        for p in ct_dir.glob("CT_[0-9][0-9][0-9][0-9].dcm"):
            p.unlink()


def write_patient(
    out_dir: str | Path,
    i: int,
    seed: int = 0,
    *,
    slices: int = 24,
    size: int = 128,
    pixel_spacing: float = 1.5,
    slice_thickness: float = 3.0,
    fsync: bool = True,
) -> PatientInfo:
    """Generate phantom patient i and write out_dir/patient_iii/{CT/*.dcm, RTSTRUCT/rs.dcm}."""
    ph = phantom_patient(i, seed, slices=slices, size=size, pixel_spacing=pixel_spacing,
                         slice_thickness=slice_thickness)
    name, pid, birth = patient_identity(i, seed)
    folder = Path(out_dir) / folder_name(i)
    ct_dir = folder / "CT"
    _clear_old_series(ct_dir)
    written = write_ct_series(
        ph.hu, ph.geometry, ct_dir,
        patient_name=name, patient_id=pid, patient_birth_date=birth,
        patient_sex="MF"[(i + seed) % 2],
        series_description="Phantom thorax CT",
        study_description="ct-vae synthetic phantom",
        slice_thickness=slice_thickness,
        image_type=("DERIVED", "SECONDARY", "AXIAL"),
        fsync=fsync,
    )
    rs = write_rtstruct(
        folder / "RTSTRUCT" / "rs.dcm", written, masks_to_rois(ph.masks),
        label="PHANTOM", series_description="Phantom structures", fsync=fsync,
    )
    return PatientInfo(
        index=i, folder=folder, ct_dir=ct_dir, rtstruct=rs, ct_files=tuple(written.paths),
        n_slices=slices, shape=tuple(ph.hu.shape),
        spacing=(float(slice_thickness), float(pixel_spacing), float(pixel_spacing)),
        patient_name=name, patient_id=pid, patient_birth_date=birth,
        study_uid=written.study_uid, series_uid=written.series_uid,
        frame_of_reference_uid=written.frame_of_reference_uid,
    )


def generate_cohort(
    out_dir: str | Path,
    n_patients: int,
    *,
    slices: int = 24,
    size: int = 128,
    seed: int = 0,
    pixel_spacing: float = 1.5,
    slice_thickness: float = 3.0,
    progress: Callable[[int, int, PatientInfo], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    fsync: bool = True,
) -> list[PatientInfo]:
    """Write patients 0..n_patients-1 under out_dir; returns what was written.

    progress(done, total, info) is called after each patient; cancel() returning True
    stops before the next patient (the patients already written stay complete).
    """
    if n_patients < 0:
        raise ValueError(f"generate_cohort: n_patients must be >= 0, got {n_patients}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    infos: list[PatientInfo] = []
    for i in range(n_patients):
        if cancel is not None and cancel():
            break
        info = write_patient(out, i, seed, slices=slices, size=size, pixel_spacing=pixel_spacing,
                             slice_thickness=slice_thickness, fsync=fsync)
        infos.append(info)
        if progress is not None:
            progress(i + 1, n_patients, info)
    return infos



def write_rescan(
    out_dir: str | Path,
    i: int,
    seed: int = 0,
    *,
    slices: int = 24,
    size: int = 128,
    pixel_spacing: float = 1.5,
    slice_thickness: float = 3.0,
    shift_px: tuple[int, int] = (1, 0),
    noise_hu: float = 15.0,
    rescan_seed: int = 1,
    fsync: bool = True,
) -> PatientInfo:
    """A second CT series (and RTSTRUCT) of phantom patient i: the same anatomy and
    identity, shifted by `shift_px` (rows, columns; anatomy and structures alike) with
    extra Gaussian noise of `noise_hu` HU, in new study/series/frame-of-reference UIDs.
    Written to out_dir/patient_iii_rescan/{CT, RTSTRUCT} (a "new patient" query whose
    own earlier series is known)."""
    ph = phantom_patient(i, seed, slices=slices, size=size, pixel_spacing=pixel_spacing,
                         slice_thickness=slice_thickness)
    dy, dx = (int(v) for v in shift_px)
    hu = np.roll(ph.hu, (dy, dx), axis=(1, 2))
    hu = hu + np.random.default_rng([int(seed), int(i), int(rescan_seed)]).normal(
        0.0, float(noise_hu), hu.shape).astype(np.float32)
    masks = {k: np.roll(m, (dy, dx), axis=(1, 2)) for k, m in ph.masks.items()}
    name, pid, birth = patient_identity(i, seed)
    folder = Path(out_dir) / (folder_name(i) + "_rescan")
    ct_dir = folder / "CT"
    _clear_old_series(ct_dir)
    written = write_ct_series(
        hu, ph.geometry, ct_dir,
        patient_name=name, patient_id=pid, patient_birth_date=birth,
        patient_sex="MF"[(i + seed) % 2], series_number=2,
        series_description="Phantom thorax CT (rescan)",
        study_description="ct-vae synthetic phantom, second study",
        slice_thickness=slice_thickness, image_type=("DERIVED", "SECONDARY", "AXIAL"),
        fsync=fsync,
    )
    rs = write_rtstruct(
        folder / "RTSTRUCT" / "rs.dcm", written, masks_to_rois(masks),
        label="PHANTOM", series_description="Phantom structures (rescan)", fsync=fsync,
    )
    return PatientInfo(
        index=i, folder=folder, ct_dir=ct_dir, rtstruct=rs, ct_files=tuple(written.paths),
        n_slices=slices, shape=tuple(hu.shape),
        spacing=(float(slice_thickness), float(pixel_spacing), float(pixel_spacing)),
        patient_name=name, patient_id=pid, patient_birth_date=birth,
        study_uid=written.study_uid, series_uid=written.series_uid,
        frame_of_reference_uid=written.frame_of_reference_uid,
    )
