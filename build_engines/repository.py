"""``config.pbtxt`` generation for the Triton model repository, for the ``cpu`` and the ``gpu`` target.

Configs are built as ``ModelConfig`` protobuf messages (the schema Triton itself parses) and written with
``text_format``, so a field name or type mistake fails here, not at server start. Everything shape-related
comes from the checkpoint's :class:`~training.preprocessing.spec.PreprocessSpec` and class count.

Layout (``V`` views, ``T`` frames, ``S`` crop size, ``K`` classes, ``N`` max batch size = videos)::

    video_classifier/   ensemble   VIDEO uint8 [-1] -> PROBS fp32 [K] (label_filename labels.txt); 1/ empty
    frame_indices/      python     VIDEO -> FRAME_INDICES int32 [T], GEOMETRY int32 [3+2V]  (gpu only)
    preprocess/         python (cpu: PyAV reference) | dali (gpu: mixed pipeline, NVDEC)
                                   VIDEO (+ FRAME_INDICES, GEOMETRY) -> VIEWS fp32 [V, 3, T, S, S]

Self-contained: every python model's version folder carries a copy of the torch-free code it runs
(``training/preprocessing``, ``triton_models/{contract,runtime}.py``) next to its ``model.py``, which puts
that folder first on ``sys.path``. The repository is the deployable unit: copied to a volume or an object
store, it needs only the server's own packages (NumPy, PyAV, ONNX Runtime; DALI and TensorRT on the gpu
target), never this checkout and never torch.
    classifier/         python + ONNX Runtime (cpu) | tensorrt_plan (gpu)
                                   VIEWS [V, 3, T, S, S] -> PROBS [K]  (softmax per view, mean over views)
    video_timeline/     python, decoupled (both targets): VIDEO [-1] (+ optional WINDOW_SECONDS [1],
                                   STRIDE_SECONDS [1]) -> per window WINDOW fp32 [2], PROBS fp32 [K];
                                   the windows go to classifier/ through BLS

Batching: every model has ``max_batch_size N`` and a dynamic batcher; one batch item is one video. The
encoded ``VIDEO`` differs in length per request, so it is marked ``allow_ragged_batch`` (the python
backend receives the requests one by one anyway; DALI takes ragged batches natively). The classifier's
batch item is one video's (V, 3, T, S, S) views: the serving graph folds them to B*V model inputs and
back, so TensorRT and ONNX Runtime see one dense (B, V, 3, T, S, S) tensor per batch.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from training.preprocessing.dali import DALI_DEVICES
from training.preprocessing.geometry import geometry_length
from training.preprocessing.limits import DecodeLimits
from training.preprocessing.spec import PreprocessSpec
from triton_models import contract
from triton_models.runtime import write_spec_file

ROOT = Path(__file__).resolve().parents[1]
PYTHON_MODEL_SOURCES = ROOT / "triton_models" / "python_models"
# What a python model needs from this project, copied into its version folder (torch-free by design).
BUNDLED_FILES = (
    "training/__init__.py",
    "training/preprocessing/*.py",
    "triton_models/__init__.py",
    "triton_models/contract.py",
    "triton_models/runtime.py",
    "triton_models/timeline.py",
)
DEFAULT_DALI_INSTANCES = 4


@dataclass(frozen=True)
class RepositoryOptions:
    """Serving knobs; the defaults suit the 2-core CPU host (cpu) and one GPU (gpu)."""

    target: str = "cpu"
    max_batch_size: int = 4
    precision: str = "fp32"
    instances: int = 1  # classifier instances
    preprocess_instances: int = 2  # decoding runs while the classifier computes
    # A request alone waits at most 1 ms for company: under load the queue fills while an instance is
    # busy, so batches form anyway, and at concurrency 1 the wait is pure latency.
    max_queue_delay_us: int = 1000
    preferred_batch_sizes: tuple[int, ...] = ()
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    # video_timeline: default window/stride in seconds (None: the spec's clip span, stride = window) and
    # how many long videos it decodes at once.
    timeline_window_s: float | None = None
    timeline_stride_s: float | None = None
    timeline_instances: int = 2
    # gpu target: GPU ids the GPU models are placed on (empty: every GPU the server sees) and DALI instances
    # per GPU. Each instance decodes its own batch, so several keep more of the GPU's NVDEC engines busy
    # (H100/H200 have 7); each holds its own buffers (see docs/serving_gpu.md).
    gpus: tuple[int, ...] = ()
    dali_instances: int = DEFAULT_DALI_INSTANCES
    # DALI batch (None = max_batch_size). A sample DALI cannot decode fails its DALI batch; the dali
    # backend this project builds then runs that batch's requests one by one, so only the bad one fails
    # (docs/serving_gpu.md); 1 runs every video alone from the start.
    dali_max_batch_size: int | None = None
    # gpu target: where the DALI decoder runs. "mixed" (NVDEC; what production serves) or "cpu": the same
    # repository with only its placement changed -- DALI's CPU decoder (VP8, VP9, MJPEG), KIND_CPU
    # instances and the cpu target's classifier -- so that Triton's real dali backend serves the shipped
    # design on a host without a GPU (tests, CI, `make dali-backend`).
    dali_device: str = "mixed"

    def __post_init__(self) -> None:
        if self.target not in contract.TARGETS:
            raise ValueError(f"target must be one of {contract.TARGETS}, got {self.target!r}")
        if self.precision not in ("fp32", "fp16", "int8"):
            raise ValueError(f"precision must be fp32, fp16 or int8, got {self.precision!r}")
        if self.target == "cpu" and self.precision == "fp16":
            raise ValueError("precision fp16 needs the gpu target (this CPU has no fast fp16 path)")
        if self.target == "gpu" and self.precision == "int8":
            raise ValueError("precision int8 is a cpu-target build (the gpu plan runs fp16 or fp32)")
        counts = (
            "max_batch_size",
            "instances",
            "preprocess_instances",
            "timeline_instances",
            "dali_instances",
        )
        for name in counts:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        for name in ("timeline_window_s", "timeline_stride_s"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.dali_device not in DALI_DEVICES:
            raise ValueError(f"dali_device must be one of {DALI_DEVICES}, got {self.dali_device!r}")
        if self.target != "gpu" and self.dali_device != "mixed":
            raise ValueError("dali_device places the gpu target's DALI model; the cpu target has none")
        if self.target == "gpu" and self.dali_device == "cpu" and self.precision != "fp32":
            raise ValueError(
                "the cpu placement serves the fp32 ONNX graph (no TensorRT plan): use precision fp32"
            )
        if any(not isinstance(g, int) or g < 0 for g in self.gpus) or len(set(self.gpus)) != len(self.gpus):
            raise ValueError(f"gpus must be distinct GPU ids >= 0, got {list(self.gpus)}")
        dmb = self.dali_max_batch_size
        if dmb is not None and not (isinstance(dmb, int) and 1 <= dmb <= self.max_batch_size):
            raise ValueError(
                f"dali_max_batch_size must be in 1..max_batch_size={self.max_batch_size}, got {dmb}"
            )
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred batch sizes {bad} outside 1..max_batch_size={self.max_batch_size}")


def _tensor(name: str, dtype: int, dims: Sequence[int], *, ragged: bool = False) -> mc.ModelInput:
    t = mc.ModelInput(name=name, data_type=dtype, dims=list(dims))
    if ragged:
        t.allow_ragged_batch = True
    return t


def _output(name: str, dtype: int, dims: Sequence[int], label_filename: str = "") -> mc.ModelOutput:
    return mc.ModelOutput(name=name, data_type=dtype, dims=list(dims), label_filename=label_filename)


def _batching(cfg: mc.ModelConfig, opts: RepositoryOptions, *, dynamic: bool = True) -> None:
    """Batch dimension for every model; a dynamic batcher only where a batch is computed at once.

    The python-backend decoding steps serve a batch's requests one after another, so a batcher there only
    queues videos behind each other while other instances sit idle (docs/benchmarks.md has the figures);
    their parallelism comes from instances instead.
    """
    cfg.max_batch_size = opts.max_batch_size
    if not dynamic:
        return
    cfg.dynamic_batching.max_queue_delay_microseconds = opts.max_queue_delay_us
    cfg.dynamic_batching.preferred_batch_size.extend(opts.preferred_batch_sizes)


def _instances(cfg: mc.ModelConfig, count: int, gpu: bool, gpus: Sequence[int] = ()) -> None:
    """``count`` instances (per listed GPU for KIND_GPU; no list = on every GPU the server sees)."""
    kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    group = mc.ModelInstanceGroup(kind=kind, count=count)
    if gpu:
        group.gpus.extend(gpus)
    cfg.instance_group.append(group)


def dali_batch_size(opts: RepositoryOptions) -> int:
    """The DALI model's ``max_batch_size`` (also the serialized pipeline's batch size)."""
    return opts.dali_max_batch_size or opts.max_batch_size


def views_dims(spec: PreprocessSpec) -> list[int]:
    """[V, 3, T, S, S]: one video's views, the batch item of preprocess output and classifier input."""
    return list(spec.output_shape)


