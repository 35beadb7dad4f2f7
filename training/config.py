"""Serialisable settings, one dataclass per concern.

Each is stored with every workspace and checkpoint (as JSON) so any figure can be traced
back to the data and the settings that made it. Conventions: array axes (z, y, x),
lengths in mm, intensities in Hounsfield units (HU) before windowing and in [0, 1] after.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from typing import Any, TypeVar

T = TypeVar("T", bound="_Config")


class ConfigError(ValueError):
    """A setting is missing, unknown or out of range; the message names it."""


def _checked(owner: str, name: str, annotation: str, value: Any) -> Any:
    """`value` as the field's annotated type (int, float, str, bool, tuple[str, ...], or
    any of them | None); ConfigError naming the setting otherwise. Settings come from
    JSON in checkpoints and workspaces and from TOML files: nothing is trusted."""
    kinds = [a.strip() for a in annotation.split("|")]
    if value is None and "None" in kinds:
        return None
    for kind in kinds:
        if kind == "bool" and isinstance(value, bool):
            return value
        if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind == "str" and isinstance(value, str):
            return value
        if kind.startswith("tuple") and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
    raise ConfigError(f"{owner}.{name} must be {annotation}, got {value!r}")


@dataclass
class _Config:
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown setting(s) {', '.join(unknown)}")
        kwargs = {k: _checked(cls.__name__, k, str(known[k].type), v) for k, v in data.items()}
        obj = cls(**kwargs)
        obj.validate()
        return obj

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return cls.from_dict(json.loads(text))

    def replace(self: T, **changes: Any) -> T:
        obj = dataclasses.replace(self, **changes)
        obj.validate()
        return obj

    def validate(self) -> None:  # overridden where there is something to check
        pass


# Window presets in HU (lower, upper). "tissue" is the thesis' range of biological tissue;
# "thorax" spans lung to bone as SPEC F3 states.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "thorax": (-800.0, 700.0),
    "tissue": (-1000.0, 1000.0),
    "lung": (-1350.0, 150.0),
    "mediastinum": (-160.0, 240.0),
    "bone": (-450.0, 1050.0),
    "brain": (0.0, 80.0),
    "abdomen": (-125.0, 225.0),
}


@dataclass
class PreprocessConfig(_Config):
    """How source CT (HU) and RT masks become training arrays.

    - window: HU limits [hu_min, hu_max] clipped and scaled to [0, 1]; window_name is the
      preset they came from, or "custom".
    - crop: centre crop to crop × crop pixels in-plane (None: keep the full slice).
    - size: after cropping, resample in-plane to size × size pixels (None: keep).
    - slices: "all"; "around" = slice_count slices centred on slice_center (a z position
      in mm, patient coordinates; None = the middle of the series); "range" = slice
      indices [slice_start, slice_stop) in position order (inferior to superior).
    - mode: "2d" trains on slices; "3d" on volumes interpolated along depth to a cube of
      edge `size or crop` (the thesis: 10×128×128 → 128×128×128), or `depth` when set.
    - rois: ROI names in priority order: where ROIs overlap, the earlier name wins; the
      exclusive one-hot layout adds a complement channel (class 0 = complement,
      class k = rois[k-1]).
    """

    window_name: str = "thorax"
    hu_min: float = -800.0
    hu_max: float = 700.0
    crop: int | None = 128
    size: int | None = None
    slices: str = "all"
    slice_center: float | None = None
    slice_count: int = 10
    slice_start: int = 0
    slice_stop: int | None = None
    mode: str = "2d"
    depth: int | None = None
    rois: tuple[str, ...] = ()
    spacing: float | None = None
    fov: float | None = None
    z_spacing: float | None = None

    @classmethod
    def new_workspace(cls, **kw: Any) -> "PreprocessConfig":
        """The settings of a NEW workspace (README "Physical scale"): 1.0 mm pixels and a
        128 mm field of view, so a cohort of mixed pixel spacings shares one physical scale
        (the thesis' central 128 px of 0.98 mm pixels was 125 mm). Existing workspaces keep
        what they store; the dataclass defaults stay pixel-based so old JSON means what it
        meant."""
        base: dict[str, Any] = {"spacing": 1.0, "fov": 128.0, "crop": None}
        base.update(kw)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        # Settings in mm are left out while unset, so a pixel-based config serialises (and
        # hashes: workspace.preprocess_hash) exactly as it did before they existed.
        d = super().to_dict()
        for name in ("spacing", "fov", "z_spacing"):
            if d.get(name) is None:
                d.pop(name, None)
        for name in ("hu_min", "hu_max", "slice_center", "spacing", "fov", "z_spacing"):
            if isinstance(d.get(name), int):  # -1000 and -1000.0 are one setting (one hash)
                d[name] = float(d[name])
        return d

    @property
    def physical(self) -> bool:
        """Whether any setting is in mm (spacing, fov, z_spacing)."""
        return self.spacing is not None or self.fov is not None or self.z_spacing is not None

    @classmethod
    def preset(cls, name: str, **kw: Any) -> "PreprocessConfig":
        if name not in WINDOW_PRESETS:
            raise ConfigError(f"unknown window preset {name!r}; known: {', '.join(WINDOW_PRESETS)}")
        lo, hi = WINDOW_PRESETS[name]
        return cls(window_name=name, hu_min=lo, hu_max=hi, **kw)

    def validate(self) -> None:
        if not self.hu_max > self.hu_min:
            raise ConfigError(f"window: hu_max ({self.hu_max}) must exceed hu_min ({self.hu_min})")
        for name in ("crop", "size", "depth"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 4):
                raise ConfigError(f"{name} must be an integer ≥ 4 or None, got {v!r}")
        if self.slices not in ("all", "around", "range"):
            raise ConfigError(f"slices must be 'all', 'around' or 'range', got {self.slices!r}")
        if self.slice_count < 1:
            raise ConfigError("slice_count must be ≥ 1")
        if self.mode not in ("2d", "3d"):
            raise ConfigError(f"mode must be '2d' or '3d', got {self.mode!r}")
        if len(set(self.rois)) != len(self.rois):
            raise ConfigError("rois contains a name twice")
        self._validate_scale()

    def _validate_scale(self) -> None:
        import math

        for name in ("spacing", "fov", "z_spacing"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{name} must be a positive number of mm or None, got {v!r}")
        if self.fov is not None and self.crop is not None:
            raise ConfigError("set crop (pixels) or fov (mm), not both")
        if self.fov is not None and self.spacing is not None and round(self.fov / self.spacing) < 4:
            raise ConfigError(f"fov {self.fov:g} mm at {self.spacing:g} mm pixels is under 4 pixels")

    @property
    def n_classes(self) -> int:
        """RT classes including the complement; 0 when no ROI is chosen (CT only)."""
        return len(self.rois) + 1 if self.rois else 0


@dataclass
class ModelConfig(_Config):
    """The thesis VAE (chapter 6), one definition for 2D and 3D.

    in_channels = 1 (CT) + n_classes (one-hot ROIs + complement; 0 for CT only).
    Encoder: n_blocks blocks of convs_per_block 3×3(×3) convolutions with `filters`
    filters, leaky ReLU, 2×2(×2) max pooling and dropout; a fully connected layer of
    fc_units; heads µ and log σ² of size latent_dim. Decoder mirrors it; with RT channels
    it splits into a CT head (sigmoid) and an RT head (softmax) at resolution split_at.
    """

    spatial_dims: int = 2
    input_size: int = 128
    n_classes: int = 0
    latent_dim: int = 12
    filters: int = 24
    convs_per_block: int = 2
    n_blocks: int = 4
    dropout: float = 0.1
    fc_units: int = 256
    split_at: int | None = None
    leaky_slope: float = 0.2

    def validate(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.latent_dim < 1:
            raise ConfigError("latent_dim must be ≥ 1")
        if self.input_size % (2 ** self.n_blocks):
            raise ConfigError(
                f"input_size {self.input_size} must be divisible by 2**n_blocks = {2 ** self.n_blocks}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout must be in [0, 1)")
        if self.n_classes == 1:
            raise ConfigError("n_classes is 0 (CT only) or ≥ 2 (ROIs + complement)")

    @property
    def in_channels(self) -> int:
        return 1 + self.n_classes


AUTOCAST_MODES = ("none", "bf16")


@dataclass
class TrainConfig(_Config):
    """Optimisation and loss settings (thesis 4.2, 6.2; SPEC F12–F15).

    recon_sigma2: the fixed variance σ² of the Gaussian reconstruction likelihood.
    prior_sigma2: σz² of the prior N(0, σz² I).
    mc_samples: U Monte-Carlo samples of z per input.
    ce_weighting: "none" or "inverse_frequency" for the RT cross-entropy.
    augment_every / augment_count: every K epochs draw A codes from the aggregate
    posterior and train on data + decoded draws (0 = off).
    threads: torch threads (0 = physical cores). device: "auto", "cpu", "cuda", "cuda:N".
    metrics_images: reconstruction metrics (training.vae.metrics: MAE in HU inside the
    body, PSNR, SSIM, Dice per ROI) after every epoch on this many fixed, evenly spaced
    images of the test split and of the train split (0 = off).
    autocast: "none" or "bf16" (bfloat16 autocast of forward and loss on a CUDA device;
    ignored on the CPU, where it would be slower).
    """

    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    recon_sigma2: float = 0.01
    prior_sigma2: float = 1.0
    mc_samples: int = 1
    ce_weight: float = 1.0
    ce_weighting: str = "none"
    checkpoint_every: int = 5
    recon_every: int = 5
    n_recon_examples: int = 8
    early_stopping_patience: int = 0
    max_loss: float = 1e12
    augment_every: int = 0
    augment_count: int = 0
    device: str = "auto"
    threads: int = 0
    channels_last: bool = True
    metrics_images: int = 16
    autocast: str = "none"

    def validate(self) -> None:
        if self.metrics_images < 0:
            raise ConfigError(f"metrics_images must be ≥ 0, got {self.metrics_images}")
        if self.autocast not in AUTOCAST_MODES:
            raise ConfigError(f"autocast must be one of {', '.join(AUTOCAST_MODES)}, got {self.autocast!r}")
        for name in ("epochs", "batch_size", "mc_samples", "checkpoint_every", "recon_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError("lr must be > 0")
        if self.recon_sigma2 <= 0 or self.prior_sigma2 <= 0:
            raise ConfigError("recon_sigma2 and prior_sigma2 must be > 0")
        if self.ce_weighting not in ("none", "inverse_frequency"):
            raise ConfigError("ce_weighting must be 'none' or 'inverse_frequency'")


# -- model presets (issue 15) ----------------------------------------------------------------
# Each preset: {"model": ModelConfig fields, "train": TrainConfig fields, "sources": where each
# value comes from}. "thesis" is the 2D CT network of thesis 7.1.1 (its figures 7.1-7.4).
# The thesis ran TensorFlow 1.5, whose dropout argument is the *keep* probability: its
# "dropout probability of p = 0.7" keeps 70 % of the units, i.e. a drop rate of 1 − 0.7 = 0.3
# in PyTorch's convention (ModelConfig.dropout). Values the thesis does not state are the
# project's defaults and say so.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "thesis": {
        "model": {"input_size": 128, "filters": 24, "convs_per_block": 2, "n_blocks": 4,
                  "latent_dim": 12, "fc_units": 256, "dropout": 0.3},
        "train": {"prior_sigma2": 1.0, "recon_sigma2": 0.01, "lr": 1e-3, "batch_size": 32},
        "sources": {
            "input_size": "7.1.1: the central (128, 128) pixels of each slice",
            "filters": "7.1.1: 24 filters in each convolutional layer",
            "latent_dim": "7.1.1: z ∈ R^12",
            "dropout": "7.1.1: 'dropout probability p = 0.7' is TensorFlow's keep probability; drop rate 1 − 0.7 = 0.3",
            "n_blocks": "6.1, fig. 6.1: blocks repeat until the size is small enough for the FC layer (its example ends at 8×8); 128 → 8 takes 4",
            "convs_per_block": "6.1: 'convolves the input N times' (N not stated; project default 2)",
            "fc_units": "6.1: one FC layer before µ and σ (width not stated; project default 256)",
            "prior_sigma2": "7.3: prior p(z) = N(0, I), σz² = 1",
            "recon_sigma2": "4.3, 6.2: fixed-variance Gaussian likelihood (σ² not stated; project default 0.01)",
            "lr": "6.3: Adam (rate not stated; TensorFlow's AdamOptimizer default 0.001)",
            "batch_size": "not stated; project default 32",
        },
    },
}
PRESET_TITLES = {"thesis": "Thesis 7.1.1"}


def preset_settings(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ModelConfig fields, TrainConfig fields) of a preset; ConfigError for an unknown name."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    p = PRESETS[name]
    return dict(p["model"]), dict(p["train"])
