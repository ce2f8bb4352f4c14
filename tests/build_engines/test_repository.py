"""The generated model repository, both targets: every config parses as Triton's ModelConfig, shapes and
labels come from the checkpoint, options propagate, bad options/checkpoints are refused clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from build_engines.build import build_repository
from build_engines.repository import RepositoryOptions, parse_config
from build_engines.tensorrt import tensorrt_unavailable_reason
from tests.utils_server import TINY_LABELS, build_tiny_repository
from tests.utils_video import encode_video, moving_square_frames
from training.modeling.checkpoint import load_checkpoint
from training.modeling.views import ViewAveragedClassifier
from training.preprocessing.spec import PreprocessSpec
from triton_models import contract
from triton_models.runtime import (
    DecodeLimits,
    RequestError,
    classify_batch,
    frame_indices_payload,
    video_payload,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    out = {}
    for target in contract.TARGETS:
        out[target] = build_tiny_repository(tmp_path_factory.mktemp(f"repo_{target}"), target=target)
    return out


def _configs(repo: Path) -> dict[str, mc.ModelConfig]:
    found = {}
    for path in sorted(repo.glob("*/config.pbtxt")):
        cfg = text_format.Parse(path.read_text(), mc.ModelConfig())  # what Triton parses
        assert cfg.name == path.parent.name
        found[cfg.name] = cfg
    return found


@pytest.mark.parametrize("target", contract.TARGETS)
def test_every_config_parses_and_matches_the_checkpoint(repos, target: str) -> None:
    repo, ckpt_path = repos[target]
    ckpt = load_checkpoint(ckpt_path)
    views = list(ckpt.preprocess.output_shape)  # [V, 3, T, S, S]
    cfgs = _configs(repo)
    expected = {contract.ENSEMBLE, contract.PREPROCESS, contract.CLASSIFIER, contract.TIMELINE}
    if target == "gpu":
        expected.add(contract.FRAME_SAMPLER)
    assert set(cfgs) == expected

    ens = cfgs[contract.ENSEMBLE]
    assert ens.platform == "ensemble"
    assert [(i.name, i.data_type, list(i.dims)) for i in ens.input] == [(contract.VIDEO, mc.TYPE_UINT8, [-1])]
    (probs,) = ens.output
    assert (probs.name, probs.data_type, list(probs.dims)) == (
        contract.PROBS,
        mc.TYPE_FP32,
        [len(TINY_LABELS)],
    )
    assert probs.label_filename == contract.LABELS_FILE
    assert (repo / contract.ENSEMBLE / contract.LABELS_FILE).read_text().splitlines() == TINY_LABELS
    assert list((repo / contract.ENSEMBLE / "1").iterdir()) == []
    steps = [s.model_name for s in ens.ensemble_scheduling.step]
    assert steps[-2:] == [contract.PREPROCESS, contract.CLASSIFIER]

    pre, cls = cfgs[contract.PREPROCESS], cfgs[contract.CLASSIFIER]
    assert list(pre.output[0].dims) == views and pre.output[0].name == contract.VIEWS
    assert list(cls.input[0].dims) == views and list(cls.output[0].dims) == [len(TINY_LABELS)]
    assert pre.input[0].allow_ragged_batch  # encoded files differ in length
    for cfg in cfgs.values():
        if cfg.name == contract.TIMELINE:
            continue  # one file per request, batched one step down (tests/triton_models/test_timeline.py)
        assert cfg.max_batch_size == 4
        if cfg.platform == "ensemble":
            continue
        # Only models that compute a batch at once batch dynamically; python decoding steps use instances.
        batches_at_once = cfg.name == contract.CLASSIFIER or cfg.backend == "dali"
        assert cfg.HasField("dynamic_batching") == batches_at_once, cfg.name
        if batches_at_once:
            assert cfg.dynamic_batching.max_queue_delay_microseconds == 100_000

    spec_files = list(repo.glob(f"*/{contract.SPEC_FILE}"))
    assert spec_files
    for f in spec_files:
        assert PreprocessSpec.from_dict(json.loads(f.read_text())["preprocess"]) == ckpt.preprocess
    serving = json.loads((repo / contract.SERVING_FILE).read_text())
    assert serving["target"] == target and serving["labels"] == TINY_LABELS

    if target == "cpu":
        assert pre.backend == "python" and cls.backend == "python"
        assert (repo / contract.CLASSIFIER / "1" / contract.ONNX_FILE).is_file()
        assert (repo / contract.PREPROCESS / "1" / "model.py").is_file()
    else:
        fi = cfgs[contract.FRAME_SAMPLER]
        assert steps[0] == contract.FRAME_SAMPLER
        assert (fi.output[0].name, fi.output[0].data_type, list(fi.output[0].dims)) == (
            contract.FRAME_INDICES,
            mc.TYPE_INT32,
            [ckpt.preprocess.num_frames],
        )
        assert pre.backend == "dali"
        assert [i.name for i in pre.input] == [contract.VIDEO, contract.FRAME_INDICES, contract.GEOMETRY]
        assert [o.name for o in fi.output] == [contract.FRAME_INDICES, contract.GEOMETRY]
        assert pre.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        assert cls.platform == "tensorrt_plan" and cls.default_model_filename == contract.PLAN_FILE
        assert (repo / contract.PREPROCESS / "1" / contract.DALI_FILE).stat().st_size > 0
        assert (repo / contract.CLASSIFIER / contract.ONNX_FILE).is_file()
        plan = repo / contract.CLASSIFIER / "1" / contract.PLAN_FILE
        assert plan.is_file() == serving["plan_built"] == (tensorrt_unavailable_reason() is None)


def test_options_propagate(tmp_path: Path) -> None:
    opts = RepositoryOptions(
        target="cpu", max_batch_size=8, instances=2, preprocess_instances=3, max_queue_delay_us=777,
        preferred_batch_sizes=(2, 8), limits=DecodeLimits(max_bytes=12345),
    )  # fmt: skip
    repo, _ = build_tiny_repository(tmp_path, options=opts)
    cls = parse_config(repo / contract.CLASSIFIER / "config.pbtxt")
    pre = parse_config(repo / contract.PREPROCESS / "config.pbtxt")
    assert cls.max_batch_size == 8 and cls.instance_group[0].count == 2
    assert pre.instance_group[0].count == 3
    assert list(cls.dynamic_batching.preferred_batch_size) == [2, 8]
    assert cls.dynamic_batching.max_queue_delay_microseconds == 777
    limits = json.loads((repo / contract.PREPROCESS / contract.SPEC_FILE).read_text())["limits"]
    assert limits["max_bytes"] == 12345


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"target": "tpu"}, "target"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"precision": "int4"}, "precision"),
        ({"target": "cpu", "precision": "fp16"}, "fp16"),
        ({"max_batch_size": 2, "preferred_batch_sizes": (4,)}, "preferred"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_us"),
    ],
)
def test_bad_options_are_refused(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        RepositoryOptions(**kwargs)


def test_serving_graph_is_softmax_mean_over_views(repos) -> None:
    repo, ckpt_path = repos["cpu"]
    ckpt = load_checkpoint(ckpt_path)
    model = ckpt.build_model(fused_attn=False)
    x = torch.randn((3, *ckpt.preprocess.output_shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x.flatten(0, 1)).reshape(3, ckpt.preprocess.num_views, -1)  # (B, V, K)
        want = logits.softmax(-1).mean(1).numpy()  # (B, K)
        assert np.allclose(
            ViewAveragedClassifier(model, ckpt.preprocess.num_views)(x).numpy(), want, atol=1e-6
        )
    sess = ort.InferenceSession(str(repo / contract.CLASSIFIER / "1" / contract.ONNX_FILE))
    got = sess.run([contract.PROBS], {contract.VIEWS: x.numpy()})[0]  # batch 3: the batch axis is dynamic
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)


def test_runtime_request_checks() -> None:
    limits = DecodeLimits(max_bytes=10)
    with pytest.raises(RequestError, match="empty"):
        video_payload(np.zeros((1, 0), np.uint8), limits)
    with pytest.raises(RequestError, match="exceeds the limit of 10 bytes"):
        video_payload(np.zeros((1, 11), np.uint8), limits)
    with pytest.raises(RequestError, match="uint8"):
        video_payload(np.zeros((1, 4), np.float32), limits)
    assert video_payload(np.arange(4, dtype=np.uint8)[None], limits) == bytes([0, 1, 2, 3])

    def double(x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[0], -1)[:, :2] * 2

    good = np.ones((1, 3, 3, 2, 4, 4), np.float32)
    out = classify_batch(double, [good, np.ones((1, 3), np.float64), good * 2])
    assert isinstance(out[1], RequestError)
    np.testing.assert_array_equal(out[0], [[2, 2]])
    np.testing.assert_array_equal(out[2], [[4, 4]])


def test_gpu_frame_indices_feed_dali_to_the_reference_result(tmp_path: Path) -> None:
    """The gpu target's first two steps (probe + sample, then the DALI pipeline) on DALI's CPU decoder
    (VP9) give the reference preprocessing's views."""
    from training.preprocessing import preprocess_video
    from training.preprocessing.dali import build_pipeline, run_pipeline

    spec = PreprocessSpec(num_frames=4, short_side=32, crop_size=32)
    path = encode_video(tmp_path / "v.webm", moving_square_frames(20, 128, 176, seed=5), "vp9")
    data = np.fromfile(path, np.uint8)
    out = frame_indices_payload(data[None], spec, DecodeLimits())
    indices, geometry = out[contract.FRAME_INDICES], out[contract.GEOMETRY]
    ref = preprocess_video(path, spec)
    assert indices.dtype == np.int32 and list(indices) == ref.indices
    pipe = build_pipeline(spec, device="cpu", batch_size=1, num_threads=1)
    (views,) = run_pipeline(pipe, [data], [indices], [geometry])
    assert views.shape == ref.views.shape == spec.output_shape
    # DALI and libswscale upsample 4:2:0 chroma differently: a few 8-bit levels on average, more on edges.
    diff = np.abs(views - ref.views) * 255
    assert diff.mean() < 3.0 and diff.max() < 24.0
    (wrong,) = run_pipeline(pipe, [data], [indices[::-1].copy()], [geometry])  # other frames differ more
    assert (np.abs(wrong - ref.views) * 255).mean() > 2 * diff.mean()