def ensemble_config(spec: PreprocessSpec, num_classes: int, opts: RepositoryOptions) -> mc.ModelConfig:
    """``video_classifier``: the only model users call."""
    # Triton refuses an ensemble whose max_batch_size exceeds a composing model's: with an unbatched DALI
    # model the ensemble takes one video per request (the classifier still batches across requests).
    batch = dali_batch_size(opts) if opts.target == "gpu" else opts.max_batch_size
    cfg = mc.ModelConfig(name=contract.ENSEMBLE, platform="ensemble", max_batch_size=batch)
    cfg.input.append(_tensor(contract.VIDEO, mc.TYPE_UINT8, [-1]))
    cfg.output.append(_output(contract.PROBS, mc.TYPE_FP32, [num_classes], contract.LABELS_FILE))
    steps = cfg.ensemble_scheduling.step
    if opts.target == "gpu":
        s = steps.add(model_name=contract.FRAME_SAMPLER, model_version=-1)
        s.input_map[contract.VIDEO] = contract.VIDEO
        s.output_map[contract.FRAME_INDICES] = contract.ENSEMBLE_FRAME_INDICES
        s.output_map[contract.GEOMETRY] = contract.ENSEMBLE_GEOMETRY
    s = steps.add(model_name=contract.PREPROCESS, model_version=-1)
    s.input_map[contract.VIDEO] = contract.VIDEO
    if opts.target == "gpu":
        s.input_map[contract.FRAME_INDICES] = contract.ENSEMBLE_FRAME_INDICES
        s.input_map[contract.GEOMETRY] = contract.ENSEMBLE_GEOMETRY
    s.output_map[contract.VIEWS] = contract.ENSEMBLE_VIEWS
    s = steps.add(model_name=contract.CLASSIFIER, model_version=-1)
    s.input_map[contract.VIEWS] = contract.ENSEMBLE_VIEWS
    s.output_map[contract.PROBS] = contract.PROBS
    return cfg


