"""The cpu target at int8: calibration lists, the int8 serving graph, the agreement guard, real serving.

Tiny seeded models (4 frames x 32 px, 5 classes, three views). The guard is tested on a model made to
break under int8: one LayerNorm channel of the last block carries an outlier 1000x the others, so a
per-tensor activation scale rounds every other channel to zero (the outlier failure of int8 transformers);
the outlier's own fc1 weights are zero, so fp32 is unaffected, and the MLP branch is scaled up to decide
the features. No variant can fix that, and the build must refuse it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from build_engines.build import build_repository, main
from build_engines.quantize import (
    FP32_REFERENCE_FILE,
    Agreement,
    AgreementError,
    CalibrationError,
    QuantizeOptions,
    check_agreement,
    cpu_flags,
    load_calibration,
    read_calibration_list,
)
from build_engines.repository import RepositoryOptions
from tests.utils_model import tiny_model
from tests.utils_video import encode_video, moving_square_frames
from training.modeling.checkpoint import Checkpoint, save_checkpoint
from training.preprocessing import preprocess_video
from training.preprocessing.spec import PreprocessSpec
from triton_models import contract
from triton_models.runtime import OrtClassifier, classify_batch

LABELS = ["archery", "bowling", "cartwheel", "dancing", "eating"]
SPEC = PreprocessSpec(num_frames=4, short_side=32, crop_size=32)
INT8 = RepositoryOptions(target="cpu", precision="int8", max_batch_size=4, max_queue_delay_us=100_000)


def _checkpoint(path: Path, outlier: bool = False) -> Path:
    """A tiny checkpoint; ``outlier`` makes it one that int8 cannot represent (see the module docstring)."""
    model = tiny_model(num_classes=len(LABELS), num_frames=4, img_size=32, seed=0)
    if outlier:
        block = model.blocks[-1]
        with torch.no_grad():
            block.norm2.weight[0] = 1000.0  # (D,): channel 0 of the MLP's input, 1000x the others
            block.mlp.fc1.weight[:, 0] = 0.0  # (hidden, D): ... which fp32 then ignores
            block.mlp.fc2.weight.mul_(20.0)  # the MLP branch decides the features
    ckpt = Checkpoint(
        model_config=model.model_config,
        preprocess=SPEC,
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        labels=list(LABELS),
        meta={"source": "tests/build_engines/test_quantize.py", "outlier": outlier},
    )
    return save_checkpoint(ckpt, path)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """12 encoded H.264 videos (squares moving in different directions) and their ``path label`` list."""
    work = tmp_path_factory.mktemp("calibration")
    (work / "clips").mkdir()
    paths = []
    for i in range(12):
        frames = moving_square_frames(12, 40, 56, dx=(i % 4) - 2, dy=(i % 3) - 1, seed=i)
        paths.append(encode_video(work / "clips" / f"v{i:02d}.mp4", frames, "h264"))
    listing = work / "calib.list"
    listing.write_text("".join(f"clips/{p.name} {i % len(LABELS)}\n" for i, p in enumerate(paths)))
    return listing, paths


@pytest.fixture(scope="module")
def int8_repo(tmp_path_factory: pytest.TempPathFactory, videos) -> tuple[Path, Path, dict]:
    """(repository, checkpoint, serving.json record) of a static int8 build of a confident tiny model."""
    work = tmp_path_factory.mktemp("int8")
    ckpt = _checkpoint(work / "tiny.pt")
    repo = work / "model_repository"
    # A random tiny model has near-tied classes on some videos, and int8 rounding differs between CPUs
    # (7-bit weights without VNNI): the floor is loose here, the recorded figures are checked below.
    options = QuantizeOptions(videos[0], min_agreement=0.5)
    record = build_repository(ckpt, repo, INT8, quantize=options, log=lambda *_: None)
    return repo, ckpt, record


# --- calibration lists ----------------------------------------------------------------------------------
def test_calibration_list_accepts_paths_with_and_without_labels(tmp_path: Path, videos) -> None:
    listing, paths = videos
    mixed = listing.parent / "mixed.list"
    mixed.write_text(f"# comment\nclips/{paths[0].name}\n\n{paths[1]} 3\n")  # relative, absolute + label
    assert read_calibration_list(mixed) == [paths[0], paths[1]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("\n# only a comment\n\n", "no videos listed"),
        ("clips/missing.mp4 0\n", "missing.mp4 does not exist"),
    ],
)
def test_bad_calibration_list_is_a_named_error(tmp_path: Path, content: str | None, message: str) -> None:
    listing = tmp_path / "calib.list"
    if content is not None:
        listing.write_text(content)
    with pytest.raises(CalibrationError, match=message) as err:
        read_calibration_list(listing)
    assert str(listing) in str(err.value)


def test_undecodable_calibration_video_is_a_named_error(tmp_path: Path) -> None:
    (tmp_path / "notavideo.mp4").write_bytes(b"this is text, not an mp4 container" * 20)
    listing = tmp_path / "calib.list"
    listing.write_text("notavideo.mp4 0\n")
    with pytest.raises(CalibrationError, match="notavideo.mp4 cannot be used"):
        load_calibration(QuantizeOptions(listing), SPEC, log=lambda *_: None)


def test_cli_bad_calibration_list_exits_2_before_writing(tmp_path: Path, capsys) -> None:
    ckpt = _checkpoint(tmp_path / "tiny.pt")
    listing = tmp_path / "empty.list"
    listing.write_text("")
    out = tmp_path / "repo"
    argv = ["--checkpoint", str(ckpt), "--precision", "int8", "--calibration", str(listing), "-o", str(out)]
    assert main(argv) == 2
    assert "error: calibration list" in capsys.readouterr().err
    assert not out.exists()
    assert list(tmp_path.glob(".repo.*")) == []  # no half-built repository left behind


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="min_agreement"):
        QuantizeOptions(min_agreement=1.5)
    with pytest.raises(ValueError, match="int8 is a cpu-target build"):
        RepositoryOptions(target="gpu", precision="int8")


def test_cli_calibration_needs_int8(tmp_path: Path, videos, capsys) -> None:
    ckpt = _checkpoint(tmp_path / "tiny.pt")
    argv = ["--checkpoint", str(ckpt), "--calibration", str(videos[0]), "-o", str(tmp_path / "repo")]
    assert main(argv) == 2
    assert "--calibration needs --precision int8" in capsys.readouterr().err


# --- the int8 graph -------------------------------------------------------------------------------------
def test_int8_repository_records_both_graphs_and_the_agreement(int8_repo) -> None:
    repo, _, record = int8_repo
    q = json.loads((repo / contract.SERVING_FILE).read_text())["quantization"]
    assert q == record["quantization"]
    assert record["options"]["precision"] == "int8"
    assert q["served"] == f"{contract.CLASSIFIER}/1/{contract.ONNX_FILE}"
    assert q["fp32_reference"] == f"{contract.CLASSIFIER}/{FP32_REFERENCE_FILE}"
    assert (repo / q["served"]).is_file() and (repo / q["fp32_reference"]).is_file()
    assert q["mode"] == "static"
    assert q["calibration"] == {"list": q["calibration"]["list"], "videos": 12, "fit": 9, "held_out": 3}
    assert q["agreement"]["samples"] == 3 and q["agreement"]["evaluated_on"] == "held-out calibration videos"
    assert q["agreement"]["top1_agreement"] >= 0.5 and q["min_agreement"] == 0.5
    assert 0.0 < q["agreement"]["max_prob_diff"] < 0.1  # int8 moved the probabilities, a little
    assert set(q["cpu_flags"]) >= {"avx2", "avx512_vnni", "avx512_bf16", "amx_int8"}
    # LayerNorm and Softmax stayed fp32 by name; every MatMul/Gemm of the served graph is int8.
    served = onnx.load(str(repo / q["served"])).graph
    ops = [n.op_type for n in served.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    assert any(n.name in q["fp32_nodes"] for n in served.node if n.op_type == "LayerNormalization")
    quantized_inputs = {o for n in served.node if n.op_type == "DequantizeLinear" for o in n.output}
    for n in served.node:
        if n.op_type == "MatMul" and n.name not in q["fp32_nodes"]:
            assert quantized_inputs & set(n.input[:2]), n.name
    # Smaller on disk: int8 weights.
    assert (repo / q["served"]).stat().st_size < 0.6 * (repo / q["fp32_reference"]).stat().st_size


def test_int8_graph_loads_and_serves_close_to_fp32(int8_repo, videos) -> None:
    repo, _, record = int8_repo
    q = record["quantization"]
    int8 = OrtClassifier(repo / q["served"])
    fp32 = OrtClassifier(repo / q["fp32_reference"])
    views = [preprocess_video(p, SPEC).views[None] for p in videos[1][:4]]  # (1, V, 3, T, S, S) each
    out = classify_batch(int8, views)  # one batch, as the python backend runs it
    ref = fp32(np.concatenate(views))  # (4, K)
    got = np.concatenate(out)  # (4, K)
    assert got.shape == (4, len(LABELS))
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    assert 0.0 < float(np.abs(got - ref).max()) < 0.1  # int8, yet close to fp32
    for x, y in zip(views, out):  # batching does not change the answers
        np.testing.assert_allclose(int8(x), y, atol=1e-6)


def test_recorded_agreement_is_what_the_two_graphs_do(int8_repo, videos) -> None:
    """The held-out videos are every 4th of the list: rerun both graphs on them and get the same figures."""
    repo, _, record = int8_repo
    q = record["quantization"]
    held = [preprocess_video(p, SPEC).views[None] for p in videos[1][3::4]]  # (1, V, 3, T, S, S) each
    ref = OrtClassifier(repo / q["fp32_reference"])(np.concatenate(held))  # (3, K)
    got = OrtClassifier(repo / q["served"])(np.concatenate(held))  # (3, K)
    assert q["agreement"]["top1_agreement"] == pytest.approx(float((ref.argmax(1) == got.argmax(1)).mean()))
    assert q["agreement"]["max_prob_diff"] == pytest.approx(float(np.abs(ref - got).max()), abs=1e-6)


def test_dynamic_build_without_calibration(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "tiny.pt")
    # A random tiny model on random views has near-tied classes: agreement is recorded, not required.
    loose = QuantizeOptions(min_agreement=0.5)
    record = build_repository(ckpt, tmp_path / "repo", INT8, quantize=loose, log=lambda *_: None)
    q = record["quantization"]
    assert 0.5 <= q["agreement"]["top1_agreement"] <= 1.0 and q["agreement"]["samples"] == 8
    assert q["mode"] == "dynamic" and q["calibration"] == {}
    assert q["agreement"]["evaluated_on"].startswith("seeded random views")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "repo" / q["served"])).graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops


# --- the guard ------------------------------------------------------------------------------------------
def test_guard_refuses_a_model_int8_breaks(tmp_path: Path, videos, capsys) -> None:
    """The outlier model: every variant's agreement is far below the threshold, so the build refuses,
    statically calibrated or dynamic, through the library and the CLI, and leaves no repository."""
    ckpt = _checkpoint(tmp_path / "outlier.pt", outlier=True)
    out = tmp_path / "repo"
    static = QuantizeOptions(videos[0], min_agreement=0.9)
    with pytest.raises(AgreementError, match="int8 graph refused: top-1 agreement") as err:
        build_repository(ckpt, out, INT8, quantize=static, log=lambda *_: None)
    assert "3 held-out calibration videos, below --min-agreement 0.9" in str(err.value)
    assert not out.exists()
    argv = ["--checkpoint", str(ckpt), "--precision", "int8", "--min-agreement", "0.9", "-o", str(out)]
    assert main(argv) == 2  # dynamic: activations are quantized per tensor too
    assert capsys.readouterr().err.startswith("error: int8 graph refused")
    assert not out.exists()
    # With the guard off it builds, and the loss is on record.
    loose = QuantizeOptions(min_agreement=0.0)
    record = build_repository(ckpt, out, INT8, quantize=loose, log=lambda *_: None)
    assert record["quantization"]["agreement"]["top1_agreement"] <= 0.75


def test_check_agreement_threshold_is_inclusive() -> None:
    a = Agreement(top1_agreement=0.99, max_prob_diff=0.01, samples=100, evaluated_on="held-out videos")
    check_agreement(a, 0.99)
    with pytest.raises(AgreementError, match=r"0\.9900 on 100 held-out videos, below --min-agreement 0\.995"):
        check_agreement(a, 0.995)


def test_cpu_flags_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma avx512f avx512_vnni\n")
    flags = cpu_flags(info)
    assert flags["avx2"] and flags["avx512_vnni"] and not flags["avx512_bf16"] and not flags["amx_int8"]
    assert not any(cpu_flags(tmp_path / "missing").values())


# --- real serving ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_int8_repository_served_by_triton(int8_repo, videos) -> None:
    """The int8 repository on a real tritonserver answers as the int8 graph does in process."""
    from clients.core import infer_probs, make_client, read_video_bytes
    from tests.utils_server import running_server

    repo, _, record = int8_repo
    int8 = OrtClassifier(repo / record["quantization"]["served"])
    with running_server(repo, log_file=repo.parent / "tritonserver.log") as server:
        for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
            client = make_client(url, protocol)
            for path in videos[1][:3]:
                got = infer_probs(client, read_video_bytes(path))
                want = int8(preprocess_video(path, SPEC).views[None])[0]
                np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=f"{protocol} {path.name}")


def test_bench_report_names_the_precision(int8_repo) -> None:
    from benchmarks.report import _precision_line
    from benchmarks.run import build_parser

    _, _, record = int8_repo
    args = build_parser().parse_args(["--precision", "int8", "--min-agreement", "0.95"])
    assert (args.precision, args.min_agreement) == ("int8", 0.95)
    line = _precision_line(
        {"repository_options": {"precision": "int8"}, "quantization": record["quantization"]}
    )
    assert line.startswith("int8 (static, all MatMul/Gemm int8): top-1 agreement with fp32 ")
    assert "on 3 held-out calibration videos" in line
    assert _precision_line({"repository_options": {}}) == "fp32"
