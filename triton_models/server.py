"""Run the Triton Inference Server bundled in the ``nvidia-pytriton`` wheel, without Docker.

The wheel carries a real ``tritonserver`` 2.51 binary, its python backend and one backend stub per Python
version. The stub must sit next to ``libtriton_python.so``; the wheel's folder is not ours to write, so
:func:`prepare_backend_dir` builds a private backend folder of symlinks (the stub finds its bundled
``libcudart`` through an ``$ORIGIN`` rpath, which follows the symlink to the wheel).

The stub embeds the CPython it was linked against (``libpython3.X.so``). We point it at this interpreter's
own shared library and prefix (``LD_LIBRARY_PATH``/``PYTHONHOME``) and put the active environment's
site-packages on ``PYTHONPATH`` -- not the project: a generated repository carries its own code.

Use :class:`TritonServer` as a context manager in tests and tools, or the CLI for a long-running server::

    python -m triton_models.server start --repository model_repository   # returns once ready
    python -m triton_models.server status
    python -m triton_models.server stop

Triton's dali backend (the gpu target's ``preprocess`` model) ships in no wheel: ``make dali-backend``
builds it CPU-only from pinned upstream sources (:mod:`build_engines.dali_backend`) into
:data:`DALI_BACKEND_LIBRARY`, and the launcher serves with it when it is built
(``TritonServer.dali_backend``).
A repository with a ``backend: "dali"`` model refuses to start without it, saying how to build it.

Triton 2.51 has no flag for a request size limit (neither gRPC max message size nor an HTTP body limit),
so the preprocessing models enforce one themselves (``DecodeLimits.max_bytes``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STATE_DIR = ROOT / "runs" / "triton"
# Python-backend shared memory: the default 1 MiB region grows 1 MiB at a time, which means many
# re-mappings for a video of several MB or a (3, 3, 8, 224, 224) float32 tensor (14 MB).
SHM_DEFAULT_BYTES = 16 * 1024 * 1024
SHM_GROWTH_BYTES = 16 * 1024 * 1024
EXIT_TIMEOUT_S = 10
# Where `make dali-backend` (build_engines.dali_backend) puts Triton's dali backend, built CPU-only.
DALI_BACKEND_LIBRARY = ROOT / "build" / "dali_backend" / "libtriton_dali.so"


class ServerError(RuntimeError):
    """The server could not be started, stopped or found; the message says why (with the log's tail)."""


def _pytriton_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(
            "the nvidia-pytriton wheel is not installed (it carries tritonserver): run `make setup`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (path / "bin" / "tritonserver").is_file():
        raise ServerError(f"{path}: no bin/tritonserver in the nvidia-pytriton wheel")
    return path


def tritonserver_binary() -> Path:
    """The ``tritonserver`` executable shipped in the wheel."""
    return _pytriton_dir() / "bin" / "tritonserver"


def prepare_backend_dir(dest: str | Path | None = None) -> Path:
    """A ``--backend-directory`` whose ``python/`` holds the wheel's backend plus the stub for this Python.

    Created once per interpreter version (atomically: concurrent servers may race here) and reused.
    """
    wheel = _pytriton_dir()
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = wheel / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"the tritonserver wheel has no python backend stub for Python {ver} ({stub})")
    dest = Path(dest) if dest is not None else ROOT / "build" / "triton_backends" / f"py{ver}"
    pydir = dest / "python"
    if (pydir / "triton_python_backend_stub").exists() and (pydir / "libtriton_python.so").exists():
        _link_dali_backend(dest)  # built after the folder was made, or rebuilt
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".backends-", dir=dest.parent))
    (tmp / "python").mkdir()
    for src in (wheel / "backends" / "python").iterdir():
        if src.is_file():
            (tmp / "python" / src.name).symlink_to(src)
    (tmp / "python" / "triton_python_backend_stub").symlink_to(stub)
    # Other backends of the wheel (none in 0.7.0, but keep whatever is there).
    for other in (wheel / "backends").iterdir():
        if other.is_dir() and other.name != "python":
            (tmp / other.name).symlink_to(other)
    try:
        tmp.rename(dest)
    except OSError:  # another process won the race: use its folder
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    _link_dali_backend(dest)
    return dest


def _symlink(link: Path, target: Path) -> None:
    """``link`` -> ``target``, replaced atomically (concurrent servers may prepare the same folder)."""
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)


