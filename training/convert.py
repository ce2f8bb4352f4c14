"""Import published TimeSformer / PP-TimeSformer / mmaction2 / Hugging Face / ImageNet-ViT weights as a
native checkpoint.

    python -m training.convert SRC -o DST.pt [--format auto|official|paddle|mmaction|vit-image|hf]
        [--num-heads N] [--num-frames T] [--ln-eps E] [--labels FILE] [--mean R G B --std R G B]
        [--num-classes N] [--attention-type divided_space_time|space_only|joint_space_time] [--img-size S]

Everything the tensors tell is inferred (see :mod:`training.modeling.formats`); only the head count
(default 12) and, for ``space_only`` and image weights, the frame count (default 8) come from flags. SRC may
be a Hugging Face ``save_pretrained`` folder (or a weights file in one): its ``config.json`` gives heads,
eps, frames and labels (``id2label``), its ``preprocessor_config.json`` mean/std and sizes. The
written checkpoint carries the model config, a preprocessing spec whose frame count and crop size come from
the weights, mean/std from the flags (defaults: ``paddle`` -> 0 / 1, since PaddleVideo feeds RGB/255
unnormalised; ``mmaction`` -> its data preprocessor's values when stored, else 0.5 / 0.5 (127.5 on 0..255);
``hf`` -> its preprocessor_config.json; the others -> 0.45 / 0.225, the original TimeSformer's), and label
names from ``--labels`` (or a Hugging Face config's ``id2label``).
"""

from __future__ import annotations

import argparse
import sys

from training.modeling.checkpoint import save_checkpoint
from training.modeling.formats import FORMATS
from training.modeling.model import ATTENTION_TYPES
from training.modeling.readers import ConvertError
from training.modeling.weights import import_checkpoint

__all__ = ["ConvertError", "import_checkpoint", "main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.convert",
        description="Import published TimeSformer weights as a native checkpoint.",
    )
    p.add_argument(
        "src", help="source weights (.pyth, .pdparams, .pth, .pt, .safetensors, or a Hugging Face folder)"
    )
    p.add_argument("-o", "--out", required=True, help="native checkpoint to write (.pt)")
    p.add_argument("--format", default="auto", choices=("auto", *FORMATS))
    p.add_argument(
        "--num-heads",
        type=int,
        default=None,
        help="attention heads (not in weights; default 12 or config.json)",
    )
    p.add_argument(
        "--num-frames", type=int, default=None, help="frames (space_only/image weights; else resize)"
    )
    p.add_argument(
        "--ln-eps", type=float, default=None, help="LayerNorm epsilon (default 1e-6 or config.json)"
    )
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
        ckpt = import_checkpoint(
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
