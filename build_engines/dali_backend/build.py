"""Build Triton's dali backend (``libtriton_dali.so``) CPU-only from pinned upstream sources.

    make dali-backend [DALI_BACKEND_SOURCES=DIR]
    python -m build_engines.dali_backend [--sources DIR] [--jobs N] [--force]

No wheel ships the dali backend, and the NGC container that does is not runnable here, so the gpu target's
DALI model is served on a CPU host by this build: the dali backend at a pinned commit, against the r24.10
Triton headers of the 2.51 server in the ``nvidia-pytriton`` wheel, linked to the environment's DALI
(``nvidia-dali-cuda120``), with ``TRITON_ENABLE_GPU=OFF``. The server launcher
(:mod:`triton_models.server`) loads it from :data:`~triton_models.server.DALI_BACKEND_LIBRARY`.

Like Triton's own ``build.py``:

- **pinned sources** (:data:`UPSTREAM`): each repository at a commit, from a ``git clone`` by default, or from
  a folder of source archives (``--sources``, checked against their SHA-256) on machines that cannot reach
  GitHub;
- **CMake options spelled out** (:func:`cmake_options`), and nothing downloaded during the build
  (``FETCHCONTENT_FULLY_DISCONNECTED``); the CUDA runtime pieces a CPU build still needs come from PyPI
  (``cpu_host.cmake`` says why);
- **patches as files with a reason each** (``patches/<repository>/*.patch``, in ``git format-patch`` form,
  applied in order): the unit tests left out (they need a submodule and a googletest download), a host copy
  that needs no CUDA driver, and a failed batch answered request by request;
- **cached by the hash of its inputs** (:func:`inputs_key`): commits, patches, options, header packages,
  DALI and compiler versions. An unchanged key means no rebuild; ``--force`` rebuilds anyway.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from triton_models.server import DALI_BACKEND_LIBRARY, ROOT

HERE = Path(__file__).resolve().parent
PATCHES = HERE / "patches"
CPU_HOST_CMAKE = HERE / "cpu_host.cmake"
OUT = DALI_BACKEND_LIBRARY.parent
MANIFEST = OUT / "manifest.json"
BUILD_LOG = OUT / "build.log"
TARGET = "triton-dali-backend"


class BackendBuildError(RuntimeError):
    """The backend could not be built; the message names the step, and the log's tail when there is one."""


@dataclass(frozen=True)
class Upstream:
    """One upstream repository at a pinned commit, and the source archive of that commit."""

    name: str  # folder name, and the patches/<name>/ folder
    url: str
    commit: str
    archive: str  # file name inside a --sources folder
    archive_sha256: str


UPSTREAM = (
    Upstream(
        "dali_backend",
        "https://github.com/triton-inference-server/dali_backend.git",
        "01783f8f28b2a29cb64b06201d9d7cc20db27f5d",
        "dali_backend-01783f8.tar.gz",
        "3a1606668b41c0348d766c26132198d09f2d9231e8872e635301c6b3cd46979b",
    ),
    # r24.10: the release of the Triton 2.51 server bundled in nvidia-pytriton 0.7.0 (backend API headers).
    Upstream(
        "backend",
        "https://github.com/triton-inference-server/backend.git",
        "ac03a5d97403dec841ad46d0439e93db12c9268f",
        "triton-backend-r24.10.tar.gz",
        "151da6fa28fbece76c7357a72e089768d4322e2382cce8b6b578424a82b4987a",
    ),
    Upstream(
        "core",
        "https://github.com/triton-inference-server/core.git",
        "bfec7c61dc0939433f64f14e89b1973073eac8ba",
        "triton-core-r24.10.tar.gz",
        "a77d172b45f5582fa6a089c894d003cdcd6e81f57d941a196eb4ca93ff7d8a63",
    ),
    Upstream(
        "common",
        "https://github.com/triton-inference-server/common.git",
        "578491fc3944f77d16a6a38e3d7691c485c47ba0",
        "triton-common-r24.10.tar.gz",
        "f8d42fac07949257d938261d3330ced625b33829ac02bac37fa837a4c6f6c57c",
    ),
)


@dataclass(frozen=True)
class HeaderWheel:
    """A PyPI wheel of which only an include folder is used (no CUDA toolkit is installed)."""

    name: str
    version: str
    include: str  # folder inside the wheel
    sha256: str


