"""DALI implementation of the preprocessing spec, for Triton's dali backend (GPU) and its CPU twin.

The pipeline takes three external sources, named as Triton's dali backend maps config inputs onto them:

``VIDEO``          one whole encoded file per sample, uint8 1-D (container header included);
``FRAME_INDICES``  int32 ``(T,)`` frame indices, computed upstream with the same
                   :func:`training.preprocessing.sampling.sample_indices` the reference uses;
``GEOMETRY``       int32 ``(3 + 2V,)``: display rotation, resized size and crop corners
                   (:mod:`training.preprocessing.geometry`), computed upstream from the probe with the
                   reference's own size rules (:func:`training.preprocessing.nvdec.plan_gpu_decode`).

and returns ``(V, 3, T, crop, crop)`` float32 per sample, like ``preprocess_video``:

decode the listed frames (``fn.decoders.video``) -> rotate by the display rotation (``fn.rotate``, nearest
neighbour, exact for quarter turns) -> resize to the given size with linear interpolation **without
antialias** (DALI's linear filter samples at pixel centres, i.e. ``align_corners=False``) -> crops at the
given corners (``fn.slice``) -> ``(x/255 - mean)/std`` -> ``FHWC -> CFHW`` -> stack views.

Why the sizes come from outside: Triton's dali backend builds pipelines through DALI's legacy C API, whose
executor refuses GPU->CPU transitions, so the graph must never read the (GPU) decoder output's shape on the
CPU. Every argument input here is a CPU external source; every data edge after the decoder stays on the
decoder's device.

One graph, two placements: :func:`build_pipeline` with ``device="mixed"`` (NVDEC; what the repository
serves) or ``"cpu"`` (DALI's CPU decoder: VP8, VP9 and MJPEG only) builds the same operators with the same
arguments and edges (:func:`graph_signature` checks it); the CPU twin runs on machines without a GPU and is
held to the reference in the tests, under the executor settings the dali backend uses. A ``mixed`` pipeline
serializes without a GPU (``device_id=None``); the dali backend assigns the device when it loads
``model.dali``. Training-only randomness (``random`` crops, flips, ``segment`` draws) is not part of this
pipeline: it serves evaluation specs (``three`` or ``center`` crops).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from training.preprocessing.spec import PreprocessSpec

VIDEO = "VIDEO"
FRAME_INDICES = "FRAME_INDICES"
GEOMETRY = "GEOMETRY"
DALI_DEVICES = ("cpu", "mixed")


def _check(spec: PreprocessSpec, device: str) -> None:
    if device not in DALI_DEVICES:
        raise ValueError(f"device must be one of {DALI_DEVICES}, got {device!r}")
    if spec.crops not in ("three", "center"):
        raise ValueError(f"the DALI pipeline serves evaluation crops ('three', 'center'), got {spec.crops!r}")
    if spec.short_side < spec.crop_size:
        raise ValueError(f"short_side ({spec.short_side}) must be >= crop_size ({spec.crop_size})")


def _graph(spec: PreprocessSpec, device: str):  # noqa: ANN202 - a DALI DataNode
    """The pipeline body (called inside a ``pipeline_def``); ``device`` places only the decoder."""
    from nvidia.dali import fn, types

    video = fn.external_source(name=VIDEO, dtype=types.UINT8, ndim=1, no_copy=False)
    indices = fn.external_source(name=FRAME_INDICES, dtype=types.INT32, ndim=1)
    geometry = fn.external_source(name=GEOMETRY, dtype=types.INT32, ndim=1)  # CPU: argument inputs only
    frames = fn.decoders.video(video, device=device, frames=indices, pad_mode="edge")  # (T, H, W, 3) uint8
    # Quarter turns with nearest neighbour are exact pixel moves (0 is a copy).
    upright = fn.rotate(
        frames, angle=fn.cast(geometry[0], dtype=types.FLOAT), interp_type=types.INTERP_NN, keep_size=False
    )
    size = fn.cast(fn.stack(geometry[1], geometry[2]), dtype=types.FLOAT)  # (2,) resized (h, w)
    resized = fn.resize(
        upright, size=size, interp_type=types.INTERP_LINEAR, antialias=False, dtype=types.FLOAT
    )  # (T, h, w, 3) float32, 0..255

    c = spec.crop_size
    mean = types.Constant(np.asarray(spec.mean, np.float32) * 255.0)
    inv_std = types.Constant(1.0 / (np.asarray(spec.std, np.float32) * 255.0))
    views = []
    for v in range(spec.num_views):
        start = fn.stack(geometry[3 + 2 * v], geometry[4 + 2 * v])  # (y, x)
        crop = fn.slice(resized, start=start, shape=[c, c], axis_names="HW")  # (T, c, c, 3)
        norm = (crop - mean) * inv_std
        views.append(fn.transpose(norm, perm=[3, 0, 1, 2]))  # (3, T, c, c)
    return fn.stack(*views)  # (V, 3, T, c, c)


def build_pipeline(
    spec: PreprocessSpec,
    *,
    device: str = "cpu",
    batch_size: int = 1,
    num_threads: int = 2,
    device_id: int | None = None,
):  # noqa: ANN201 - nvidia.dali.Pipeline
    """A DALI pipeline for ``spec``, with the executor Triton's dali backend runs it under.

    The backend creates every pipeline through DALI's legacy C API (``daliCreatePipeline`` in
    dali_backend's ``src/dali_executor/dali_pipeline.h``): legacy executor, pipelined and asynchronous,
    prefetch queue depth 1, batch size = the model config's ``max_batch_size``. The same settings here mean a
    graph the backend would refuse is refused when it is built here too (``exec_dynamic=False``).

    ``device="cpu"`` runs here (VP8/VP9/MJPEG); ``"mixed"`` needs a GPU to run (``device_id=0``) but
    builds and serializes without one (``device_id=None``). Feed it with :func:`run_pipeline`.
    """
    _check(spec, device)
    from nvidia.dali import pipeline_def

    @pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        prefetch_queue_depth=1,
        exec_dynamic=False,
        exec_pipelined=True,
        exec_async=True,
    )
    def preprocess():  # noqa: ANN202
        return _graph(spec, device)

    return preprocess()


def run_pipeline(
    pipe,  # noqa: ANN001 - nvidia.dali.Pipeline
    videos: list[bytes | np.ndarray],
    indices: list[np.ndarray],
    geometry: list[np.ndarray],
) -> list[np.ndarray]:
    """Run one (possibly ragged) batch: encoded videos, their frame indices and ``GEOMETRY`` tensors ->
    ``(V, 3, T, c, c)`` float32 per video."""
    if not len(videos) == len(indices) == len(geometry):
        raise ValueError(f"{len(videos)} videos, {len(indices)} index lists, {len(geometry)} geometries")
    encoded = [
        np.frombuffer(v, np.uint8) if isinstance(v, (bytes, bytearray)) else np.asarray(v, np.uint8)
        for v in videos
    ]
    pipe.feed_input(VIDEO, encoded)
    pipe.feed_input(FRAME_INDICES, [np.asarray(i, np.int32) for i in indices])
    pipe.feed_input(GEOMETRY, [np.asarray(g, np.int32) for g in geometry])
    (out,) = pipe.run()
    if hasattr(out, "as_cpu"):
        out = out.as_cpu()
    return [np.array(out.at(i)) for i in range(len(videos))]


def _op_specs(pipe) -> list[str]:  # noqa: ANN001 - nvidia.dali.Pipeline
    """Each operator's ``OpSpec`` as DALI prints it (schema, input/output tensors, arguments), graph order."""
    pipe._build_graph()  # noqa: SLF001 - DALI builds its op graph lazily; there is no public accessor
    return [str(op.spec) for op in pipe._ops]  # noqa: SLF001


