"""The two images, checked statically (no image can be built here): pinned bases, pinned packages, a
health check each, a non-root user for the cpu image, every COPY source present, the gpu image on the
one pinned Triton release."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from build_engines.container import CUDA_VERSION, TRITON_IMAGE, TRITON_RELEASE

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("name", ["Dockerfile.gpu", "Dockerfile.cpu"])
def test_images_are_pinned_and_checked(name: str) -> None:
    ins = _instructions(DOCKER / name)
    bases = [rest.split()[0] for word, rest in ins if word == "FROM"]
    assert bases
    for base in bases:
        repo, _, tag = base.partition(":")
        assert tag and tag != "latest" and re.search(r"\d", tag), base
    assert any(word == "HEALTHCHECK" and "/v2/health/ready" in rest for word, rest in ins)
    for word, rest in ins:
        if word == "RUN" and "pip install" in rest:
            quoted = re.findall(r'"([^"]+)"', rest.split("&&")[0])
            for req in quoted:
                assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][^\s]*", req), f"unpinned {req!r} in {name}"
            assert "-r requirements.txt" in rest or quoted, rest
        if word == "COPY" and "--from=" not in rest:
            sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
            for s in sources:
                if "$" in s or s.startswith("model_repository"):
                    continue  # build arguments / a repository generated before the build
                assert (ROOT / s).exists(), f"{name}: COPY source {s} missing"


def test_gpu_image_is_the_pinned_release_and_its_entrypoint_parses() -> None:
    ins = _instructions(DOCKER / "Dockerfile.gpu")
    # Both stages (this project's dali backend, then the serving image) on the one pinned release.
    assert [rest.split()[0] for word, rest in ins if word == "FROM"] == [TRITON_IMAGE, TRITON_IMAGE]
    assert ("ARG", f"TRITON_RELEASE={TRITON_RELEASE}") in ins
    assert CUDA_VERSION.startswith(
        "13."
    )  # 26.x containers are CUDA 13: the builder looks for libcudart.so.13
    script = DOCKER / "gpu_entrypoint.sh"
    assert script.stat().st_mode & 0o111
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert (
        "build_engines.dali_model" in text
        and "build_engines.tensorrt" in text
        and "exec tritonserver" in text
    )


def test_cpu_image_runs_as_a_non_root_user_without_torch() -> None:
    ins = _instructions(DOCKER / "Dockerfile.cpu")
    stages = [i for i, (word, _) in enumerate(ins) if word == "FROM"]
    final = ins[stages[-1] :]
    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    installs = " ".join(rest for word, rest in final if word == "RUN")
    assert "torch" not in installs and "requirements.txt" not in installs


def test_gpu_image_serves_this_projects_dali_backend() -> None:
    """The gpu image replaces the container's dali backend with the pinned commit plus this project's
    patches (a failed batch answered request by request), built at the DALI version the suite runs."""
    from build_engines.dali_backend.build import UPSTREAM, patch_files

    ins = _instructions(DOCKER / "Dockerfile.gpu")
    pinned = next(u for u in UPSTREAM if u.name == "dali_backend")
    assert ("ARG", f"DALI_BACKEND_COMMIT={pinned.commit}") in ins
    runs = " ".join(rest for word, rest in ins if word == "RUN")
    assert (
        "git apply" in runs and "-DTRITON_ENABLE_GPU=ON" in runs and "-DTRITON_DALI_BUILD_TESTS=OFF" in runs
    )
    copies = [rest for word, rest in ins if word == "COPY"]
    assert "build_engines/dali_backend/patches/dali_backend/ /patches/" in copies
    assert any(
        c.startswith("--from=dali-backend") and "/opt/tritonserver/backends/dali/" in c for c in copies
    )
    assert [p.name for p in patch_files("dali_backend")]  # the patches the image applies exist
    import nvidia.dali

    assert ("ARG", f"DALI_VERSION={nvidia.dali.__version__}") in ins