def _link_dali_backend(backend_dir: Path) -> None:
    """Put the built dali backend at ``<backend_dir>/dali/libtriton_dali.so`` (where Triton looks for it)
    and the ``libtritonserver.so`` it links against at ``<backend_dir>/lib/``: the wheel ships that library
    only under a hashed name (the one its ``tritonserver`` binary loads), so a symlink gives it the plain
    name; the dynamic loader sees the same file and maps it once."""
    if not DALI_BACKEND_LIBRARY.is_file():
        return
    _symlink(backend_dir / "dali" / "libtriton_dali.so", DALI_BACKEND_LIBRARY)
    libs = sorted((_pytriton_dir().parent.parent / "nvidia_pytriton.libs").glob("libtritonserver-*.so*"))
    if not libs:
        raise ServerError("the nvidia-pytriton wheel has no nvidia_pytriton.libs/libtritonserver-*.so")
    _symlink(backend_dir / "lib" / "libtritonserver.so", libs[0])


def dali_backend_available(backend_dir: Path | None = None) -> bool:
    """Whether the backend folder the server uses (default: the one prepared here) has the dali backend."""
    folder = backend_dir or prepare_backend_dir()
    return (folder / "dali" / "libtriton_dali.so").exists()


def repository_backends(repository: str | Path) -> set[str]:
    """The ``backend:`` names the models of a repository ask for (as written in their config.pbtxt)."""
    names = set()
    for config in Path(repository).glob("*/config.pbtxt"):
        with contextlib.suppress(OSError):
            names.update(re.findall(r'^\s*backend:\s*"([^"]+)"', config.read_text(), flags=re.MULTILINE))
    return names


def _cuda_runtime_lib() -> str | None:
    """``nvidia/cuda_runtime/lib`` of this environment: the dali backend links ``libcudart.so.12``."""
    spec = importlib.util.find_spec("nvidia.cuda_runtime")
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return str(lib) if lib.is_dir() else None


