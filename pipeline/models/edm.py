"""The ImageNet-64 generator network of DMD2: an EDM-preconditioned ADM ("Dhariwal") UNet.

Written from the description in the project's reference notes (names, shapes, formulas), not from EDM or
DMD2 code. Module and parameter names match the released checkpoints, so a DMD2 ImageNet
``pytorch_model.bin`` loads into ``EDMPrecond(**imagenet_config())`` with ``strict=True``.

Block outputs are never modified in place after they are produced, so a forward hook that keeps a reference
sees the value the block returned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Conv2d",
    "DhariwalUNet",
    "EDMPrecond",
    "UNetBlock",
    "count_parameters",
    "imagenet_config",
]


def imagenet_config() -> dict:
    """Constructor keywords of the DMD2 ImageNet-64 generator (295,899,267 parameters)."""
    return dict(
        img_resolution=64,
        img_channels=3,
        label_dim=1000,
        model_channels=192,
        channel_mult=(1, 2, 3, 4),
        channel_mult_emb=4,
        num_blocks=3,
        attn_resolutions=(32, 16, 8),
        channels_per_head=64,
        sigma_data=0.5,
        dropout=0.0,
    )


def count_parameters(module: nn.Module) -> int:
    """Number of parameter values (buffers excluded). Works on the meta device."""
    return sum(p.numel() for p in module.parameters())


def _group_norm(channels: int) -> nn.GroupNorm:
    groups = min(32, channels // 4)
    if groups == 0 or channels % groups:
        raise ValueError(
            f"a block with {channels} channels cannot be group-normalised (groups = min(32, C // 4) = {groups} "
            "must divide C): choose model_channels and channel_mult so every block width, including the "
            "decoder's concatenated inputs, is a multiple of 4 and, above 128, of 32"
        )
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-5)


class Conv2d(nn.Module):
    """A square convolution with optional 2x resampling in front of it.

    ``kernel=0`` gives a weightless module that only resamples (the skip path of down/up blocks).
    Resampling convs carry the persistent ``resample_filter`` buffer (1, 1, 2, 2) of 0.25 that the
    checkpoints store. That filter, applied depthwise with stride 2, is exactly a 2x2 average; 4x it as a
    stride-2 transposed convolution is exactly nearest-neighbour 2x. Those equivalent (and much faster)
    operations are what runs; the buffer is kept so that checkpoints load strictly.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        if up and down:
            raise ValueError("a convolution cannot both up- and down-sample")
        if kernel == 0 and in_channels != out_channels:
            raise ValueError(
                f"a weightless (kernel=0) conv needs in == out channels, got {in_channels} -> {out_channels}"
            )
        self.in_channels, self.out_channels, self.kernel = in_channels, out_channels, kernel
        self.up, self.down = up, down
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel)) if kernel else None
        self.bias = nn.Parameter(torch.empty(out_channels)) if kernel and bias else None
        if up or down:
            self.register_buffer("resample_filter", torch.full((1, 1, 2, 2), 0.25), persistent=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = F.avg_pool2d(x, 2)
        elif self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        if self.weight is not None:
            bias = None if self.bias is None else self.bias.to(x.dtype)
            x = F.conv2d(x, self.weight.to(x.dtype), bias, padding=self.kernel // 2)
        return x


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of the noise level: [cos(c·f), sin(c·f)], f_i = (1/10000)^(i / (C/2))."""

    def __init__(self, num_channels: int, max_positions: int = 10000):
        super().__init__()
        self.num_channels, self.max_positions = num_channels, max_positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = (1.0 / self.max_positions) ** (
            torch.arange(half, dtype=torch.float32, device=x.device) / half
        )
        angles = x.to(torch.float32).reshape(-1, 1) * freqs.reshape(1, -1)
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class UNetBlock(nn.Module):
    """ADM residual block with adaptive group-norm scale/shift and optional self-attention."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        channels_per_head: int = 64,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_heads = out_channels // channels_per_head if attention else 0

        # Registration order mirrors the checkpoint's key order.
        self.norm0 = _group_norm(in_channels)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down)
        self.affine = nn.Linear(emb_channels, out_channels * 2)
        self.norm1 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3)
        self.skip = None
        if in_channels != out_channels or up or down:
            kernel = 1 if in_channels != out_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down)
        if self.num_heads:
            self.norm2 = _group_norm(out_channels)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1)
            self.proj = Conv2d(out_channels, out_channels, kernel=1)
        # Residual branches start as the identity, which makes training from scratch stable.
        nn.init.zeros_(self.conv1.weight)
        if self.num_heads:
            nn.init.zeros_(self.proj.weight)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb).unsqueeze(2).unsqueeze(3).to(h.dtype).chunk(2, dim=1)
        h = F.silu(shift + self.norm1(h) * (scale + 1))
        h = self.conv1(self.dropout(h))
        h = h + (self.skip(x) if self.skip is not None else x)
        if self.num_heads:
            h = self.proj(self._attend(self.qkv(self.norm2(h)))) + h
        return h

    def _attend(self, qkv: torch.Tensor) -> torch.Tensor:
        # qkv channels are interleaved per head: channel = head*(3*C_h) + c*3 + j, j = 0 (q), 1 (k), 2 (v).
        n, _, height, width = qkv.shape
        heads, c_h = self.num_heads, self.out_channels // self.num_heads
        q, k, v = qkv.reshape(n * heads, c_h, 3, height * width).unbind(2)
        # (N*heads, tokens, C_h); attention in float32 like the reference.
        q, k, v = (t.transpose(1, 2).float() for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(c_h))
        return a.transpose(1, 2).reshape(n, heads * c_h, height, width).to(qkv.dtype)


