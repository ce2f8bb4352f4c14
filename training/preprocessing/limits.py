"""Bounds on the work one video may cause, defined once for decoding, serving and the batch scorer.

Anything beyond a bound is refused with an error that names it (a video is never silently truncated).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

MAX_VIDEO_BYTES = 256 * 1024 * 1024
"""Encoded size of one video: the serving request limit, the decoder's and the scorer's input limit."""


@dataclass(frozen=True)
class DecodeLimits:
    """Per-video bounds; the generated repository carries them in each preprocessing model's spec file.

    max_bytes: encoded size.
    max_pixels: width*height of a frame (default 4096x2160, "4K DCI"; 8K is refused).
    max_decoded_frames: frames the decoder may produce for one clip, over every pass (decode work).
    max_packets: video packets the probe may read (bounds the demux pass and the frame count).
    threads: decode threads per clip; 1 = everything on the calling thread (what a server running
        several requests at once wants); n > 1 = up to n keyframe intervals decoded at once on the seek
        path (FFmpeg frame + slice threads where a single decoder runs); 0 = one per usable core.
    """

    max_bytes: int = MAX_VIDEO_BYTES
    max_pixels: int = 4096 * 2160
    max_decoded_frames: int = 20_000
    max_packets: int = 1_000_000
    threads: int = 0

    def for_serving(self) -> DecodeLimits:
        """The same bounds with one decoder thread: a server runs several requests at once on few cores."""
        return dataclasses.replace(self, threads=1)

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecodeLimits:
        """Inverse of :meth:`to_dict`; unknown keys are a ``ValueError`` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown decode limits {unknown} (known: {sorted(names)})")
        return cls(**{k: int(v) for k, v in d.items()})


DEFAULT_LIMITS = DecodeLimits()
