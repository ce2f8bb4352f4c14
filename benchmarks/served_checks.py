"""The gpu target's ensemble as served: the checks that show it works, for either DALI placement.

The same functions run in two places: the suite (``tests/e2e/test_dali_backend.py``) runs them against
Triton's real dali backend on a CPU host, on the repository built with ``--dali-device cpu``; and
``python -m benchmarks.gpu_check`` runs them on a GPU host against the production repository (``mixed``
placement, NVDEC, TensorRT). What they check:

- **parity** (:func:`parity`): a ragged set of real videos (:data:`CHECK_SET`: VP9, VP8 and MJPEG of
  different sizes, lengths and frame rates, one rotated) classified through the ensemble, sent
  concurrently so that the DALI model receives batches, against the cpu target's ``PROBS`` on the same
  files: top-1 equal, the largest probability difference reported;
- **batches form** (:func:`batch_sizes`): the DALI model's own statistics show executions of more than one
  request;
- **a bad request in a batch** (:func:`isolation`): a video whose frame data is damaged after an intact
  header (:func:`~benchmarks.videos.damage_frame_data`) passes the ``frame_indices`` screen and fails inside
  DALI; sent together with good ones, in every position of the batch, each good request must still be
  answered (with its answer when sent alone) and only the bad one refused, with DALI's error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.videos import damage_frame_data, encode_video, synthetic_frames
from clients.core import ClientError, infer_probs, make_client, model_statistics
from triton_models import contract


@dataclass(frozen=True)
class CheckVideo:
    """One video of the check set."""

    codec: str
    width: int
    height: int
    frames: int
    fps: float
    rotation: int = 0

    @property
    def name(self) -> str:
        turn = f"_rot{self.rotation}" if self.rotation else ""
        return f"{self.codec}_{self.width}x{self.height}_{self.frames}f_{self.fps:g}fps{turn}"


# Ragged on purpose: sizes, lengths, rates and codecs differ, so one DALI batch holds different shapes.
# Every size is inside NVDEC's range for its codec (the frame_indices screen holds on both placements).
CHECK_SET = (
    CheckVideo("vp9", 176, 144, 30, 25),
    CheckVideo("vp9", 320, 180, 75, 30),
    CheckVideo("vp9", 256, 144, 40, 24, rotation=90),
    CheckVideo("vp8", 200, 120, 20, 15),
    CheckVideo("vp8", 128, 160, 48, 30),
    CheckVideo("mjpeg", 160, 128, 36, 24),
    CheckVideo("mjpeg", 240, 180, 16, 12.5),
    CheckVideo("vp9", 352, 288, 60, 29.97),
)


# H.264 only NVDEC decodes (not DALI's CPU decoder): what a GPU host adds to the check set.
NVDEC_EXTRA = (
    CheckVideo("h264", 480, 360, 48, 25),
    CheckVideo("h264", 480, 270, 30, 30, rotation=90),
)


def make_check_videos(
    folder: str | Path, videos: Sequence[CheckVideo] = CHECK_SET, seed: int = 0
) -> list[Path]:
    """Encode the check set into ``folder`` (reused when already there)."""
    from benchmarks.videos import CONTAINERS

    folder = Path(folder)
    out = []
    for i, v in enumerate(videos):
        path = folder / f"{v.name}.{CONTAINERS[v.codec]}"
        if not path.is_file():
            frames = synthetic_frames(v.width, v.height, v.frames, seed=seed + i)
            encode_video(path, frames, v.codec, v.fps, gop=max(2, v.frames // 3), rotation=v.rotation)
        out.append(path)
    return out


def make_damaged_video(folder: str | Path, seed: int = 0) -> Path:
    """A VP9 file (NVDEC-sized) whose later keyframes are damaged: passes the screen, fails in DALI."""
    folder = Path(folder)
    good = folder / "undamaged.webm"
    if not good.is_file():
        encode_video(good, synthetic_frames(192, 144, 30, seed=seed + 99), "vp9", 25, gop=10)
    return damage_frame_data(good, folder / "damaged.webm", seed=seed)


def classify(url: str, videos: Sequence[Path], *, concurrency: int, protocol: str = "grpc") -> list[Any]:
    """Each video's ``PROBS`` (or the :class:`~clients.core.ClientError` it got), sent ``concurrency`` at a
    time, so that the server's dynamic batchers see several requests at once."""

    def one(path: Path) -> Any:
        client = make_client(url, protocol)  # one per request: HTTP clients are not thread-safe
        try:
            return infer_probs(client, np.fromfile(path, dtype=np.uint8))
        except ClientError as exc:
            return exc
        finally:
            client.close()

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        return list(pool.map(one, videos))