class DhariwalUNet(nn.Module):
    """ADM UNet. ``enc``/``dec`` are keyed ``{res}x{res}_conv|_down|_up|_in0|_in1|_block{i}``."""

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_emb: int = 4,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (32, 16, 8),
        channels_per_head: int = 64,
        dropout: float = 0.0,
    ):
        super().__init__()
        levels = len(channel_mult)
        if levels == 0 or img_resolution % (1 << (levels - 1)):
            raise ValueError(
                f"img_resolution {img_resolution} is not divisible by 2^{levels - 1} (channel_mult={channel_mult})"
            )
        emb_channels = model_channels * channel_mult_emb
        block = dict(emb_channels=emb_channels, channels_per_head=channels_per_head, dropout=dropout)

        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = None
        self.map_layer0 = nn.Linear(model_channels, emb_channels)
        self.map_layer1 = nn.Linear(emb_channels, emb_channels)
        self.map_label = nn.Linear(label_dim, emb_channels, bias=False) if label_dim else None

        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
            for i in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{i}"] = UNetBlock(
                    cin, cout, attention=res in attn_resolutions, **block
                )
        skips = [m.out_channels for m in self.enc.values()]

        self.dec = nn.ModuleDict()
        self._takes_skip: set[str] = set()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == levels - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for i in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                name = f"{res}x{res}_block{i}"
                self.dec[name] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
                self._takes_skip.add(name)
        self.out_norm = _group_norm(cout)
        self.out_conv = Conv2d(cout, out_channels, kernel=3)
        nn.init.zeros_(self.out_conv.weight)

    def forward(
        self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None
    ) -> torch.Tensor:
        emb = self.map_noise(noise_labels).to(self.map_layer0.weight.dtype)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels.to(emb.dtype))
        emb = F.silu(emb)

        skips = []
        for module in self.enc.values():
            x = module(x, emb) if isinstance(module, UNetBlock) else module(x)
            skips.append(x)
        for name, module in self.dec.items():
            if name in self._takes_skip:
                x = torch.cat([x, skips.pop()], dim=1)
            x = module(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


class EDMPrecond(nn.Module):
    """EDM preconditioning around a DhariwalUNet: ``forward(x, sigma, class_labels)`` returns the denoised D.

    ``class_labels`` may be one-hot / soft rows of shape (N, label_dim), integer class indices of shape (N,),
    or None (a zero row, as the reference does; off-distribution for models trained without label dropout).
    """

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_emb: int = 4,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (32, 16, 8),
        channels_per_head: int = 64,
        sigma_data: float = 0.5,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.config = dict(
            img_resolution=img_resolution,
            img_channels=img_channels,
            label_dim=label_dim,
            model_channels=model_channels,
            channel_mult=tuple(channel_mult),
            channel_mult_emb=channel_mult_emb,
            num_blocks=num_blocks,
            attn_resolutions=tuple(attn_resolutions),
            channels_per_head=channels_per_head,
            sigma_data=sigma_data,
            dropout=dropout,
        )
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.sigma_data = sigma_data
        self.model = DhariwalUNet(
            img_resolution=img_resolution,
            in_channels=img_channels,
            out_channels=img_channels,
            label_dim=label_dim,
            model_channels=model_channels,
            channel_mult=channel_mult,
            channel_mult_emb=channel_mult_emb,
            num_blocks=num_blocks,
            attn_resolutions=attn_resolutions,
            channels_per_head=channels_per_head,
            dropout=dropout,
        )

    def block_paths(self) -> list[str]:
        """Module paths of every encoder and decoder block, in execution order (hookable, plain-tensor outputs)."""
        return [f"model.enc.{k}" for k in self.model.enc] + [f"model.dec.{k}" for k in self.model.dec]

    def labels(
        self, class_labels: torch.Tensor | Sequence[int] | None, batch: int, device=None
    ) -> torch.Tensor:
        """Normalise class labels to float rows (N, label_dim)."""
        if self.label_dim == 0:
            return torch.zeros(batch, 0, device=device)
        if class_labels is None:
            return torch.zeros(batch, self.label_dim, device=device)
        labels = torch.as_tensor(class_labels, device=device)
        if labels.ndim == 1 and not labels.is_floating_point():
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.label_dim):
                raise ValueError(f"class indices must be in [0, {self.label_dim}), got {labels.tolist()}")
            return F.one_hot(labels.long(), self.label_dim).float()
        if labels.ndim != 2 or labels.shape[1] != self.label_dim:
            raise ValueError(
                f"class_labels must be (N, {self.label_dim}) rows or (N,) indices, got {tuple(labels.shape)}"
            )
        return labels.float()

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        class_labels: torch.Tensor | Sequence[int] | None = None,
    ) -> torch.Tensor:
        x = x.to(torch.float32)
        n = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(n)
        if sigma.numel() != n:
            raise ValueError(
                f"sigma must be a scalar or have one value per sample ({n}), got {sigma.numel()}"
            )
        labels = self.labels(class_labels, n, device=x.device)

        sd = self.sigma_data
        s = sigma.reshape(-1, 1, 1, 1)
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + s**2).sqrt()
        c_noise = sigma.log() / 4

        dtype = self.model.map_layer0.weight.dtype
        f_x = self.model((c_in * x).to(dtype), c_noise, labels.to(dtype)).to(torch.float32)
        return c_skip * x[:, : self.img_channels] + c_out * f_x
