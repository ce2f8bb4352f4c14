"""perf_analyzer, driven from Python: input-data files, one run per concurrency level, CSV parsing, and
Triton's own per-model statistics read before and after each run.

perf_analyzer 2.51 (shipped by ``tritonclient[all]``) has no ``--enable-composing-model-stats`` flag and its
CSV holds only the called model's server times, so the stage breakdown of an ensemble comes from the
server's statistics endpoint (``/v2/models/stats``): the difference of two snapshots taken around one
concurrency level is exactly the work that level caused, per composing model.

Every failure (no binary, a run that errors or hangs, a CSV without the expected columns) raises
:class:`PerfError` with the command and the tail of its output.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np


class PerfError(RuntimeError):
    """perf_analyzer or the server statistics could not give a measurement; the message says why."""


# ----------------------------------------------------------------------------------------------------
# The binary and its environment


def site_packages() -> Path:
    """This environment's site-packages (where ``nvidia/cuda_runtime/lib`` lives)."""
    return Path(sysconfig.get_paths()["platlib"])


def perf_analyzer_binary() -> Path:
    """``perf_analyzer`` installed by ``tritonclient[all]`` next to this interpreter."""
    path = Path(sys.executable).parent / "perf_analyzer"
    if not path.is_file():
        raise PerfError(
            f"{path}: perf_analyzer not found (it comes with tritonclient[all]; run `make setup`)"
        )
    return path


def perf_analyzer_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment in which perf_analyzer finds ``libcudart.so.12`` (it links it even on a CPU host)."""
    env = dict(os.environ if base is None else base)
    cudart = site_packages() / "nvidia" / "cuda_runtime" / "lib"
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(cudart), env.get("LD_LIBRARY_PATH", "")) if p)
    return env


def perf_analyzer_version() -> str:
    """``2.51.0`` or similar; raises :class:`PerfError` when the binary cannot run (missing libb64-0d...)."""
    binary = perf_analyzer_binary()
    try:
        out = subprocess.run(
            [str(binary), "--version"], env=perf_analyzer_env(), capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PerfError(f"{binary} --version failed: {exc}") from exc
    text = (out.stdout + out.stderr).strip()
    if out.returncode != 0 or "Version" not in text:
        raise PerfError(f"{binary} does not run (needs Debian libb64-0d and libcudart): {text[-300:]}")
    return text.split("Version", 1)[1].split()[0]


# ----------------------------------------------------------------------------------------------------
# Input data


def write_input_data(path: str | Path, samples: Sequence[Mapping[str, np.ndarray]]) -> Path:
    """Write a perf_analyzer ``--input-data`` JSON file: one entry per sample, each tensor as base64 of its
    raw bytes with an explicit shape (so variable-size inputs such as a whole encoded video work).

    perf_analyzer sends the entries in order, one per request, and wraps around. Shapes exclude the batch
    dimension for models with ``max_batch_size > 0`` (perf_analyzer adds it); the caller decides.
    """
    if not samples:
        raise ValueError("input data needs at least one sample")
    entries = []
    for i, sample in enumerate(samples):
        if not sample:
            raise ValueError(f"input data sample {i} has no tensors")
        entry = {}
        for name, arr in sample.items():
            arr = np.ascontiguousarray(arr)
            if arr.size == 0:
                raise ValueError(f"input data sample {i}: tensor {name!r} is empty")
            entry[name] = {"b64": base64.b64encode(arr.tobytes()).decode("ascii"), "shape": list(arr.shape)}
        entries.append(entry)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"data": entries}, f)
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------------------------------
# Settings, command line, CSV


@dataclass(frozen=True)
class PerfSettings:
    """How long and how carefully each concurrency level is measured.

    ``count_windows`` (the default) closes a window after ``request_count`` requests, which suits slow
    models (a time window of a few seconds may hold no finished request at all); perf_analyzer repeats
    windows until three in a row agree within ``stability_pct`` or ``max_trials`` is reached.
    """

    measurement_mode: str = "count_windows"
    request_count: int = 50
    interval_ms: int = 5000
    stability_pct: float = 10.0
    max_trials: int = 6
    protocol: str = "grpc"
    timeout_s: float = 600.0
    collect_metrics: bool = True

    def __post_init__(self) -> None:
        if self.measurement_mode not in ("count_windows", "time_windows"):
            raise ValueError(
                f"measurement_mode must be count_windows or time_windows, got {self.measurement_mode!r}"
            )
        if self.protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be grpc or http, got {self.protocol!r}")
        if self.request_count < 1 or self.interval_ms < 1 or self.max_trials < 1:
            raise ValueError("request_count, interval_ms and max_trials must be positive")


def perf_command(
    model: str,
    url: str,
    input_data: str | Path,
    concurrency: int,
    settings: PerfSettings,
    csv_path: str | Path,
    *,
    metrics_url: str | None = None,
) -> list[str]:
    """The perf_analyzer command for one concurrency level of ``model`` (``--concurrency-range C:C``)."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    cmd = [
        str(perf_analyzer_binary()),
        "-m",
        model,
        "-u",
        url,
        "-i",
        settings.protocol,
        "--input-data",
        str(input_data),
        "--concurrency-range",
        f"{concurrency}:{concurrency}",
        "--measurement-mode",
        settings.measurement_mode,
        "-s",
        f"{settings.stability_pct:g}",
        "-r",
        str(settings.max_trials),
        "-f",
        str(csv_path),
        "--verbose-csv",
    ]
    if settings.measurement_mode == "count_windows":
        cmd += ["--measurement-request-count", str(settings.request_count)]
        # The time window still bounds a count window from below; keep it short so a fast model is not
        # held for seconds per window.
        cmd += ["-p", str(min(settings.interval_ms, 1000))]
    else:
        cmd += ["-p", str(settings.interval_ms)]
    if settings.collect_metrics and metrics_url:
        # The CPU host has no GPU metrics; the columns stay empty but the option is exercised as on a GPU.
        cmd += ["--collect-metrics", "--metrics-url", metrics_url.removeprefix("http://")]
    return cmd


