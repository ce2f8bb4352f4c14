"""What the GPU decoder (NVDEC, through DALI's ``mixed`` video decoder) can decode, checked from a probe.

DALI fails a whole batch when one sample fails to decode (and Triton's dali backend then sends that one
error to every request of the batch), so anything NVDEC cannot decode is refused before it gets there, in
the python ``frame_indices`` step, with an error naming the reason -- each request gets its own answer.

Limits are those of NVIDIA's NVDEC decoder support matrix (Video Codec SDK "NVDEC Application Note",
Turing and later; the 26.x Triton containers need compute capability >= 7.5) for the profiles this
pipeline accepts, and DALI's video decoder outputs 8-bit RGB from 4:2:0 streams: higher bit depths and other
chroma formats are refused rather than decoded differently from the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.preprocessing.decode import probe_display_rotation, sample_video_indices
from training.preprocessing.geometry import serving_geometry
from training.preprocessing.limits import DecodeLimits
from training.preprocessing.probe import VideoDecodeError, VideoSource, describe_source
from training.preprocessing.spec import PreprocessSpec

# codec -> (min width, min height, max width, max height), NVDEC on Turing..Hopper.
NVDEC_SIZES: dict[str, tuple[int, int, int, int]] = {
    "h264": (48, 16, 4096, 4096),
    "hevc": (144, 144, 8192, 8192),
    "vp8": (48, 16, 4096, 4096),
    "vp9": (128, 128, 8192, 8192),
    "av1": (128, 128, 8192, 8192),
    "mpeg4": (48, 16, 2032, 2032),
    "mjpeg": (64, 64, 16384, 16384),
}
# 8-bit 4:2:0 only (full-range "j" variants are the same layout).
NVDEC_PIXEL_FORMATS = ("yuv420p", "yuvj420p", "nv12")
# Profiles NVDEC decodes, where the codec has ones it does not (H.264 High 10/4:2:2/4:4:4, MPEG-4 beyond
# Advanced Simple, HEVC range extensions).
NVDEC_PROFILES: dict[str, tuple[str, ...]] = {
    "h264": ("Baseline", "Constrained Baseline", "Main", "Extended", "High"),
    "hevc": ("Main", "Main Still Picture"),
    "mpeg4": ("Simple Profile", "Advanced Simple Profile"),
}


# DALI's CPU video decoder (``fn.decoders.video`` on the CPU backend, DALI 2.4) takes these codecs only;
# the others fail inside DALI with "not supported by the CPU variant of this operator".
DALI_CPU_CODECS = ("mjpeg", "vp8", "vp9")


@dataclass(frozen=True)
class StreamFacts:
    """What the demux-only probe knows about a video stream (codec name as FFmpeg spells it)."""

    codec: str
    width: int
    height: int
    pix_fmt: str | None
    profile: str | None = None


def nvdec_refusal(facts: StreamFacts) -> str | None:
    """Why NVDEC (as used by this pipeline) cannot decode the stream, or None when it can."""
    if facts.codec not in NVDEC_SIZES:
        supported = ", ".join(sorted(NVDEC_SIZES))
        return f"codec {facts.codec} is not decoded by the GPU decoder (supported: {supported})"
    profiles = NVDEC_PROFILES.get(facts.codec)
    if profiles is not None and facts.profile and facts.profile not in profiles:
        return f"{facts.codec} profile {facts.profile!r} is not decoded by the GPU decoder"
    if facts.pix_fmt not in NVDEC_PIXEL_FORMATS:
        return (
            f"pixel format {facts.pix_fmt} (bit depth / chroma format) is not decoded by the GPU pipeline, "
            "which takes 8-bit 4:2:0 only"
        )
    min_w, min_h, max_w, max_h = NVDEC_SIZES[facts.codec]
    if not (min_w <= facts.width <= max_w and min_h <= facts.height <= max_h):
        return (
            f"frame size {facts.width}x{facts.height} is outside what the GPU decoder takes for "
            f"{facts.codec} ({min_w}x{min_h} to {max_w}x{max_h})"
        )
    return None


def decoder_refusal(facts: StreamFacts, device: str = "mixed") -> str | None:
    """Why the DALI model's decoder on ``device`` cannot decode the stream, or None when it can.

    The NVDEC screen holds for both placements (the ``cpu`` one serves the gpu target's design as is);
    DALI's CPU decoder takes fewer codecs on top of it."""
    reason = nvdec_refusal(facts)
    if reason is None and device == "cpu" and facts.codec not in DALI_CPU_CODECS:
        reason = (
            f"codec {facts.codec} is not decoded by DALI's CPU decoder (the cpu placement of the DALI model "
            f"takes {', '.join(DALI_CPU_CODECS)})"
        )
    return reason


def plan_gpu_decode(
    source: VideoSource, spec: PreprocessSpec, limits: DecodeLimits | None = None, device: str = "mixed"
) -> tuple[np.ndarray, np.ndarray]:
    """Everything the DALI model needs for one video, from the CPU: ``(FRAME_INDICES, GEOMETRY)``.

    Demux-only probe (plus one decoded frame for the display rotation), the sampling every implementation
    shares, the NVDEC screen above, and the resize/crop geometry. Files on which the GPU decoder would
    count frames differently from the reference are refused rather than answered differently:
    a container frame count that disagrees with the packets demuxed, packets before time 0 (edit-list
    pre-roll, which the reference counts and a decoder honouring the edit list drops), unusable
    timestamps, truncated data. ``device`` is the DALI decoder's placement (:func:`decoder_refusal`).
    Raises :class:`~.decode.VideoDecodeError` (a ``ValueError``) naming it.
    """
    indices, info = sample_video_indices(source, spec, limits=limits)
    name = describe_source(source)
    facts = StreamFacts(info.codec, info.width, info.height, info.pix_fmt, info.profile)
    reason = decoder_refusal(facts, device)
    if reason is None and info.truncated:
        reason = "the container data is truncated or corrupt"
    if reason is None and info.claimed_frames and info.claimed_frames != info.total_frames:
        reason = (
            f"the container claims {info.claimed_frames} frames but holds {info.total_frames} packets; "
            "the GPU decoder would index frames differently"
        )
    if reason is None and info.negative_pts:
        reason = f"{info.negative_pts} packets are timed before the start (edit-list pre-roll)"
    if reason is None and info.frame_pts is None:
        reason = "missing or duplicated timestamps"
    if reason is not None:
        raise VideoDecodeError(f"{name}: not servable on the GPU path: {reason}")
    rotation = probe_display_rotation(source, limits=limits)
    try:
        geometry = serving_geometry(info.height, info.width, rotation, spec)
    except ValueError as exc:
        raise VideoDecodeError(f"{name}: {exc}") from exc
    return indices, geometry
