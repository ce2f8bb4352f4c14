"""Preprocess one video file into the model's input tensor and save it as ``.npy``.

    python -m training.preprocess VIDEO -o out.npy [--num-frames 8]
        [--sampling uniform|paddle|paddle_train|segment] [--crops three|center] [--short-side 224]
        [--crop-size 224] [--mean R G B] [--std R G B]
        [--backend reference|dali] [--seed S]

Writes the float32 ``(V, 3, T, H, W)`` array, prints the frame indices and a one-line summary. Bad input
exits with status 2 and one line naming the problem.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from training.preprocessing.spec import CROP_MODES, PADDLE_MEAN, PADDLE_STD, SAMPLING_MODES, PreprocessSpec


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.preprocess", description=__doc__.split("\n\n")[0])
    p.add_argument("video", help="encoded video file")
    p.add_argument("-o", "--output", required=True, help="output .npy file")
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--sampling", choices=SAMPLING_MODES, default="uniform")
    p.add_argument("--crops", choices=[c for c in CROP_MODES if c != "random"], default="three")
    p.add_argument("--short-side", type=int, default=224)
    p.add_argument("--crop-size", type=int, default=224)
    p.add_argument("--mean", type=float, nargs=3, default=list(PADDLE_MEAN), metavar=("R", "G", "B"))
    p.add_argument("--std", type=float, nargs=3, default=list(PADDLE_STD), metavar=("R", "G", "B"))
    p.add_argument("--backend", choices=("reference", "dali"), default="reference")
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the random sampling modes (segment, paddle_train); default: their fixed "
        "fallback (segment centres, paddle_train's centre window)",
    )
    return p


def _run_dali(
    path: Path, spec: PreprocessSpec, rng: np.random.Generator | None
) -> tuple[np.ndarray, list[int]]:
    from training.preprocessing.dali import build_pipeline, run_pipeline
    from training.preprocessing.decode import VideoDecodeError, probe_display_rotation, sample_video_indices
    from training.preprocessing.geometry import serving_geometry

    indices, info = sample_video_indices(path, spec, rng=rng)  # the reference's draws for the same seed
    if info.codec not in ("vp8", "vp9", "mjpeg"):
        raise VideoDecodeError(
            f"{path}: DALI's CPU decoder reads VP8, VP9 and MJPEG only, this is {info.codec} "
            "(use --backend reference)"
        )
    try:
        geometry = serving_geometry(info.height, info.width, probe_display_rotation(path), spec)
    except ValueError as exc:
        raise VideoDecodeError(f"{path}: {exc}") from exc
    try:
        (out,) = run_pipeline(build_pipeline(spec, device="cpu"), [path.read_bytes()], [indices], [geometry])
    except RuntimeError as exc:
        raise VideoDecodeError(f"{path}: DALI failed: {str(exc).splitlines()[0]}") from exc
    return out, indices.tolist()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        spec = PreprocessSpec(
            num_frames=args.num_frames,
            sampling=args.sampling,
            short_side=args.short_side,
            crop_size=args.crop_size,
            crops=args.crops,
            mean=tuple(args.mean),
            std=tuple(args.std),
        )
        if spec.short_side < spec.crop_size:
            raise ValueError(f"--short-side ({spec.short_side}) must be >= --crop-size ({spec.crop_size})")
        path = Path(args.video)
        rng = np.random.default_rng(args.seed) if args.seed is not None else None
        if args.backend == "dali":
            views, indices = _run_dali(path, spec, rng)
        else:
            from training.preprocessing.decode import preprocess_video

            clip = preprocess_video(path, spec, rng=rng)
            views, indices = clip.views, clip.indices
    except ValueError as exc:  # VideoDecodeError included
        print(f"preprocess: {exc}", file=sys.stderr)
        return 2
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, views)
    print("indices:", " ".join(str(i) for i in indices))
    print(
        f"preprocess: {path.name} -> {out} {tuple(views.shape)} float32 ({args.backend}, {spec.sampling}, "
        f"{spec.crops}) in {(time.perf_counter() - t0) * 1000:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