@dataclass
class PerfRow:
    """One concurrency level as perf_analyzer's CSV reports it; times in milliseconds."""

    concurrency: int
    throughput: float  # inferences (videos) per second
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    avg_ms: float
    client_send_ms: float
    network_ms: float  # network + server send/receive
    server_queue_ms: float
    server_compute_input_ms: float
    server_compute_infer_ms: float
    server_compute_output_ms: float
    client_recv_ms: float


_CSV_COLUMNS = {
    "concurrency": "Concurrency",
    "throughput": "Inferences/Second",
    "p50_ms": "p50 latency",
    "p90_ms": "p90 latency",
    "p95_ms": "p95 latency",
    "p99_ms": "p99 latency",
    "avg_ms": "Avg latency",
    "client_send_ms": "Client Send",
    "network_ms": "Network+Server Send/Recv",
    "server_queue_ms": "Server Queue",
    "server_compute_input_ms": "Server Compute Input",
    "server_compute_infer_ms": "Server Compute Infer",
    "server_compute_output_ms": "Server Compute Output",
    "client_recv_ms": "Client Recv",
}


_OPTIONAL = {"avg_ms"}


def parse_perf_csv(path: str | Path) -> list[PerfRow]:
    """Rows of a perf_analyzer ``-f`` CSV (microseconds there, milliseconds here), sorted by concurrency.

    Only the header row and the data rows up to the first blank line are read (perf_analyzer may append
    other sections after one).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PerfError(f"{path}: cannot read perf_analyzer CSV ({exc})") from exc
    lines = text.split("\n\n", 1)[0].splitlines()
    reader = csv.DictReader(lines)
    header = reader.fieldnames or []
    missing = [col for key, col in _CSV_COLUMNS.items() if col not in header and key not in _OPTIONAL]
    if missing:
        raise PerfError(f"{path}: not a perf_analyzer CSV (missing columns {missing}; header {header})")
    rows = []
    for n, rec in enumerate(reader, start=2):
        try:
            values: dict[str, Any] = {}
            for key, col in _CSV_COLUMNS.items():
                if col not in rec:  # optional column absent (e.g. "Avg latency" under --percentile)
                    values[key] = float("nan")
                elif key == "concurrency":
                    values[key] = int(rec[col])
                elif key == "throughput":
                    values[key] = float(rec[col])
                else:
                    values[key] = float(rec[col]) / 1000.0  # us -> ms
        except (TypeError, ValueError) as exc:
            raise PerfError(f"{path}: line {n} has a non-numeric value ({exc})") from exc
        rows.append(PerfRow(**values))
    if not rows:
        raise PerfError(f"{path}: perf_analyzer CSV holds no measurement")
    return sorted(rows, key=lambda r: r.concurrency)


# ----------------------------------------------------------------------------------------------------
# Server statistics


@dataclass
class ModelCounters:
    """Cumulative counters of one model from ``/v2/models/stats`` (nanoseconds, request counts)."""

    success_count: int = 0
    fail_count: int = 0
    execution_count: int = 0
    success_ns: int = 0
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0


@dataclass
class StageBreakdown:
    """Average per request of one model over a measurement, in milliseconds.

    ``overhead_ms`` is the request time not spent queued or computing (scheduling, ensemble hand-off,
    python-backend shared-memory traffic). ``batch`` = requests per execution (dynamic batching).
    """

    requests: int
    failures: int
    batch: float
    total_ms: float
    queue_ms: float
    compute_input_ms: float
    compute_infer_ms: float
    compute_output_ms: float
    overhead_ms: float


def _http_json(url: str, timeout_s: float = 10.0) -> Any:
    if not url.startswith("http"):
        url = "http://" + url
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise PerfError(f"GET {url} failed: {exc}") from exc


def server_statistics(http_url: str) -> dict[str, ModelCounters]:
    """Cumulative counters of every loaded model, by model name."""
    doc = _http_json(f"{http_url}/v2/models/stats")
    out: dict[str, ModelCounters] = {}
    for m in doc.get("model_stats", []):
        st = m.get("inference_stats", {})

        def ns(key: str, st: dict = st) -> int:
            return int(st.get(key, {}).get("ns", 0))

        out[m["name"]] = ModelCounters(
            success_count=int(st.get("success", {}).get("count", 0)),
            fail_count=int(st.get("fail", {}).get("count", 0)),
            execution_count=int(m.get("execution_count", 0)),
            success_ns=ns("success"),
            queue_ns=ns("queue"),
            compute_input_ns=ns("compute_input"),
            compute_infer_ns=ns("compute_infer"),
            compute_output_ns=ns("compute_output"),
        )
    return out


def stats_delta(
    before: Mapping[str, ModelCounters], after: Mapping[str, ModelCounters]
) -> dict[str, StageBreakdown]:
    """Per-request averages of what happened between two snapshots, for models that served requests."""
    out: dict[str, StageBreakdown] = {}
    for name, a in after.items():
        b = before.get(name, ModelCounters())
        n = a.success_count - b.success_count
        fails = a.fail_count - b.fail_count
        if n <= 0 and fails <= 0:
            continue
        div = max(n, 1) * 1e6  # ns -> ms per request

        def d(attr: str, a: ModelCounters = a, b: ModelCounters = b, div: float = div) -> float:
            return (getattr(a, attr) - getattr(b, attr)) / div

        total = d("success_ns")
        queue, cin, cinf, cout = (
            d("queue_ns"),
            d("compute_input_ns"),
            d("compute_infer_ns"),
            d("compute_output_ns"),
        )
        execs = a.execution_count - b.execution_count
        out[name] = StageBreakdown(
            requests=n,
            failures=fails,
            batch=n / execs if execs > 0 else 0.0,
            total_ms=total,
            queue_ms=queue,
            compute_input_ms=cin,
            compute_infer_ms=cinf,
            compute_output_ms=cout,
            overhead_ms=max(0.0, total - queue - cin - cinf - cout),
        )
    return out


def model_config(http_url: str, model: str) -> dict[str, Any]:
    """The model's configuration as the server holds it (JSON form of config.pbtxt)."""
    return _http_json(f"{http_url}/v2/models/{model}/config")