def preprocess_python_config(spec: PreprocessSpec, opts: RepositoryOptions) -> mc.ModelConfig:
    """cpu target: the reference PyAV preprocessing in the python backend."""
    cfg = mc.ModelConfig(name=contract.PREPROCESS, backend="python")
    _batching(cfg, opts, dynamic=False)
    cfg.input.append(_tensor(contract.VIDEO, mc.TYPE_UINT8, [-1], ragged=True))
    cfg.output.append(_output(contract.VIEWS, mc.TYPE_FP32, views_dims(spec)))
    _instances(cfg, opts.preprocess_instances, gpu=False)
    return cfg


def frame_indices_config(spec: PreprocessSpec, opts: RepositoryOptions) -> mc.ModelConfig:
    """gpu target: probe + sample in the python backend (CPU), feeding DALI the frame numbers."""
    cfg = mc.ModelConfig(name=contract.FRAME_SAMPLER, backend="python")
    _batching(cfg, opts, dynamic=False)
    cfg.input.append(_tensor(contract.VIDEO, mc.TYPE_UINT8, [-1], ragged=True))
    cfg.output.append(_output(contract.FRAME_INDICES, mc.TYPE_INT32, [spec.num_frames]))
    cfg.output.append(_output(contract.GEOMETRY, mc.TYPE_INT32, [geometry_length(spec)]))
    # What the DALI decoder of this placement can decode is screened here, per request.
    cfg.parameters[contract.DECODER_PARAMETER].string_value = opts.dali_device
    _instances(cfg, opts.preprocess_instances, gpu=False)
    return cfg