def test_build_cli_errors_are_one_line(tmp_path: Path, repos) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    cmd = [sys.executable, "-m", "build_engines.build", "--target", "cpu"]
    args = [*cmd, "--checkpoint", str(bad), "-o", str(tmp_path / "r")]
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "bad.pt" in r.stderr
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    _, ckpt = repos["cpu"]
    args = [*cmd, "--checkpoint", str(ckpt), "-o", str(other)]
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr
    assert (other / "keep.txt").is_file()


def test_rebuild_replaces_a_generated_repository(tmp_path: Path, repos) -> None:
    _, ckpt = repos["cpu"]
    repo = tmp_path / "repo"
    build_repository(ckpt, repo, RepositoryOptions(max_batch_size=2), log=lambda *_: None)
    build_repository(ckpt, repo, RepositoryOptions(max_batch_size=3), log=lambda *_: None)
    assert parse_config(repo / contract.CLASSIFIER / "config.pbtxt").max_batch_size == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".repo")]  # no temporary leftovers


def test_tensorrt_step_says_why_it_cannot_run(tmp_path: Path) -> None:
    reason = tensorrt_unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT and a GPU are present: the plan is built by the gpu-target build instead")
    args = ["--onnx", "x.onnx", "--plan", str(tmp_path / "m.plan")]
    r = subprocess.run(
        [sys.executable, "-m", "build_engines.tensorrt", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and reason in r.stderr


def test_gpu_placement_and_dali_instances_are_options(tmp_path: Path) -> None:
    """Default: GPU models on every GPU the server sees (no ``gpus`` list) with several DALI instances per
    GPU (one left most NVDEC engines idle); ids, instances and the DALI batch follow the options."""
    from build_engines.repository import DEFAULT_DALI_INSTANCES, generate_configs

    spec, labels = PreprocessSpec(num_frames=4, crop_size=32, short_side=32), TINY_LABELS
    generate_configs(tmp_path / "d", spec, labels, RepositoryOptions(target="gpu"))
    pre = parse_config(tmp_path / "d" / contract.PREPROCESS / "config.pbtxt")
    (group,) = pre.instance_group
    assert list(group.gpus) == [] and group.count == DEFAULT_DALI_INSTANCES > 1
    opts = RepositoryOptions(
        target="gpu", gpus=(0, 2), dali_instances=3, max_batch_size=8, dali_max_batch_size=1
    )
    generate_configs(tmp_path / "o", spec, labels, opts)
    pre = parse_config(tmp_path / "o" / contract.PREPROCESS / "config.pbtxt")
    cls = parse_config(tmp_path / "o" / contract.CLASSIFIER / "config.pbtxt")
    assert list(pre.instance_group[0].gpus) == [0, 2] and pre.instance_group[0].count == 3
    assert list(cls.instance_group[0].gpus) == [0, 2]
    assert pre.max_batch_size == 1 and cls.max_batch_size == 8  # every video alone through DALI
    # Triton refuses an ensemble allowing more than a composing model (checked on the wheel's server).
    assert parse_config(tmp_path / "o" / contract.ENSEMBLE / "config.pbtxt").max_batch_size == 1
    for bad in ({"gpus": (0, 0)}, {"gpus": (-1,)}, {"dali_instances": 0}, {"dali_max_batch_size": 9}):
        with pytest.raises(ValueError):
            RepositoryOptions(target="gpu", max_batch_size=8, **bad)


def _tree(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}


def test_the_cpu_placement_changes_only_the_placement(tmp_path: Path) -> None:
    """``--dali-device cpu`` (what Triton's dali backend serves in the suite) is the gpu repository with
    only its placement changed: every other file and config field is identical."""
    from build_engines.repository import generate_configs

    spec, labels = PreprocessSpec(num_frames=4, crop_size=32, short_side=32), TINY_LABELS
    shipped, placed = tmp_path / "mixed", tmp_path / "cpu"
    generate_configs(shipped, spec, labels, RepositoryOptions(target="gpu", precision="fp32"))
    generate_configs(
        placed, spec, labels, RepositoryOptions(target="gpu", precision="fp32", dali_device="cpu")
    )
    a, b = _tree(shipped), _tree(placed)
    classifier = f"{contract.CLASSIFIER}/"
    # The only files that differ in kind: the classifier (TensorRT plan config vs the cpu runtime's python
    # model with its bundled code). Every other file exists in both.
    assert {k for k in a if not k.startswith(classifier)} == {k for k in b if not k.startswith(classifier)}
    placement_configs = {f"{m}/config.pbtxt" for m in (contract.PREPROCESS, contract.FRAME_SAMPLER)}
    for name in a:
        if not name.startswith(classifier) and name not in placement_configs:
            assert a[name] == b[name], f"{name} differs between the placements"
    pre_a, pre_b = (parse_config(r / contract.PREPROCESS / "config.pbtxt") for r in (shipped, placed))
    assert pre_a.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert pre_b.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    pre_b.instance_group[0].kind = mc.ModelInstanceGroup.KIND_GPU
    assert pre_a == pre_b
    fi_a, fi_b = (parse_config(r / contract.FRAME_SAMPLER / "config.pbtxt") for r in (shipped, placed))
    assert fi_a.parameters[contract.DECODER_PARAMETER].string_value == "mixed"
    assert fi_b.parameters[contract.DECODER_PARAMETER].string_value == "cpu"
    fi_b.parameters[contract.DECODER_PARAMETER].string_value = "mixed"
    assert fi_a == fi_b
    cls_a, cls_b = (parse_config(r / contract.CLASSIFIER / "config.pbtxt") for r in (shipped, placed))
    assert (cls_a.platform, cls_b.backend) == ("tensorrt_plan", "python")
    for field in ("input", "output", "max_batch_size", "dynamic_batching"):
        assert getattr(cls_a, field) == getattr(cls_b, field), field
    assert cls_b.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


def test_the_cpu_placement_is_a_gpu_target_option_only() -> None:
    with pytest.raises(ValueError, match="dali_device"):
        RepositoryOptions(target="cpu", dali_device="cpu")
    with pytest.raises(ValueError, match="dali_device must be one of"):
        RepositoryOptions(target="gpu", dali_device="gpu")
    with pytest.raises(ValueError, match="fp32"):
        RepositoryOptions(target="gpu", dali_device="cpu", precision="fp16")