def server_metadata(http_url: str) -> dict[str, Any]:
    """``/v2``: server name, version, extensions."""
    return _http_json(f"{http_url}/v2")


# ----------------------------------------------------------------------------------------------------
# A sweep


@dataclass
class LevelResult:
    """One concurrency level of one model: perf_analyzer's row and the server's stage breakdown."""

    row: PerfRow
    stages: dict[str, StageBreakdown] = field(default_factory=dict)
    wall_s: float = 0.0
    stable: bool = True  # False: perf_analyzer's windows never agreed; the last ones were taken anyway


@dataclass
class SweepResult:
    """A model measured over a list of concurrency levels."""

    model: str
    levels: list[LevelResult]
    csv_paths: list[str]

    @property
    def best(self) -> LevelResult:
        """The level with the highest throughput."""
        return max(self.levels, key=lambda lv: lv.row.throughput)

    def at(self, concurrency: int) -> LevelResult | None:
        return next((lv for lv in self.levels if lv.row.concurrency == concurrency), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "csv_paths": self.csv_paths,
            "levels": [
                {
                    "row": asdict(lv.row),
                    "stages": {k: asdict(v) for k, v in lv.stages.items()},
                    "wall_s": lv.wall_s,
                    "stable": lv.stable,
                }
                for lv in self.levels
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SweepResult:
        levels = [
            LevelResult(
                row=PerfRow(**lv["row"]),
                stages={k: StageBreakdown(**v) for k, v in lv.get("stages", {}).items()},
                wall_s=float(lv.get("wall_s", 0.0)),
                stable=bool(lv.get("stable", True)),
            )
            for lv in d["levels"]
        ]
        return cls(model=d["model"], levels=levels, csv_paths=list(d.get("csv_paths", [])))


UNSTABLE_MARK = "Failed to obtain stable measurement"
UNSTABLE_PCT = 1000.0  # a stability threshold no window misses: accept what was measured


class UnstableMeasurement(PerfError):
    """perf_analyzer's windows did not agree within the stability threshold (a noisy, shared host)."""


def run_perf_analyzer(cmd: Sequence[str], log_path: str | Path, timeout_s: float) -> None:
    """Run one perf_analyzer command, its output into ``log_path``; :class:`PerfError` on failure
    (:class:`UnstableMeasurement` when the only problem was stability)."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        try:
            proc = subprocess.run(
                list(cmd), env=perf_analyzer_env(), stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s
            )
        except subprocess.TimeoutExpired as exc:
            raise PerfError(f"perf_analyzer ran past {timeout_s:.0f}s (log {log_path})") from exc
        except OSError as exc:
            raise PerfError(f"cannot run perf_analyzer: {exc}") from exc
    if proc.returncode != 0:
        text = log_path.read_text(errors="replace")
        tail = "\n".join(text.splitlines()[-12:])
        if UNSTABLE_MARK in text:
            raise UnstableMeasurement(f"perf_analyzer: no stable measurement (log {log_path})")
        raise PerfError(f"perf_analyzer exited with {proc.returncode} (log {log_path}):\n{tail}")


def sweep(
    model: str,
    *,
    url: str,
    http_url: str,
    input_data: str | Path,
    concurrencies: Sequence[int],
    settings: PerfSettings,
    out_dir: str | Path,
    metrics_url: str | None = None,
    progress: Any = None,
) -> SweepResult:
    """Measure ``model`` at each concurrency level, one perf_analyzer run per level.

    ``url`` is the endpoint perf_analyzer talks to (gRPC or HTTP per ``settings.protocol``), ``http_url``
    the server's HTTP endpoint for statistics. Raw CSVs and logs go to ``out_dir`` as
    ``<model>_c<N>.csv`` / ``.log``. ``progress`` (a tqdm bar) is advanced once per level.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    levels: list[LevelResult] = []
    csvs: list[str] = []
    for c in concurrencies:
        csv_path = out_dir / f"{model}_c{c}.csv"
        log_path = out_dir / f"{model}_c{c}.log"
        before = server_statistics(http_url)
        t0 = time.perf_counter()
        stable = True
        try:
            cmd = perf_command(model, url, input_data, c, settings, csv_path, metrics_url=metrics_url)
            run_perf_analyzer(cmd, log_path, settings.timeout_s)
        except UnstableMeasurement:
            # On two shared cores three windows in a row rarely agree within a few percent; measure the
            # level again and keep the result, flagged, instead of dropping it.
            stable = False
            relaxed = replace(settings, stability_pct=UNSTABLE_PCT, max_trials=3)
            before = server_statistics(http_url)
            cmd = perf_command(model, url, input_data, c, relaxed, csv_path, metrics_url=metrics_url)
            run_perf_analyzer(cmd, log_path, settings.timeout_s)
        wall = time.perf_counter() - t0
        after = server_statistics(http_url)
        rows = parse_perf_csv(csv_path)
        levels.append(LevelResult(row=rows[0], stages=stats_delta(before, after), wall_s=wall, stable=stable))
        csvs.append(str(csv_path))
        if progress is not None:
            flag = "" if stable else " (unstable)"
            progress.set_postfix_str(
                f"{model} c={c}: {rows[0].throughput:.2f}/s p99 {rows[0].p99_ms:.0f} ms{flag}"
            )
            progress.update(1)
    return SweepResult(model=model, levels=levels, csv_paths=csvs)
