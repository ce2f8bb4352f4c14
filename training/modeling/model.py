"""TimeSformer (and PP-TimeSformer) in PyTorch: a ViT with space-time attention over video clips.

Laid out like timm's ``vision_transformer.py``: building blocks, then the model with ``forward_features`` /
``forward_head`` / ``forward``, then factory functions per published variant.

The maths is exactly that of the official implementation (facebookresearch/TimeSformer,
``timesformer/models/vit.py``), so its checkpoints load unchanged (same state-dict keys) and give the same
logits, including on inputs whose frame count or image size differs from the trained one:

* tokens after the cls token are ordered ``(h w t)``: patch-major, frame-minor;
* ``divided_space_time``: temporal attention over ``(b h w) t m`` (no cls token) through ``temporal_norm1`` /
  ``temporal_attn`` / ``temporal_fc``, then spatial attention over ``(b t) (1+hw) m`` with the block-input cls
  token repeated per frame and its T outputs averaged; ``[cls; xt] + [mean cls; spatial]``; then the MLP;
* ``space_only``: every frame is its own ViT sequence; the outputs are averaged over T before the final norm;
* ``joint_space_time``: one sequence of ``1 + hw*t`` tokens.

PP-TimeSformer (PaddleVideo's ``VisionTransformer_tweaks``) is the same network with ``qkv_bias=False``; its
improvements are in training, not in the architecture.

Export note: every reshape keeps the batch dimension as ``-1`` and reads T / H / W as Python ints, so a traced
graph has a dynamic batch axis with static frame and image sizes and almost no shape arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_TYPES = ("divided_space_time", "space_only", "joint_space_time")

__all__ = [
    "ATTENTION_TYPES",
    "Attention",
    "Block",
    "DropPath",
    "Mlp",
    "PatchEmbed",
    "TimeSformer",
    "pptimesformer_base_16x224",
    "pptimesformer_base_8x224",
    "resize_pos_embed_nearest",
    "resize_time_embed_nearest",
    "timesformer_base_8x224",
    "timesformer_hr_16x448",
    "timesformer_l_96x224",
    "timesformer_tiny",
]


# ----------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability ``drop_prob`` and rescale
    the rest, so the expected value is unchanged. Identity in eval."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # one draw per sample, broadcast over tokens/channels
    mask = x.new_empty(shape).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """Transformer feed-forward: Linear -> exact-erf GELU -> Linear (as the official ViT)."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="none")
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention with one packed ``qkv`` Linear (q|k|v, head-major), as the official ViT.

    ``fused_attn=True`` runs ``F.scaled_dot_product_attention`` (fast in eager PyTorch); ``False`` runs the
    plain matmul + softmax that ONNX/TensorRT exporters turn into simple, well-optimised graphs. Both compute
    the same function (checked by a test).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fused_attn: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = fused_attn
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop_p = float(attn_drop)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, n, c = x.shape  # (B, N, C); B is kept symbolic (-1) for export
        n, c = int(n), int(c)
        qkv = self.qkv(x).reshape(-1, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop_p if self.training else 0.0, scale=self.scale
            )
        else:
            # Scale q before the product (as SDPA does): the logits never exist unscaled, so an FP16 engine
            # cannot overflow on them (|q.k| grows with head_dim; scaled, it stays in softmax's range).
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, N, N)
            attn = attn.softmax(dim=-1)
            attn = self.attn_drop(attn)
            x = attn @ v  # (B, heads, N, head_dim)
        x = x.transpose(1, 2).reshape(-1, n, c)  # (B, N, C)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """One transformer block for any of the three attention types (composition, not subclasses)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        attention_type: str = "divided_space_time",
        fused_attn: bool = True,
    ) -> None:
        super().__init__()
        if attention_type not in ATTENTION_TYPES:
            raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}, got {attention_type!r}")
        self.attention_type = attention_type
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, fused_attn)
        if attention_type == "divided_space_time":
            self.temporal_norm1 = norm_layer(dim)
            self.temporal_attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, fused_attn)
            self.temporal_fc = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, num_frames: int, grid_hw: tuple[int, int]) -> torch.Tensor:
        """``x``: (B, 1 + h*w*t, C) for divided/joint, (B*T, 1 + h*w, C) for space_only."""
        if self.attention_type != "divided_space_time":
            x = x + self.drop_path(self.attn(self.norm1(x)))
            return x + self.drop_path(self.mlp(self.norm2(x)))

        t = num_frames
        hw = grid_hw[0] * grid_hw[1]
        c = int(x.shape[-1])
        # Temporal: tokens are (h w t)-ordered, so (b h w) t m is a plain reshape.
        xt = x[:, 1:, :]  # (B, hw*T, C)
        res_t = self.drop_path(self.temporal_attn(self.temporal_norm1(xt.reshape(-1, t, c))))  # (B*hw, T, C)
        res_t = self.temporal_fc(res_t.reshape(-1, hw * t, c))  # (B, hw*T, C)
        xt = xt + res_t

        # Spatial: each frame attends over its own patches plus the block-input cls token.
        init_cls = x[:, :1, :]  # (B, 1, C)
        cls = init_cls.repeat(1, t, 1).reshape(-1, 1, c)  # (B*T, 1, C); repeat exports as one Tile
        xs = xt.reshape(-1, hw, t, c).transpose(1, 2).reshape(-1, hw, c)  # (B*T, hw, C)
        xs = torch.cat((cls, xs), dim=1)  # (B*T, 1+hw, C)
        res_s = self.drop_path(self.attn(self.norm1(xs)))  # (B*T, 1+hw, C)
        cls = res_s[:, 0, :].reshape(-1, t, c).mean(dim=1, keepdim=True)  # (B, 1, C): average over frames
        res_s = res_s[:, 1:, :].reshape(-1, t, hw, c).transpose(1, 2).reshape(-1, hw * t, c)  # (B, hw*T, C)

        x = torch.cat((init_cls, xt), dim=1) + torch.cat((cls, res_s), dim=1)  # (B, 1+hw*T, C)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Per-frame patchify with a strided Conv2d: (B, 3, T, H, W) -> (B*T, h*w, C), h = H // patch."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        if img_size < patch_size:
            raise ValueError(f"img_size {img_size} is smaller than patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size * self.grid_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, tuple[int, int]]:
        _, c, t, h, w = x.shape
        c, t, h, w = int(c), int(t), int(h), int(w)
        x = x.transpose(1, 2).reshape(-1, c, h, w)  # (B*T, 3, H, W)
        x = self.proj(x)  # (B*T, C, h, w)
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        x = x.flatten(2).transpose(1, 2)  # (B*T, h*w, C)
        return x, t, grid


def resize_pos_embed_nearest(pos_embed: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """The official runtime rule: the square patch grid of ``pos_embed`` (1, 1+P*P, C) resized in 2-D with
    ``F.interpolate(mode='nearest')`` to ``grid_hw``; the cls position is kept. Returns (1, 1+h*w, C)."""
    c = pos_embed.shape[-1]
    p = int(math.sqrt(pos_embed.shape[1] - 1))
    cls_pos = pos_embed[:, :1, :]  # (1, 1, C)
    grid = pos_embed[:, 1:, :].transpose(1, 2).reshape(1, c, p, p)  # (1, C, P, P)
    grid = F.interpolate(grid, size=grid_hw, mode="nearest")  # (1, C, h, w)
    return torch.cat((cls_pos, grid.flatten(2).transpose(1, 2)), dim=1)


def resize_time_embed_nearest(time_embed: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The official runtime rule: ``time_embed`` (1, T0, C) resized along T with nearest -> (1, T, C)."""
    return F.interpolate(time_embed.transpose(1, 2), size=num_frames, mode="nearest").transpose(1, 2)


# ----------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------


class TimeSformer(nn.Module):
    """TimeSformer video classifier: (B, 3, T, H, W) float32 -> raw logits (B, num_classes).

    State-dict keys are exactly the official ``VisionTransformer``'s (``cls_token``, ``pos_embed``,
    ``time_embed``, ``patch_embed.proj.*``, ``blocks.{i}.*``, ``norm.*``, ``head.*``).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 400,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        ln_eps: float = 1e-6,
        num_frames: int = 8,
        attention_type: str = "divided_space_time",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        fused_attn: bool = True,
    ) -> None:
        super().__init__()
        if attention_type not in ATTENTION_TYPES:
            raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}, got {attention_type!r}")
        for name, value in (
            ("img_size", img_size),
            ("patch_size", patch_size),
            ("in_chans", in_chans),
            ("embed_dim", embed_dim),
            ("depth", depth),
            ("num_heads", num_heads),
            ("num_frames", num_frames),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative integer, got {num_classes!r}")
        self._config: dict[str, Any] = dict(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=float(mlp_ratio),
            qkv_bias=bool(qkv_bias),
            ln_eps=float(ln_eps),
            num_frames=num_frames,
            attention_type=attention_type,
            drop_rate=float(drop_rate),
            attn_drop_rate=float(attn_drop_rate),
            drop_path_rate=float(drop_path_rate),
            fused_attn=bool(fused_attn),
        )
        self.attention_type = attention_type
        self.num_classes = num_classes
        self.num_frames = num_frames
        self.num_features = self.embed_dim = embed_dim
        norm_layer = partial(nn.LayerNorm, eps=ln_eps)

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        if attention_type != "space_only":
            self.time_embed = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
            self.time_drop = nn.Dropout(drop_rate)

        # Stochastic depth decay rule (linspace 0..rate), in Python so meta-device construction works.
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            [
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio,
                    qkv_bias,
                    drop_rate,
                    attn_drop_rate,
                    dpr[i],
                    norm_layer,
                    attention_type,
                    fused_attn,
                )
                for i in range(depth)
            ]
        )
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    # ---- construction helpers ----------------------------------------------------------------------------

    @property
    def model_config(self) -> dict[str, Any]:
        """The constructor keyword arguments (what a native checkpoint stores as ``model_config``)."""
        return dict(self._config)

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official initialisation, so training from scratch (or from image weights) behaves the same.

        cls_token / pos_embed: truncated normal, std 0.02; every Linear: truncated normal std 0.02, bias 0;
        LayerNorm: 1 / 0; time_embed: zero (as the official code, where it starts at zero and learns);
        ``temporal_fc``: zero. The official loop meant to skip the first block (``if i > 0``) but also counts
        the ``ModuleList`` itself (its repr contains "Block"), so in effect it zeroes ``temporal_fc`` in
        every block -- reproduced here. A zero ``temporal_fc`` makes each block start as its image block.
        """
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_module)
        if self.attention_type == "divided_space_time":
            for blk in self.blocks:
                nn.init.zeros_(blk.temporal_fc.weight)
                nn.init.zeros_(blk.temporal_fc.bias)

    @staticmethod
    def _init_module(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters that the official recipes exclude from weight decay."""
        return {"pos_embed", "cls_token", "time_embed"}

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh head for another label set (e.g. fine-tuning K400 weights on UCF-101)."""
        self.num_classes = num_classes
        self._config["num_classes"] = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            self._init_module(self.head)

    def set_fused_attn(self, enabled: bool) -> None:
        """Switch every attention between the fused and the plain (export-safe) path."""
        self._config["fused_attn"] = bool(enabled)
        for m in self.modules():
            if isinstance(m, Attention):
                m.fused_attn = bool(enabled)

    # ---- forward -----------------------------------------------------------------------------------------

    def _pos_embed_for(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        # The official forward resizes when the token count differs (not when only the grid's aspect does).
        if grid_hw[0] * grid_hw[1] + 1 == self.pos_embed.shape[1]:
            return self.pos_embed
        return resize_pos_embed_nearest(self.pos_embed, grid_hw)

    def _time_embed_for(self, num_frames: int) -> torch.Tensor:
        if num_frames == self.time_embed.shape[1]:
            return self.time_embed
        return resize_time_embed_nearest(self.time_embed, num_frames)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> final-normed tokens: (B, 1 + h*w*T, C), or (B, 1 + h*w, C) for space_only."""
        if x.ndim != 5:
            raise ValueError(f"expected input (B, 3, T, H, W), got shape {tuple(x.shape)}")
        x, t, grid = self.patch_embed(x)  # (B*T, hw, C)
        hw = grid[0] * grid[1]
        c = self.embed_dim
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B*T, 1, C)
        x = torch.cat((cls, x), dim=1)  # (B*T, 1+hw, C)
        x = self.pos_drop(x + self._pos_embed_for(grid))

        if self.attention_type != "space_only":
            cls = x[:, :1, :].reshape(-1, t, 1, c)[:, 0]  # (B, 1, C): identical for every frame
            x = x[:, 1:, :].reshape(-1, t, hw, c).transpose(1, 2)  # (B, hw, T, C)
            x = self.time_drop(x + self._time_embed_for(t).unsqueeze(1))  # time_embed (1, 1, T, C)
            x = torch.cat((cls, x.reshape(-1, hw * t, c)), dim=1)  # (B, 1+hw*T, C), tokens (h w t)

        for blk in self.blocks:
            x = blk(x, t, grid)

        if self.attention_type == "space_only":
            x = x.reshape(-1, t, 1 + hw, c).mean(dim=1)  # (B, 1+hw, C): average the per-frame outputs
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Final-normed tokens -> logits (B, num_classes), or the cls feature (B, C) with ``pre_logits``."""
        x = x[:, 0]  # (B, C)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ----------------------------------------------------------------------------------------------------
# Factories
# ----------------------------------------------------------------------------------------------------


def _build(defaults: dict[str, Any], num_classes: int, overrides: dict[str, Any]) -> TimeSformer:
    return TimeSformer(**{**defaults, "num_classes": num_classes, **overrides})


_VIT_B16: dict[str, Any] = dict(
    patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, ln_eps=1e-6
)


def timesformer_base_8x224(num_classes: int = 400, **kwargs: Any) -> TimeSformer:
    """Official TimeSformer (K400: 8 frames x 224, divided attention, qkv bias)."""
    return _build({**_VIT_B16, "img_size": 224, "num_frames": 8, "qkv_bias": True}, num_classes, kwargs)


def pptimesformer_base_8x224(num_classes: int = 400, **kwargs: Any) -> TimeSformer:
    """PaddleVideo's PP-TimeSformer ViT-B/16, 8 frames x 224 (no qkv bias)."""
    return _build({**_VIT_B16, "img_size": 224, "num_frames": 8, "qkv_bias": False}, num_classes, kwargs)


