"""The serving core: one preprocessing spec and its implementations, torch-free.

``spec`` (what to do: frame count, sampling, crops, mean/std) -> ``sampling`` (which frames) -> ``decode``
(PyAV/FFmpeg: probe, decode only the needed frames, rotate) -> ``transforms`` (resize, crop, normalise in
NumPy) ; ``dali`` is the GPU (and CPU) DALI twin of decode + transforms; ``limits`` bounds the work per
video. Nothing here imports torch or the training loop, so the serving side (the generated python models,
the DALI build) needs only NumPy, PyAV and, for the GPU, DALI.
"""

from training.preprocessing.decode import (
    DecodedClip,
    PreprocessedClip,
    VideoDecodeError,
    VideoInfo,
    VideoSource,
    decode_all_frames,
    decode_clip,
    preprocess_video,
    probe_video,
    sample_video_indices,
)
from training.preprocessing.limits import DEFAULT_LIMITS, MAX_VIDEO_BYTES, DecodeLimits
from training.preprocessing.sampling import sample_indices
from training.preprocessing.spec import (
    CROP_MODES,
    PADDLE_MEAN,
    PADDLE_STD,
    SAMPLING_MODES,
    TIMESFORMER_MEAN,
    TIMESFORMER_STD,
    PreprocessSpec,
)
from training.preprocessing.transforms import crop_offsets, resize_frames, scaled_size, views_from_frames

__all__ = [
    "CROP_MODES",
    "DEFAULT_LIMITS",
    "MAX_VIDEO_BYTES",
    "PADDLE_MEAN",
    "PADDLE_STD",
    "SAMPLING_MODES",
    "TIMESFORMER_MEAN",
    "TIMESFORMER_STD",
    "DecodeLimits",
    "DecodedClip",
    "PreprocessSpec",
    "PreprocessedClip",
    "VideoDecodeError",
    "VideoInfo",
    "VideoSource",
    "crop_offsets",
    "decode_all_frames",
    "decode_clip",
    "preprocess_video",
    "probe_video",
    "resize_frames",
    "sample_indices",
    "sample_video_indices",
    "scaled_size",
    "views_from_frames",
]