def parity(served: Sequence[Any], reference: Sequence[Any]) -> dict[str, Any]:
    """Compare the served ``PROBS`` with the reference's, video by video."""
    errors = [str(x) for x in [*served, *reference] if isinstance(x, BaseException)]
    if errors:
        return {"ok": False, "errors": errors}
    a, b = np.stack(served), np.stack(reference)  # (N, K)
    top1 = a.argmax(-1) == b.argmax(-1)
    return {
        "ok": bool(top1.all()),
        "videos": len(a),
        "top1_equal": int(top1.sum()),
        "max_prob_diff": float(np.abs(a - b).max()),
        "mean_prob_diff": float(np.abs(a - b).mean()),
    }


def batch_statistics(http_url: str, model: str = contract.PREPROCESS) -> dict[int, tuple[int, int]]:
    """Per batch size (requests per execution): executions and their summed compute-infer nanoseconds, from
    ``model``'s own statistics (cumulative since the server started)."""
    stats = model_statistics(http_url, model)
    return {
        int(b["batch_size"]): (int(b["compute_infer"]["count"]), int(b["compute_infer"]["ns"]))
        for b in stats.get("batch_stats", [])
    }


def batch_sizes(http_url: str, model: str = contract.PREPROCESS) -> dict[int, int]:
    """Executions per batch size (requests per execution) from ``model``'s own statistics."""
    return {size: count for size, (count, _) in batch_statistics(http_url, model).items()}


# What DALI says when a decoder fails on a sample (CPU or GPU decoder).
DALI_DECODE_ERROR = re.compile(r"Error in (CPU|GPU|MIXED) operator `nvidia\.dali\.fn\.decoders\.video`", re.I)


def isolation(url: str, good: Sequence[Path], bad: Path, *, protocol: str = "grpc") -> dict[str, Any]:
    """Send ``good`` + ``bad`` together, once with the bad one in every position; each good one must get
    the answer it gets alone, the bad one an error from DALI's decoder."""
    alone = classify(url, good, concurrency=1, protocol=protocol)
    if any(isinstance(x, BaseException) for x in alone):
        return {"ok": False, "errors": [str(x) for x in alone if isinstance(x, BaseException)]}
    rounds = []
    for position in range(len(good) + 1):
        batch = [*good[:position], bad, *good[position:]]
        answers = classify(url, batch, concurrency=len(batch), protocol=protocol)
        mine = answers.pop(position)
        good_ok = [
            not isinstance(x, BaseException) and float(np.abs(x - ref).max()) < 1e-5
            for x, ref in zip(answers, alone)
        ]
        rounds.append(
            {
                "position": position,
                "good_answered": sum(good_ok),
                "good": len(good),
                "bad_refused": isinstance(mine, BaseException),
                "bad_error": str(mine)[:300] if isinstance(mine, BaseException) else None,
                "bad_error_is_dali_decode": bool(
                    isinstance(mine, BaseException) and DALI_DECODE_ERROR.search(str(mine))
                ),
                "good_errors": [str(x)[:200] for x in answers if isinstance(x, BaseException)],
            }
        )
    ok = all(r["good_answered"] == r["good"] and r["bad_error_is_dali_decode"] for r in rounds)
    return {"ok": ok, "rounds": rounds}


# The line the dali backend built here (patch dali_backend/0003) logs when it runs a failed batch's requests
# one by one.
_FAILED_BATCH = re.compile(r"A batch of (\d+) requests failed; running each of them alone")


def failed_batches(server_log: str) -> list[int]:
    """Sizes of the DALI executions that failed and were re-run request by request, from the server log:
    the evidence that a bad request really shared its execution with good ones."""
    return [int(n) for n in _FAILED_BATCH.findall(server_log)]


__all__ = [
    "CHECK_SET",
    "DALI_DECODE_ERROR",
    "NVDEC_EXTRA",
    "CheckVideo",
    "batch_sizes",
    "batch_statistics",
    "classify",
    "failed_batches",
    "isolation",
    "make_check_videos",
    "make_damaged_video",
    "parity",
]
