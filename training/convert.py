"""Import published TimeSformer / PP-TimeSformer / mmaction2 / ImageNet-ViT weights as a native checkpoint.

    python -m training.convert SRC -o DST.pt [--format auto|official|paddle|mmaction|vit-image]
        [--num-heads N] [--num-frames T] [--ln-eps E] [--labels FILE] [--mean R G B --std R G B]
        [--num-classes N] [--attention-type divided_space_time|space_only|joint_space_time] [--img-size S]

Everything the tensors tell is inferred (see :func:`training.formats.infer_model_config`); only the head count
(default 12) and, for ``space_only`` and image weights, the frame count (default 8) come from flags. The
written checkpoint carries the model config, a preprocessing spec whose frame count and crop size come from
the weights, mean/std from the flags (defaults: ``paddle`` -> 0 / 1, since PaddleVideo feeds RGB/255
unnormalised; the others -> 0.45 / 0.225, the original TimeSformer's), and label names from ``--labels``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import Checkpoint, save_checkpoint
from training.formats import (
    FORMATS,
    ConvertError,
    build_and_load,
    conv_filter,
    detect_format,
    image_model_config,
    infer_model_config,
    inflate_image_weights,
    mmaction_to_native,
    official_to_native,
    paddle_to_native,
    read_checkpoint_file,
    read_label_file,
    resize_time_embed_for,
    unwrap_state_dict,
)
from training.model import ATTENTION_TYPES, TimeSformer
from training.spec import PADDLE_MEAN, PADDLE_STD, TIMESFORMER_MEAN, TIMESFORMER_STD, PreprocessSpec

__all__ = ["ConvertError", "convert_checkpoint", "main"]

_TO_NATIVE = {"official": official_to_native, "paddle": paddle_to_native, "mmaction": mmaction_to_native}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_checkpoint(
    src: str | Path,
    *,
    fmt: str = "auto",
    num_heads: int = 12,
    num_frames: int | None = None,
    ln_eps: float = 1e-6,
    labels: str | Path | Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    num_classes: int | None = None,
    attention_type: str = "divided_space_time",
    img_size: int | None = None,
    seed: int = 0,
) -> Checkpoint:
    """Read ``src`` (any supported format) and return the equivalent native :class:`Checkpoint`.

    ``num_frames`` sets the frame count of weights that carry none (space_only, image weights) and otherwise
    resizes ``time_embed`` with the official nearest rule. ``num_classes`` different from the weights' (or
    weights without a head) gives a fresh, seeded head. ``attention_type`` and ``img_size`` apply to
    ``vit-image`` only. Raises :class:`ConvertError` for every unusable input.
    """
    src = Path(src)
    if fmt != "auto" and fmt not in FORMATS:
        raise ConvertError(f"unknown format {fmt!r}; choose auto or one of {FORMATS}")
    if num_frames is not None and (not isinstance(num_frames, int) or num_frames < 1):
        raise ConvertError(f"num_frames must be a positive integer, got {num_frames!r}")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ConvertError(f"num_classes must be a positive integer, got {num_classes!r}")
    raw, container = unwrap_state_dict(read_checkpoint_file(src), str(src))
    fmt = detect_format(raw, container) if fmt == "auto" else fmt
    notes: list[str] = []

    torch.manual_seed(seed)  # fresh tensors (new head, image-weight model init) are reproducible
    if fmt == "vit-image":
        cfg = image_model_config(
            raw,
            num_heads=num_heads,
            num_frames=num_frames or 8,
            num_classes=num_classes,
            attention_type=attention_type,
            ln_eps=ln_eps,
            img_size=img_size,
        )
        model = TimeSformer(**cfg)
        report = inflate_image_weights(raw, model)
        notes.append(f"image weights inflated: {report.summary()}")
        if report.fresh:
            notes.append(f"fresh head ({cfg['num_classes']} classes)")
    else:
        try:
            native = conv_filter(_TO_NATIVE[fmt](raw))
        except ConvertError as exc:
            raise ConvertError(f"{src}: {exc}") from exc
        cfg = infer_model_config(native, num_heads=num_heads, num_frames=num_frames, ln_eps=ln_eps)
        if num_frames is not None and "time_embed" in native and num_frames != cfg["num_frames"]:
            notes.append(f"time_embed resized {cfg['num_frames']} -> {num_frames} frames (nearest)")
            native = resize_time_embed_for(native, num_frames)
            cfg["num_frames"] = num_frames
        if num_classes is not None and num_classes != cfg["num_classes"] or cfg["num_classes"] == 0:
            if num_classes is None:
                raise ConvertError(f"{src}: head.weight missing (backbone-only weights); pass --num-classes")
            notes.append(f"head replaced: {cfg['num_classes']} -> {num_classes} classes (fresh init)")
            native = {k: v for k, v in native.items() if not k.startswith("head.")}
            cfg["num_classes"] = num_classes
            fresh_head = TimeSformer(**{**cfg, "depth": 1}).head.state_dict()
            native.update({f"head.{k}": v for k, v in fresh_head.items()})
        model = build_and_load(cfg, native)

    default_mean, default_std = (
        (PADDLE_MEAN, PADDLE_STD) if fmt == "paddle" else (TIMESFORMER_MEAN, TIMESFORMER_STD)
    )
    try:
        spec = PreprocessSpec(
            num_frames=cfg["num_frames"],
            sampling="paddle" if fmt == "paddle" else "uniform",
            short_side=cfg["img_size"],
            crop_size=cfg["img_size"],
            crops="three",
            mean=tuple(mean) if mean is not None else default_mean,
            std=tuple(std) if std is not None else default_std,
        )
    except ValueError as exc:
        raise ConvertError(f"bad preprocessing flags: {exc}") from exc

    names: list[str] | None = None
    if labels is not None:
        names = read_label_file(labels) if isinstance(labels, (str, Path)) else [str(x) for x in labels]
        if len(names) != cfg["num_classes"]:
            raise ConvertError(f"{len(names)} labels for {cfg['num_classes']} classes in the weights")

    meta: dict[str, Any] = {
        "source": str(src),
        "source_format": fmt,
        "source_container": container,
        "source_sha256": _sha256(src),
        "converted_by": "training.convert",
        "notes": notes,
    }
    return Checkpoint(
        model_config=model.model_config,
        preprocess=spec,
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        labels=names,
        meta=meta,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.convert",
        description="Import published TimeSformer weights as a native checkpoint.",
    )
    p.add_argument("src", help="source weights (.pyth, .pdparams, .pth, .pt)")
    p.add_argument("-o", "--out", required=True, help="native checkpoint to write (.pt)")
    p.add_argument("--format", default="auto", choices=("auto", *FORMATS))
    p.add_argument("--num-heads", type=int, default=12, help="attention heads (not stored in weights)")
    p.add_argument(
        "--num-frames", type=int, default=None, help="frames (space_only/image weights; else resize)"
    )
    p.add_argument("--ln-eps", type=float, default=1e-6, help="LayerNorm epsilon")
    p.add_argument("--labels", default=None, help="label file: 'id name', classInd.txt, or one name per line")
    p.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), default=None)
    p.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), default=None)
    p.add_argument("--num-classes", type=int, default=None, help="new head size (image weights, fine-tuning)")
    p.add_argument(
        "--attention-type", default="divided_space_time", choices=ATTENTION_TYPES, help="vit-image"
    )
    p.add_argument("--img-size", type=int, default=None, help="vit-image: train at this size")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI: exit 0 after writing DST, 2 with one line naming the problem otherwise."""
    args = _parser().parse_args(argv)
    try:
        ckpt = convert_checkpoint(
            args.src,
            fmt=args.format,
            num_heads=args.num_heads,
            num_frames=args.num_frames,
            ln_eps=args.ln_eps,
            labels=args.labels,
            mean=args.mean,
            std=args.std,
            num_classes=args.num_classes,
            attention_type=args.attention_type,
            img_size=args.img_size,
        )
        out = save_checkpoint(ckpt, args.out)
    except (ConvertError, ValueError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)  # always one line
        return 2
    c = ckpt.model_config
    n_params = sum(v.numel() for v in ckpt.state_dict.values())
    notes = "; ".join(ckpt.meta["notes"])
    print(
        f"wrote {out}: {ckpt.meta['source_format']} -> {c['attention_type']} width {c['embed_dim']} depth "
        f"{c['depth']} heads {c['num_heads']} patch {c['patch_size']} {c['num_frames']}x{c['img_size']}, "
        f"{c['num_classes']} classes, {n_params / 1e6:.2f}M params, mean {list(ckpt.preprocess.mean)} "
        f"std {list(ckpt.preprocess.std)}" + (f" ({notes})" if notes else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