def pptimesformer_base_16x224(num_classes: int = 400, **kwargs: Any) -> TimeSformer:
    """PaddleVideo's PP-TimeSformer ViT-B/16, 16 frames x 224 (no qkv bias)."""
    return _build({**_VIT_B16, "img_size": 224, "num_frames": 16, "qkv_bias": False}, num_classes, kwargs)


def timesformer_hr_16x448(num_classes: int = 400, **kwargs: Any) -> TimeSformer:
    """Official TimeSformer-HR: 16 frames x 448."""
    return _build({**_VIT_B16, "img_size": 448, "num_frames": 16, "qkv_bias": True}, num_classes, kwargs)


def timesformer_l_96x224(num_classes: int = 400, **kwargs: Any) -> TimeSformer:
    """Official TimeSformer-L: the same ViT-B/16 over 96 frames x 224."""
    return _build({**_VIT_B16, "img_size": 224, "num_frames": 96, "qkv_bias": True}, num_classes, kwargs)


def timesformer_tiny(
    num_classes: int = 5, num_frames: int = 8, img_size: int = 32, **kwargs: Any
) -> TimeSformer:
    """A small model for tests and the CPU demo: patch 8, width 48, depth 2, 3 heads."""
    defaults = dict(
        img_size=img_size,
        patch_size=8,
        embed_dim=48,
        depth=2,
        num_heads=3,
        mlp_ratio=4.0,
        qkv_bias=True,
        ln_eps=1e-6,
        num_frames=num_frames,
    )
    return _build(defaults, num_classes, kwargs)