HEADER_WHEELS = (
    HeaderWheel(  # crt/*.h, included by the runtime headers
        "nvidia-cuda-nvcc-cu12",
        "12.9.86",
        "nvidia/cuda_nvcc/include",
        "5d6a0d32fdc7ea39917c20065614ae93add6f577d840233237ff08e9a38f58f0",
    ),
    HeaderWheel(  # nvtx3/, included by DALI's headers
        "nvidia-nvtx-cu12",
        "12.9.79",
        "nvidia/nvtx/include",
        "fec150986817f2b4e7eed72ed059f2dcb9ba3856b9a96134e448eac946a6952f",
    ),
)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def patch_files(name: str) -> list[Path]:
    """The patches for repository ``name``, in the order they apply."""
    return sorted((PATCHES / name).glob("*.patch"))


def cuda_runtime_dir() -> Path:
    """``nvidia/cuda_runtime`` of this environment (``libcudart.so.12`` and the runtime headers)."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia.cuda_runtime")
    if spec is None or not spec.submodule_search_locations:
        raise BackendBuildError("nvidia-cuda-runtime-cu12 is not installed here: run `make setup`")
    path = Path(next(iter(spec.submodule_search_locations)))
    if not (path / "lib" / "libcudart.so.12").is_file() or not (path / "include").is_dir():
        raise BackendBuildError(f"{path}: no lib/libcudart.so.12 or include/ (nvidia-cuda-runtime-cu12)")
    return path


def dali_version() -> str:
    """The DALI the backend links against (the environment's ``nvidia-dali-cuda120``)."""
    try:
        import nvidia.dali
    except ImportError as exc:
        raise BackendBuildError(f"DALI is not installed here ({exc}): run `make setup`") from exc
    return str(nvidia.dali.__version__)


def _first_line(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "missing"
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else "unknown"


# Configure options that are not paths (the paths follow in cmake_options); part of the cache key.
FIXED_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DTRITON_ENABLE_GPU=OFF",  # CPU host: KIND_CPU instances, no CUDA streams
    "-DTRITON_DALI_SKIP_DOWNLOAD=ON",  # the environment's DALI (found through `python3` on PATH)
    "-DTRITON_DALI_BUILD_TESTS=OFF",  # patch dali_backend/0001
    "-DTRITON_COMMON_ENABLE_TESTS=OFF",  # patch common/0001
    "-DFETCHCONTENT_FULLY_DISCONNECTED=ON",  # nothing is downloaded while building
)


def cmake_options(sources: dict[str, Path], cuda_include_dirs: Sequence[Path], cudart: Path) -> list[str]:
    """Every ``-D`` option of the configure step."""
    return [
        *FIXED_OPTIONS,
        f"-DFETCHCONTENT_SOURCE_DIR_REPO-COMMON={sources['common']}",
        f"-DFETCHCONTENT_SOURCE_DIR_REPO-CORE={sources['core']}",
        f"-DFETCHCONTENT_SOURCE_DIR_REPO-BACKEND={sources['backend']}",
        f"-DCMAKE_PROJECT_INCLUDE={CPU_HOST_CMAKE}",
        f"-DTIMESFORMER_CUDART_LIBRARY={cudart}",
        "-DTIMESFORMER_CUDA_INCLUDE_DIRS=" + ";".join(str(p) for p in cuda_include_dirs),
    ]


def inputs_key() -> tuple[str, dict]:
    """Hash of everything the library depends on, and the record it was computed from (the manifest)."""
    record = {
        "upstream": {u.name: u.commit for u in UPSTREAM},
        "patches": {
            f"{u.name}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
            for u in UPSTREAM
            for p in patch_files(u.name)
        },
        "cpu_host.cmake": hashlib.sha256(CPU_HOST_CMAKE.read_bytes()).hexdigest(),
        "options": list(FIXED_OPTIONS),
        "header_wheels": {w.name: w.version for w in HEADER_WHEELS},
        "dali": dali_version(),
        "cudart": sorted(p.name for p in (cuda_runtime_dir() / "lib").glob("libcudart.so*")),
        "compiler": _first_line(["c++", "--version"]),
        "cmake": _first_line(["cmake", "--version"]),
    }
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return key, record


def is_current() -> bool:
    """True when the built library exists and was built from exactly the current inputs."""
    if not DALI_BACKEND_LIBRARY.is_file() or not MANIFEST.is_file():
        return False
    try:
        return json.loads(MANIFEST.read_text()).get("key") == inputs_key()[0]
    except (OSError, ValueError, BackendBuildError):
        return False


def check_tools() -> None:
    """The build tools and the one system header library, each named with its Debian package."""
    missing = [
        f"{tool} (Debian: {pkg})"
        for tool, pkg in (("cmake", "cmake"), ("make", "make"), ("c++", "g++"), ("git", "git"))
        if shutil.which(tool) is None
    ]
    if not any(Path(p, "rapidjson", "rapidjson.h").is_file() for p in ("/usr/include", "/usr/local/include")):
        missing.append("RapidJSON headers (Debian: rapidjson-dev)")
    if missing:
        raise BackendBuildError("missing build prerequisites: " + ", ".join(missing))


def _run(
    cmd: Sequence[str], log: Path, *, cwd: Path | None = None, env: dict | None = None, step: str
) -> None:
    """Run ``cmd``, appending its output to ``log``; a failure raises with the step and the log's tail."""
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(map(str, cmd))}\n")
        f.flush()
        proc = subprocess.run(list(map(str, cmd)), cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise BackendBuildError(f"{step} failed (exit {proc.returncode}); the end of {log}:\n{tail}")


def fetch_sources(dest: Path, sources_dir: Path | None, log: Path) -> dict[str, Path]:
    """Each upstream repository at its commit under ``dest/<name>``: from ``sources_dir``'s archives (their
    SHA-256 checked) or a shallow fetch of the commit from GitHub."""
    out = {}
    for u in UPSTREAM:
        target = dest / u.name
        if sources_dir is not None:
            archive = sources_dir / u.archive
            if not archive.is_file():
                raise BackendBuildError(f"{archive}: missing (the source archive of {u.url} at {u.commit})")
            digest = _sha256(archive)
            if digest != u.archive_sha256:
                raise BackendBuildError(
                    f"{archive}: SHA-256 {digest} is not the pinned {u.archive_sha256} of {u.name} {u.commit}"
                )
            with tempfile.TemporaryDirectory(dir=dest) as tmp, tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
                tops = list(Path(tmp).iterdir())
                if len(tops) != 1 or not tops[0].is_dir():
                    raise BackendBuildError(f"{archive}: expected one top-level folder, found {len(tops)}")
                tops[0].rename(target)
        else:
            target.mkdir(parents=True)
            step = f"fetching {u.url} at {u.commit}"
            _run(["git", "init", "-q"], log, cwd=target, step=step)
            _run(["git", "fetch", "-q", "--depth", "1", u.url, u.commit], log, cwd=target, step=step)
            _run(["git", "checkout", "-q", "FETCH_HEAD"], log, cwd=target, step=step)
        out[u.name] = target
    return out


def apply_patches(sources: dict[str, Path], log: Path) -> list[str]:
    """Apply ``patches/<name>/*.patch`` to each source tree, in order; returns what was applied."""
    applied = []
    for name, tree in sources.items():
        # Never let git find an enclosing repository (this checkout): inside one, `git apply` silently
        # skips paths outside the current folder. A tree without .git is patched standalone.
        env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(tree.parent)}
        for patch in patch_files(name):
            step = f"applying {name}/{patch.name}"
            _run(["git", "apply", "--check", patch], log, cwd=tree, env=env, step=step)
            _run(["git", "apply", patch], log, cwd=tree, env=env, step=step)
            # Proof that it took: the patch now reverses cleanly.
            _run(["git", "apply", "--reverse", "--check", patch], log, cwd=tree, env=env, step=step)
            applied.append(f"{name}/{patch.name}")
    return applied