def server_environment(base: dict[str, str] | None = None, backend_dir: Path | None = None) -> dict[str, str]:
    """Environment for tritonserver so that python-backend stubs run this interpreter with this project
    (and, when ``backend_dir`` holds the dali backend, so that it finds the libraries it links)."""
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = sysconfig.get_config_var("LDLIBRARY")
    if libdir and ldlib and (Path(libdir) / ldlib).exists() and ldlib.endswith(".so"):
        # A shared libpython of this interpreter exists: make the stub use it and its stdlib.
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
        env["PYTHONHOME"] = sys.base_prefix
    if backend_dir is not None and (backend_dir / "lib" / "libtritonserver.so").exists():
        # The dali backend built here (see _link_dali_backend) and the CUDA runtime it links.
        extra = [str(backend_dir / "lib"), _cuda_runtime_lib()]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (*extra, env.get("LD_LIBRARY_PATH", "")) if p)
    site = sysconfig.get_paths()["purelib"]
    platsite = sysconfig.get_paths()["platlib"]
    # The environment's packages only: a generated repository carries the project code its python models
    # run, so the checkout is deliberately not on the path (a model that needed it would fail here too).
    parts = [site, platsite, *env.get("PYTHONPATH", "").split(os.pathsep)]
    seen: list[str] = []
    for p in parts:
        if p and p not in seen and Path(p).resolve() != ROOT:
            seen.append(p)
    env["PYTHONPATH"] = os.pathsep.join(seen)
    # The stub finds its prefix through `python3` on PATH: make that this environment's interpreter.
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH", "")) if p)
    # One OpenMP/MKL pool per stub process would oversubscribe the cores; models set their own threads.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def check_stub_libraries(backend_dir: Path, env: dict[str, str]) -> None:
    """Raise a clear :class:`ServerError` when the python backend stub cannot load its shared libraries
    (a Python built without ``libpython3.X.so``, e.g. Debian's without the ``libpython3.X`` package);
    otherwise every python-backend model would fail to load with a less obvious message."""
    stub = backend_dir / "python" / "triton_python_backend_stub"
    try:
        # The stub is a symlink; its $ORIGIN rpath (bundled libcudart) is relative to the wheel's file.
        real = stub.resolve()
        out = subprocess.run(["ldd", str(real)], capture_output=True, text=True, env=env, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return  # no ldd: let the server report it
    missing = [line.split()[0] for line in out.splitlines() if "not found" in line]
    if missing:
        ver = f"{sys.version_info.major}.{sys.version_info.minor}"
        raise ServerError(
            f"the python backend stub cannot load {', '.join(missing)}: install this Python's shared library "
            f"(Debian/Ubuntu: apt-get install libpython{ver}) or use a Python built with --enable-shared"
        )


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now (bind to port 0). Racy by nature; :meth:`TritonServer.start`
    retries with new ports when the server fails to bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _http_ready(url: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=timeout_s) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _tail(path: Path | None, n: int = 15) -> str:
    """The log's error lines (Triton writes them as ``E1129 ...``) and model load states, else its tail."""
    if path is None or not path.is_file():
        return "(no log)"
    lines = path.read_text(errors="replace").splitlines()
    errors = [x for x in lines if re.match(r"^E\d{4} ", x) or "UNAVAILABLE" in x]
    return "\n".join((errors or lines)[-n:])


class TritonServer:
    """A tritonserver process serving ``repository``; ports 0 mean "pick free ones".

    >>> with TritonServer("model_repository") as server:   # started and ready
    ...     client = tritonclient.grpc.InferenceServerClient(server.grpc_url)
    """

    def __init__(
        self,
        repository: str | Path,
        *,
        host: str = "127.0.0.1",
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        log_file: str | Path | None = None,
        extra_args: Sequence[str] = (),
        log_verbose: int = 0,
        binary: str | Path | None = None,
        backend_dir: str | Path | None = None,
    ) -> None:
        """``binary`` and ``backend_dir`` default to the wheel's server and the backend folder prepared
        here; pass another installation's (e.g. the NGC container's ``/opt/tritonserver``) to serve with
        its own backends."""
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise ServerError(f"{self.repository}: model repository folder does not exist")
        self.host = host
        self._want_ports = (http_port, grpc_port, metrics_port)
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self._own_log = log_file is None
        self.log_file = Path(log_file) if log_file is not None else None
        self.extra_args = list(extra_args)
        self.log_verbose = log_verbose
        self.binary = Path(binary) if binary is not None else None
        self.backend_dir = Path(backend_dir) if backend_dir is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        # The dali backend library the server was started with (None: not built, python backend only).
        self.dali_backend: Path | None = None

    # -- addresses -----------------------------------------------------------------------------------
    @property
    def _client_host(self) -> str:
        # A server bound to all interfaces is still reached through loopback from here.
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        """The tritonserver command line for the current ports."""
        backends = self.backend_dir or prepare_backend_dir()
        return [
            str(self.binary or tritonserver_binary()),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            "--model-control-mode=none",
            "--strict-readiness=true",
            "--exit-on-error=true",
            # On SIGTERM, wait at most this long for in-flight work (the default 30 s also waits on idle
            # keep-alive client connections).
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            f"--backend-config=python,shm-default-byte-size={SHM_DEFAULT_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={SHM_GROWTH_BYTES}",
            f"--log-verbose={self.log_verbose}",
            *self.extra_args,
        ]

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self, timeout_s: float = 120.0, *, detach: bool = False, attempts: int = 3) -> TritonServer:
        """Start the server and wait until ``/v2/health/ready``; raise :class:`ServerError` with the log's
        tail if it exits or is not ready in time. ``detach`` puts it in its own session so that it
        outlives this process (the CLI's ``start``)."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        if self.log_file is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_file = Path(name)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        backends = self.backend_dir or prepare_backend_dir()
        env = server_environment(backend_dir=backends)
        if self.backend_dir is None:
            check_stub_libraries(backends, env)
        dali = backends / "dali" / "libtriton_dali.so"
        self.dali_backend = dali.resolve() if dali.exists() else None
        if "dali" in repository_backends(self.repository) and self.dali_backend is None:
            raise ServerError(
                f"{self.repository} has a model on Triton's dali backend, which is not built here: run "
                "`make dali-backend` (it builds the backend CPU-only from pinned sources; see "
                "docs/serving_gpu.md)"
            )
        last = ""
        for _ in range(max(1, attempts)):
            self.http_port, self.grpc_port, self.metrics_port = (
                p or free_port(self._client_host) for p in self._want_ports
            )
            with open(self.log_file, "ab") as log:
                self._proc = subprocess.Popen(
                    self.command(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    # The deployable unit is the whole working world: nothing resolves against the
                    # caller's folder (a checkout, say), so a repository served here serves anywhere.
                    cwd=self.repository,
                    env=env,
                    start_new_session=detach,
                )
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    break
                if _http_ready(self.http_url):
                    return self
                time.sleep(0.25)
            else:
                self.stop()
                raise ServerError(
                    f"tritonserver not ready after {timeout_s:.0f}s (log {self.log_file}):\n"
                    f"{_tail(self.log_file)}"
                )
            last = _tail(self.log_file)
            self._proc = None
            # A port taken between free_port() and the bind: try again with new ports.
            if "ddress already in use" not in last and "Failed to start" not in last:
                break
        raise ServerError(f"tritonserver exited during start-up (log {self.log_file}):\n{last}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Terminate (SIGTERM, then SIGKILL after ``timeout_s``) and reap the process."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def is_ready(self) -> bool:
        return self._proc is not None and self._proc.poll() is None and _http_ready(self.http_url)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------------
# Detached server bookkeeping for the CLI / `make serve` / `make stop`.
# ---------------------------------------------------------------------------------------------------
def _state_file(state_dir: Path) -> Path:
    return state_dir / "server.json"


def _is_tritonserver(pid: int) -> bool:
    """Whether ``pid`` is alive and still a tritonserver (pids get reused)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0", 1)[0]
    except OSError:
        return False
    return argv0.endswith(b"tritonserver")