def preprocess_dali_config(spec: PreprocessSpec, opts: RepositoryOptions) -> mc.ModelConfig:
    """gpu target: the serialized DALI pipeline (NVDEC decode of the given frames; KIND_CPU instances and
    DALI's CPU decoder in the ``cpu`` placement)."""
    cfg = mc.ModelConfig(name=contract.PREPROCESS, backend="dali")
    _batching(cfg, opts)
    cfg.max_batch_size = dali_batch_size(opts)
    # Inputs are matched to the pipeline's external_source names; outputs follow the pipeline's order.
    cfg.input.append(_tensor(contract.VIDEO, mc.TYPE_UINT8, [-1], ragged=True))
    cfg.input.append(_tensor(contract.FRAME_INDICES, mc.TYPE_INT32, [spec.num_frames]))
    cfg.input.append(_tensor(contract.GEOMETRY, mc.TYPE_INT32, [geometry_length(spec)]))
    cfg.output.append(_output(contract.VIEWS, mc.TYPE_FP32, views_dims(spec)))
    # Several instances per GPU: each runs its own decode sessions, so more NVDEC engines work at once.
    _instances(cfg, opts.dali_instances, gpu=opts.dali_device == "mixed", gpus=opts.gpus)
    return cfg


def classifier_python_config(
    spec: PreprocessSpec, num_classes: int, opts: RepositoryOptions
) -> mc.ModelConfig:
    """cpu target: ONNX Runtime inside the python backend (the wheel's server has no onnxruntime backend)."""
    cfg = mc.ModelConfig(name=contract.CLASSIFIER, backend="python")
    _batching(cfg, opts)
    cfg.input.append(_tensor(contract.VIEWS, mc.TYPE_FP32, views_dims(spec)))
    cfg.output.append(_output(contract.PROBS, mc.TYPE_FP32, [num_classes]))
    _instances(cfg, opts.instances, gpu=False)
    return cfg


def classifier_tensorrt_config(
    spec: PreprocessSpec, num_classes: int, opts: RepositoryOptions
) -> mc.ModelConfig:
    """gpu target: the TensorRT plan (profile batch 1..max_batch_size) with the same tensors."""
    cfg = mc.ModelConfig(name=contract.CLASSIFIER, platform="tensorrt_plan")
    cfg.default_model_filename = contract.PLAN_FILE
    _batching(cfg, opts)
    cfg.input.append(_tensor(contract.VIEWS, mc.TYPE_FP32, views_dims(spec)))
    cfg.output.append(_output(contract.PROBS, mc.TYPE_FP32, [num_classes]))
    _instances(cfg, opts.instances, gpu=True, gpus=opts.gpus)
    return cfg


def timeline_config(spec: PreprocessSpec, num_classes: int, opts: RepositoryOptions) -> mc.ModelConfig:
    """``video_timeline`` (both targets): a decoupled python model, one response per window.

    One request is one file, as for ``video_classifier`` (``max_batch_size 1``, so clients send the same
    ``[1, nbytes]`` VIDEO); no dynamic batcher -- the batching happens one step down, where its windows
    go to the shared ``classifier`` in BLS requests of up to ``max_batch_size`` windows.
    """
    from training.preprocessing.windows import default_window_seconds

    cfg = mc.ModelConfig(name=contract.TIMELINE, backend="python", max_batch_size=1)
    cfg.model_transaction_policy.decoupled = True
    cfg.input.append(_tensor(contract.VIDEO, mc.TYPE_UINT8, [-1]))
    for name in (contract.WINDOW_SECONDS, contract.STRIDE_SECONDS):
        t = _tensor(name, mc.TYPE_FP32, [1])
        t.optional = True
        cfg.input.append(t)
    cfg.output.append(_output(contract.WINDOW, mc.TYPE_FP32, [2]))
    cfg.output.append(_output(contract.PROBS, mc.TYPE_FP32, [num_classes], contract.LABELS_FILE))
    window = opts.timeline_window_s or default_window_seconds(spec)
    params = {
        "window_seconds": repr(float(window)),
        "stride_seconds": repr(float(opts.timeline_stride_s or window)),
        "classifier": contract.CLASSIFIER,
        "classifier_max_batch_size": str(opts.max_batch_size),
    }
    for key, value in params.items():
        cfg.parameters[key].string_value = value
    _instances(cfg, opts.timeline_instances, gpu=False)
    return cfg