def header_dirs(dest: Path, log: Path) -> list[Path]:
    """Include folders of :data:`HEADER_WHEELS`, downloaded from PyPI (cached in ``build/``) and checked."""
    cache = OUT / "downloads"
    cache.mkdir(parents=True, exist_ok=True)
    dirs = []
    for w in HEADER_WHEELS:
        pattern = f"{w.name.replace('-', '_')}-{w.version}-*.whl"
        found = [p for p in cache.glob(pattern) if _sha256(p) == w.sha256]
        if not found:
            _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    "--disable-pip-version-check",
                    "-d",
                    cache,
                    f"{w.name}=={w.version}",
                ],
                log,
                step=f"downloading {w.name}=={w.version} (headers) from PyPI",
            )
            found = [p for p in cache.glob(pattern) if _sha256(p) == w.sha256]
            if not found:
                raise BackendBuildError(
                    f"{w.name}=={w.version}: no downloaded wheel has the pinned SHA-256 {w.sha256}"
                )
        with zipfile.ZipFile(found[0]) as z:
            members = [n for n in z.namelist() if n.startswith(w.include + "/")]
            z.extractall(dest / w.name, members)
        dirs.append(dest / w.name / w.include)
    return dirs


def build_backend(
    *, sources_dir: Path | None = None, jobs: int = 2, force: bool = False, log: Callable[[str], None] = print
) -> Path:
    """Build (or find up to date) :data:`~triton_models.server.DALI_BACKEND_LIBRARY`; returns its path."""
    key, record = inputs_key()
    if not force and is_current():
        log(f"dali-backend: {DALI_BACKEND_LIBRARY} is up to date (inputs {key[:12]})")
        return DALI_BACKEND_LIBRARY
    check_tools()
    OUT.mkdir(parents=True, exist_ok=True)
    BUILD_LOG.write_text(f"dali backend build, inputs {key}\n{json.dumps(record, indent=2)}\n")
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="work-", dir=OUT))
    try:
        where = f"archives in {sources_dir}" if sources_dir else "git (GitHub)"
        log(f"dali-backend: sources at pinned commits from {where}")
        sources = fetch_sources(work, sources_dir, BUILD_LOG)
        applied = apply_patches(sources, BUILD_LOG)
        log(f"dali-backend: applied {len(applied)} patches: {', '.join(applied)}")
        cuda = cuda_runtime_dir()
        includes = [cuda / "include", *header_dirs(work / "cuda", BUILD_LOG)]
        env = dict(os.environ)
        # The backend's dali.cmake asks `python3` for DALI's include and lib folders: this environment's.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        options = cmake_options(sources, includes, cuda / "lib" / "libcudart.so.12")
        log("dali-backend: configuring (CMake, TRITON_ENABLE_GPU=OFF)")
        _run(
            ["cmake", "-S", sources["dali_backend"], "-B", work / "build", *options],
            BUILD_LOG,
            env=env,
            step="cmake configure",
        )
        log(f"dali-backend: compiling {TARGET} with {jobs} jobs (log: {BUILD_LOG})")
        _run(
            ["cmake", "--build", work / "build", "--target", TARGET, "-j", str(jobs)],
            BUILD_LOG,
            env=env,
            step=f"building {TARGET}",
        )
        built = next((work / "build").rglob("libtriton_dali.so"), None)
        if built is None:
            raise BackendBuildError(f"the build finished without a libtriton_dali.so (see {BUILD_LOG})")
        tmp = DALI_BACKEND_LIBRARY.with_suffix(".so.tmp")
        shutil.copyfile(built, tmp)
        tmp.rename(DALI_BACKEND_LIBRARY)  # atomic: a running server keeps the old inode
        seconds = time.perf_counter() - t0
        MANIFEST.write_text(json.dumps({"key": key, "seconds": round(seconds, 1), **record}, indent=2) + "\n")
        log(f"dali-backend: built {DALI_BACKEND_LIBRARY} in {seconds:.0f}s (DALI {record['dali']})")
        return DALI_BACKEND_LIBRARY
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """CLI: exit 0 when the library is built or up to date, 2 when the build failed (the reason printed)."""
    p = argparse.ArgumentParser(
        prog="python -m build_engines.dali_backend", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--sources",
        type=Path,
        default=Path(os.environ["DALI_BACKEND_SOURCES"]) if os.environ.get("DALI_BACKEND_SOURCES") else None,
        help="folder of the upstream source archives (default: $DALI_BACKEND_SOURCES, else git clone)",
    )
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel compile jobs")
    p.add_argument("--force", action="store_true", help="rebuild even when the inputs are unchanged")
    args = p.parse_args(argv)
    sources = args.sources.resolve() if args.sources is not None else None
    if sources is not None and not sources.is_dir():
        print(f"error: --sources {args.sources}: not a folder", file=sys.stderr)
        return 2
    try:
        build_backend(sources_dir=sources, jobs=max(1, args.jobs), force=args.force)
    except BackendBuildError as exc:
        print(f"error: dali-backend: {exc}", file=sys.stderr)
        return 2
    return 0


__all__ = ["ROOT", "UPSTREAM", "BackendBuildError", "build_backend", "inputs_key", "is_current", "main"]