def read_state(state_dir: str | Path = DEFAULT_STATE_DIR) -> dict | None:
    """The running detached server's record (pid, urls, log), or None when none is running."""
    path = _state_file(Path(state_dir))
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(state, dict) or not _is_tritonserver(int(state.get("pid", -1))):
        return None
    return state


def start_detached(
    repository: str | Path,
    *,
    host: str = "127.0.0.1",
    http_port: int = 0,
    grpc_port: int = 0,
    metrics_port: int = 0,
    state_dir: str | Path = DEFAULT_STATE_DIR,
    timeout_s: float = 180.0,
) -> dict:
    """Start a server that outlives this process; record it under ``state_dir``. Refuses to start a
    second one (stop the first)."""
    state_dir = Path(state_dir)
    running = read_state(state_dir)
    if running is not None:
        raise ServerError(
            f"a server is already running (pid {running['pid']}, http {running['http_url']}); "
            "stop it first (make stop)"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir / "tritonserver.log"
    log.unlink(missing_ok=True)
    server = TritonServer(
        repository,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        log_file=log,
    )
    server.start(timeout_s=timeout_s, detach=True)
    state = {
        "pid": server.pid,
        "repository": str(server.repository),
        "host": host,
        "http_url": server.http_url,
        "grpc_url": server.grpc_url,
        "metrics_url": server.metrics_url,
        "log_file": str(log),
        "dali_backend": str(server.dali_backend) if server.dali_backend else None,
    }
    tmp = _state_file(state_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(_state_file(state_dir))
    # The Popen object goes away with this process; the server keeps running in its own session.
    server._proc = None
    return state


def stop_detached(state_dir: str | Path = DEFAULT_STATE_DIR, timeout_s: float = 30.0) -> int | None:
    """Stop the recorded server; returns its pid, or None when none was running."""
    state_dir = Path(state_dir)
    state = read_state(state_dir)
    _state_file(state_dir).unlink(missing_ok=True)
    if state is None:
        return None
    pid = int(state["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _is_tritonserver(pid):
        time.sleep(0.2)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    if _is_tritonserver(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pid


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``start`` (returns once ready, server keeps running), ``stop``, ``status``."""
    p = argparse.ArgumentParser(prog="python -m triton_models.server", description=__doc__.split("\n")[0])
    p.add_argument("action", choices=("start", "stop", "status"))
    p.add_argument("--repository", "-r", default="model_repository", help="model repository folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--http-port", type=int, default=0, help="0 = a free port")
    p.add_argument("--grpc-port", type=int, default=0, help="0 = a free port")
    p.add_argument("--metrics-port", type=int, default=0, help="0 = a free port")
    p.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="where the pid/state and log go")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    args = p.parse_args(argv)
    try:
        if args.action == "start":
            s = start_detached(
                args.repository,
                host=args.host,
                http_port=args.http_port,
                grpc_port=args.grpc_port,
                metrics_port=args.metrics_port,
                state_dir=args.state_dir,
                timeout_s=args.timeout,
            )
            print(f"tritonserver ready: pid {s['pid']}, repository {s['repository']}")
            print(f"  HTTP     {s['http_url']}")
            print(f"  gRPC     {s['grpc_url']}")
            print(f"  metrics  {s['metrics_url']}")
            print(f"  log      {s['log_file']}")
            if s["dali_backend"]:
                print(f"  dali     {s['dali_backend']} (Triton's dali backend, CPU-only build)")
            print(f"  state    {_state_file(Path(args.state_dir))}  (stop with: make stop)")
        elif args.action == "stop":
            pid = stop_detached(args.state_dir)
            print("no server running" if pid is None else f"tritonserver (pid {pid}) stopped")
        else:
            s = read_state(args.state_dir)
            if s is None:
                print("no server running")
                return 1
            ready = _http_ready(s["http_url"])
            word = "ready" if ready else "NOT ready"
            print(f"pid {s['pid']} {word}: http {s['http_url']} grpc {s['grpc_url']}")
            return 0 if ready else 1
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