_PLACEMENT = re.compile(r"_(cpu|gpu)\b")


def graph_signature(pipe) -> list[str]:  # noqa: ANN001 - nvidia.dali.Pipeline
    """The pipeline's graph with device placement taken out: operators, arguments, data and argument-input
    edges and outputs, in graph order. Two pipelines with equal signatures run the same operators with the
    same arguments on the same edges; only where each runs may differ."""
    out = []
    for text in _op_specs(pipe):
        lines = []
        for line in text.splitlines():
            key = line.strip().split(":", 1)[0]
            if key == "device" or key.startswith("_origin_stack"):
                continue  # placement, and where in the Python source the op was written
            lines.append(_PLACEMENT.sub("", line))
        out.append("\n".join(lines))
    return out


def gpu_to_cpu_edges(pipe) -> list[str]:  # noqa: ANN001 - nvidia.dali.Pipeline
    """Operators placed on the CPU that read a GPU tensor (what DALI's legacy executor refuses), as
    ``"<Schema> <- <tensor>"``; empty for a pipeline the dali backend can load."""
    bad = []
    for text in _op_specs(pipe):
        schema = text.splitlines()[0].removeprefix("OpSpec for ").rstrip(":")
        section = None
        device = None
        inputs: list[str] = []
        for line in text.splitlines()[1:]:
            stripped = line.strip()
            if stripped in ("Inputs:", "Outputs:", "Arguments:"):
                section = stripped
            elif section == "Inputs:" and stripped:
                inputs.append(stripped)
            elif section == "Arguments:" and stripped.startswith("device:"):
                device = stripped.split(":", 1)[1].strip()
        if device == "cpu":
            bad += [f"{schema} <- {name}" for name in inputs if name.endswith("_gpu")]
    return bad


def serialize_pipeline(
    spec: PreprocessSpec,
    path: str | Path,
    *,
    device: str = "mixed",
    max_batch_size: int = 8,
    num_threads: int = 2,
) -> Path:
    """Write a Triton dali-backend ``model.dali`` for ``spec``; works without a GPU (``device_id=None``)."""
    pipe = build_pipeline(spec, device=device, batch_size=max_batch_size, num_threads=num_threads)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pipe.serialize(filename=str(path))
    if not path.is_file() or path.stat().st_size == 0:
        raise RuntimeError(f"DALI did not write a serialized pipeline to {path}")
    return path