def write_config(cfg: mc.ModelConfig, repository: str | Path) -> Path:
    """Write ``<repository>/<name>/config.pbtxt`` (and the ``1/`` version folder)."""
    model_dir = Path(repository) / cfg.name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    path = model_dir / "config.pbtxt"
    path.write_text(text_format.MessageToString(cfg))
    return path


def parse_config(path: str | Path) -> mc.ModelConfig:
    """Read a ``config.pbtxt`` back (what Triton does); raises ``ValueError`` naming the file."""
    try:
        return text_format.Parse(Path(path).read_text(), mc.ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise ValueError(f"{path}: not a valid model config ({exc})") from exc


def bundle_sources(version_dir: Path) -> list[Path]:
    """Copy the torch-free project code a python model runs (:data:`BUNDLED_FILES`) into ``version_dir``."""
    written = []
    for pattern in BUNDLED_FILES:
        for src in sorted(ROOT.glob(pattern)):
            dest = version_dir / src.relative_to(ROOT)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            written.append(dest)
    return written


def _copy_python_model(name: str, source: str, repository: Path) -> Path:
    dest = repository / name / "1" / "model.py"
    shutil.copyfile(PYTHON_MODEL_SOURCES / source, dest)
    bundle_sources(dest.parent)
    return dest


def generate_configs(
    repository: str | Path,
    spec: PreprocessSpec,
    labels: Sequence[str],
    opts: RepositoryOptions,
) -> list[Path]:
    """Write every config, the labels, the spec files and the python models' sources for ``opts.target``.

    Artefacts (ONNX, plan, DALI pipeline) are the caller's job (:mod:`build_engines.build`).
    """
    repository = Path(repository)
    num_classes = len(labels)
    if num_classes < 1:
        raise ValueError("a classifier needs at least one label")
    if any("\n" in x or "\r" in x for x in labels):
        raise ValueError("label names must not contain line breaks (labels.txt is one label per line)")
    written: list[Path] = []
    ens = write_config(ensemble_config(spec, num_classes, opts), repository)
    labels_file = ens.parent / contract.LABELS_FILE
    labels_file.write_text("".join(f"{x}\n" for x in labels))
    written += [ens, labels_file]
    if opts.target == "cpu":
        pre = write_config(preprocess_python_config(spec, opts), repository)
        written += [pre, write_spec_file(pre.parent, spec, opts.limits)]
        written.append(_copy_python_model(contract.PREPROCESS, "preprocess.py", repository))
        cls = write_config(classifier_python_config(spec, num_classes, opts), repository)
        written += [cls, _copy_python_model(contract.CLASSIFIER, "classifier.py", repository)]
    else:
        fi = write_config(frame_indices_config(spec, opts), repository)
        written += [fi, write_spec_file(fi.parent, spec, opts.limits)]
        written.append(_copy_python_model(contract.FRAME_SAMPLER, "frame_indices.py", repository))
        pre = write_config(preprocess_dali_config(spec, opts), repository)
        written += [pre, write_spec_file(pre.parent, spec, opts.limits)]
        if opts.dali_device == "mixed":
            written.append(write_config(classifier_tensorrt_config(spec, num_classes, opts), repository))
        else:  # the cpu placement: no TensorRT on this host, the cpu target's classifier instead
            cls = write_config(classifier_python_config(spec, num_classes, opts), repository)
            written += [cls, _copy_python_model(contract.CLASSIFIER, "classifier.py", repository)]
    # Both targets: PyAV decoding on the CPU (docs/timeline.md says why not DALI), BLS to the classifier.
    tl = write_config(timeline_config(spec, num_classes, opts), repository)
    (tl.parent / contract.LABELS_FILE).write_text("".join(f"{x}\n" for x in labels))
    written += [tl, tl.parent / contract.LABELS_FILE, write_spec_file(tl.parent, spec, opts.limits)]
    written.append(_copy_python_model(contract.TIMELINE, "timeline.py", repository))
    return written
