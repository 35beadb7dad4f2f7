"""The thesis VAE (chapter 6; SPEC F9–F11), one definition for 2D slices and 3D volumes.

Tensors are (batch, channel, *spatial) with spatial axes (y, x) in 2D and (z, y, x) in 3D;
volumes are cubes of edge ``input_size``. Input channel 0 is CT in [0, 1]; channels
1..n_classes are the exclusive one-hot RT labels (channel 1 = class 0 = complement,
channel 1 + k = rois[k-1]).

Architecture (thesis figures 6.1 and 6.2):

- Encoder: ``n_blocks`` blocks, each ``convs_per_block`` 3×3(×3) convolutions with
  ``filters`` filters (the thesis keeps the same number in every layer: "24 filters in
  each convolutional layer", 7.1.1 — filters do not double per block), same padding,
  stride 1, leaky ReLU; then 2×2(×2) max pooling and dropout. Flatten; one fully
  connected layer of ``fc_units`` (leaky ReLU); two linear heads µ and log σ² of size
  ``latent_dim`` J. q(z|x) = N(µ, diag σ²).
- Decoder: two fully connected layers (J → fc_units → filters·s^d, s = input_size /
  2**n_blocks, leaky ReLU after each), reshaped to (filters, s, …); ``n_blocks - 1``
  blocks, each ``convs_per_block`` stride-1 transposed convolutions (ReLU), dropout, then
  one stride-2 transposed convolution (ReLU) doubling the size — which brings the map to
  half the input size as in figure 6.2 — and a last stride-2 transposed convolution to
  the input size with a sigmoid (CT) or raw logits (RT).
- CT+RT (``n_classes > 0``): the decoder is shared up to resolution ``split_at`` (None:
  the last block, i.e. only the final transposed convolutions differ); from there a CT
  head (1 channel, sigmoid) and an RT head (n_classes channels, logits; softmax is applied
  by the loss and by :meth:`Decoded.rt_probs`) each have their own copy of the remaining
  blocks.

Dropout is the probability of zeroing an element (PyTorch's convention), element-wise as
in the thesis' TensorFlow layers. The network runs in either memory format; convert the
model and the input together (``model.to(memory_format=torch.channels_last)`` in 2D,
``torch.channels_last_3d`` in 3D; see :func:`channels_last_format`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from training.config import ConfigError, ModelConfig, PreprocessConfig

__all__ = [
    "VAE",
    "Decoded",
    "VAEOutput",
    "build_model",
    "model_config_for",
    "channels_last_format",
    "assemble_input",
    "conv_layer",
    "conv_transpose_layer",
    "pool_layer",
    "dropout_layer",
]


# -- layer factories: the only place where 2D and 3D differ ---------------------------------


def conv_layer(dims: int, in_ch: int, out_ch: int) -> nn.Module:
    """3×3(×3) convolution, stride 1, same padding."""
    cls = {2: nn.Conv2d, 3: nn.Conv3d}[dims]
    return cls(in_ch, out_ch, kernel_size=3, stride=1, padding=1)


def conv_transpose_layer(dims: int, in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """3×3(×3) transposed convolution keeping (stride 1) or doubling (stride 2) the size."""
    cls = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]
    # output_padding=stride-1 makes stride 2 give exactly 2·n, TensorFlow's "same" rule.
    return cls(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, output_padding=stride - 1)


def pool_layer(dims: int) -> nn.Module:
    """2×2(×2) max pooling, stride 2."""
    cls = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[dims]
    return cls(kernel_size=2, stride=2)


def dropout_layer(dims: int, p: float) -> nn.Module:
    """Element-wise dropout for either dimensionality.

    Not Dropout2d/3d: those drop whole feature maps, and with 24 maps at the thesis'
    rates that removes most of the signal; the thesis' TensorFlow dropout is element-wise.
    """
    if dims not in (2, 3):
        raise ValueError(f"spatial dims must be 2 or 3, got {dims}")
    return nn.Dropout(p) if p > 0 else nn.Identity()


def channels_last_format(spatial_dims: int) -> torch.memory_format:
    """``torch.channels_last`` for 2D, ``torch.channels_last_3d`` for 3D."""
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


# -- outputs ---------------------------------------------------------------------------------


class Decoded(NamedTuple):
    """Decoder output: ``ct`` (N, 1, *spatial) in (0, 1); ``rt_logits`` (N, n_classes,
    *spatial) unnormalised class scores, or None for a CT-only model."""

    ct: torch.Tensor
    rt_logits: torch.Tensor | None

    def rt_probs(self) -> torch.Tensor | None:
        """Softmax over the class channel (sums to 1 per pixel), or None."""
        return None if self.rt_logits is None else torch.softmax(self.rt_logits, dim=1)


class VAEOutput(NamedTuple):
    """Result of :meth:`VAE.forward` for B inputs and U = ``mc_samples`` draws each.

    - ``mu``, ``logvar``: (B, J), the parameters of q(z|x) (log σ² natural log).
    - ``z``: (U·B, J), sample-major: row u·B + b is draw u for input b, so
      ``z.view(U, B, J)`` separates the draws and ``x.repeat(U, 1, …)`` lines inputs up.
    - ``ct``: (U·B, 1, *spatial), ``rt_logits``: (U·B, n_classes, *spatial) or None, in
      the same sample-major order.
    """

    ct: torch.Tensor
    rt_logits: torch.Tensor | None
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor
    mc_samples: int = 1

    def rt_probs(self) -> torch.Tensor | None:
        return None if self.rt_logits is None else torch.softmax(self.rt_logits, dim=1)


# -- the network -----------------------------------------------------------------------------


def _decoder_block(dims: int, f: int, n_convs: int, p: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(n_convs):
        layers += [conv_transpose_layer(dims, f, f, 1), nn.ReLU(inplace=True)]
    layers += [dropout_layer(dims, p), conv_transpose_layer(dims, f, f, 2), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _check(cfg: ModelConfig) -> None:
    cfg.validate()
    for name in ("n_blocks", "convs_per_block", "filters", "fc_units"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"ModelConfig.{name} must be ≥ 1, got {getattr(cfg, name)}")
    if cfg.split_at is not None:
        base = cfg.input_size // 2**cfg.n_blocks
        allowed = [base * 2**i for i in range(cfg.n_blocks)]
        if cfg.split_at not in allowed:
            raise ConfigError(
                f"ModelConfig.split_at {cfg.split_at} is not a decoder resolution; "
                f"choose one of {allowed} or None (the last block)"
            )


class VAE(nn.Module):
    """Gaussian VAE with a fixed-variance decoder (thesis 4.2.3, 6.1–6.2)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        _check(cfg)
        self.cfg = cfg
        d, f = cfg.spatial_dims, cfg.filters
        self.base_size = cfg.input_size // 2**cfg.n_blocks  # spatial edge after the encoder
        flat = f * self.base_size**d
        act = lambda: nn.LeakyReLU(cfg.leaky_slope, inplace=True)  # noqa: E731

        enc: list[nn.Module] = []
        ch = cfg.in_channels
        for _ in range(cfg.n_blocks):
            for _ in range(cfg.convs_per_block):
                enc += [conv_layer(d, ch, f), act()]
                ch = f
            enc += [pool_layer(d), dropout_layer(d, cfg.dropout)]
        self.encoder = nn.Sequential(*enc)
        self.enc_fc = nn.Sequential(nn.Linear(flat, cfg.fc_units), act())
        self.fc_mu = nn.Linear(cfg.fc_units, cfg.latent_dim)
        self.fc_logvar = nn.Linear(cfg.fc_units, cfg.latent_dim)

        self.dec_fc = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.fc_units), act(), nn.Linear(cfg.fc_units, flat), act()
        )
        n_dec = cfg.n_blocks - 1  # blocks from base_size up to input_size / 2
        split = cfg.split_at if cfg.split_at is not None else cfg.input_size // 2
        n_shared = int(round(math.log2(split // self.base_size))) if cfg.n_classes else n_dec
        block = lambda: _decoder_block(d, f, cfg.convs_per_block, cfg.dropout)  # noqa: E731
        self.dec_shared = nn.Sequential(*[block() for _ in range(n_shared)])
        self.ct_head = nn.Sequential(
            *[block() for _ in range(n_dec - n_shared)],
            conv_transpose_layer(d, f, 1, 2),
            nn.Sigmoid(),
        )
        self.rt_head: nn.Sequential | None = None
        if cfg.n_classes:
            self.rt_head = nn.Sequential(
                *[block() for _ in range(n_dec - n_shared)],
                conv_transpose_layer(d, f, cfg.n_classes, 2),
            )
        self._init_weights()

    def _init_weights(self) -> None:
        """He (Kaiming) weights for the rectified layers, Xavier for the output layers,
        zero biases (TensorFlow's default, as in the thesis).

        PyTorch's default initialisation (uniform ±1/√fan_in with non-zero biases) shrinks
        the signal by about √3 per layer; after the eight encoder convolutions of the
        thesis network the biases dominate, µ no longer depends on the input, and training
        stalls on the mean image (posterior collapse from the first step).
        """
        slope = self.cfg.leaky_slope
        outputs = {id(self.fc_mu), id(self.fc_logvar), id(self.ct_head[-2])}
        if self.rt_head is not None:
            outputs.add(id(self.rt_head[-1]))
        for module in self.modules():
            if not isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                continue
            if id(module) in outputs:
                nn.init.xavier_uniform_(module.weight)
            else:
                # leaky ReLU gain; for the plain-ReLU decoder layers the difference is
                # a factor √(1 + slope²) ≈ 1.02.
                nn.init.kaiming_normal_(module.weight, a=slope, nonlinearity="leaky_relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # -- API -----------------------------------------------------------------------------

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 1 + n_classes, *spatial) → (µ, log σ²), each (B, J)."""
        self._check_input(x)
        h = self.encoder(x)
        # flatten(1) reads in logical (C, spatial) order whatever the memory format, so
        # the fully connected weights mean the same thing in both formats.
        h = self.enc_fc(h.flatten(1))
        return self.fc_mu(h), self.fc_logvar(h)

    def sample(
        self, mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Reparameterised draw z = µ + σ ⊙ ε, ε ~ N(0, I) in training mode; µ in eval mode."""
        if not self.training:
            return mu
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> Decoded:
        """z (N, J) → :class:`Decoded` (ct (N, 1, *spatial), rt_logits or None)."""
        s, d = self.base_size, self.cfg.spatial_dims
        h = self.dec_fc(z).view(z.shape[0], self.cfg.filters, *([s] * d))
        fmt = self._memory_format()
        if fmt is not None:
            h = h.contiguous(memory_format=fmt)
        h = self.dec_shared(h)
        ct = self.ct_head(h)
        rt = self.rt_head(h) if self.rt_head is not None else None
        return Decoded(ct, rt)

    def forward(self, x: torch.Tensor, mc_samples: int = 1) -> VAEOutput:
        """Encode, draw ``mc_samples`` codes per input, decode them all in one batch.

        Shapes follow :class:`VAEOutput` (decoded tensors and z are (U·B, …),
        sample-major).
        """
        if mc_samples < 1:
            raise ValueError(f"mc_samples must be ≥ 1, got {mc_samples}")
        mu, logvar = self.encode(x)
        if mc_samples == 1:
            z = self.sample(mu, logvar)
        else:
            z = self.sample(mu.repeat(mc_samples, 1), logvar.repeat(mc_samples, 1))
        ct, rt = self.decode(z)
        return VAEOutput(ct, rt, mu, logvar, z, mc_samples)

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # -- helpers -------------------------------------------------------------------------

    def _check_input(self, x: torch.Tensor) -> None:
        c = self.cfg
        want = (c.in_channels, *([c.input_size] * c.spatial_dims))
        if x.dim() != 2 + c.spatial_dims or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"VAE input must be (B, {', '.join(map(str, want))}), got {tuple(x.shape)}"
            )

    def _memory_format(self) -> torch.memory_format | None:
        """channels_last(_3d) when the model's first convolution was converted to it."""
        fmt = channels_last_format(self.cfg.spatial_dims)
        for m in self.modules():
            w = getattr(m, "weight", None)
            # a weight with one channel is contiguous in both formats and tells nothing
            if w is not None and w.dim() == 2 + self.cfg.spatial_dims and min(w.shape[:2]) > 1:
                return fmt if w.is_contiguous(memory_format=fmt) and not w.is_contiguous() else None
        return None


# -- construction ----------------------------------------------------------------------------


def build_model(cfg: ModelConfig) -> VAE:
    """A freshly initialised VAE for ``cfg`` (seed torch beforehand for reproducibility)."""
    return VAE(cfg)


def model_config_for(preprocess: PreprocessConfig, **overrides) -> ModelConfig:
    """ModelConfig matching a workspace's preprocessing; ``overrides`` set other fields.

    input_size = preprocess.size or preprocess.crop; spatial_dims from preprocess.mode;
    n_classes = len(rois) + 1 (complement) or 0. The 3D model needs cubes, so a
    preprocess.depth different from the in-plane size is refused.
    """
    edge = preprocess.size or preprocess.crop
    values = {
        "spatial_dims": 3 if preprocess.mode == "3d" else 2,
        "n_classes": preprocess.n_classes,
    }
    if edge is not None:
        values["input_size"] = edge
    elif "input_size" not in overrides:
        raise ConfigError(
            "preprocessing keeps the full slice (crop and size are None); "
            "pass input_size= to model_config_for"
        )
    if preprocess.mode == "3d" and preprocess.depth is not None:
        if preprocess.depth != overrides.get("input_size", edge):
            raise ConfigError(
                f"the 3D model needs cubic volumes: depth {preprocess.depth} differs from "
                f"the in-plane size {overrides.get('input_size', edge)}"
            )
    values.update(overrides)
    cfg = ModelConfig(**values)
    cfg.validate()
    _check(cfg)
    return cfg


def assemble_input(ct: torch.Tensor, labels: torch.Tensor | None, n_classes: int) -> torch.Tensor:
    """Network input from CT (B, *spatial) in [0, 1] and a label map (B, *spatial) of
    class indices (0 = complement): (B, 1 + n_classes, *spatial), CT then one-hot RT."""
    x = ct.unsqueeze(1)
    if n_classes == 0:
        return x
    if labels is None:
        raise ValueError("labels are required when n_classes > 0")
    one_hot = torch.nn.functional.one_hot(labels.long(), n_classes).movedim(-1, 1)
    return torch.cat([x, one_hot.to(x.dtype)], dim=1)
