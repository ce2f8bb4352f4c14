"""The dali backend build: cached by the hash of its inputs, sources checked, failures named."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from build_engines.dali_backend import build

ROOT = Path(__file__).resolve().parents[2]


def test_the_built_library_is_current_and_a_second_build_is_instant(capsys) -> None:
    """``make test`` builds the backend first; building again finds it up to date and does nothing."""
    assert build.is_current(), "run `make dali-backend`"
    before = build.DALI_BACKEND_LIBRARY.stat().st_mtime_ns
    messages: list[str] = []
    assert build.build_backend(log=messages.append) == build.DALI_BACKEND_LIBRARY
    assert "up to date" in messages[0]
    assert build.DALI_BACKEND_LIBRARY.stat().st_mtime_ns == before


def test_the_cache_key_follows_every_patch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key, record = build.inputs_key()
    assert set(record["upstream"]) == {"dali_backend", "backend", "core", "common"}
    assert record["patches"] and all(len(h) == 64 for h in record["patches"].values())
    patches = shutil.copytree(build.PATCHES, tmp_path / "patches")
    monkeypatch.setattr(build, "PATCHES", patches)
    assert build.inputs_key()[0] == key  # same bytes, same key
    target = sorted((patches / "dali_backend").glob("*.patch"))[-1]
    target.write_text(target.read_text() + "\n")
    assert build.inputs_key()[0] != key
    assert not build.is_current()


def test_every_patch_says_why_in_its_message() -> None:
    for name in ("dali_backend", "common"):
        for patch in build.patch_files(name):
            head = patch.read_text().split("\n---\n", 1)[0]
            subject = next(line for line in head.splitlines() if line.startswith("Subject: "))
            body = head.split(subject, 1)[1].strip()
            assert len(body.split()) > 20, f"{patch.name}: the message must say why"


def _tarball(path: Path, top: str) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(f"{top}/README.md")
        data = b"not the pinned snapshot\n"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_source_archives_are_checked_against_their_pins(tmp_path: Path) -> None:
    sources = tmp_path / "sources"
    sources.mkdir()
    dest = tmp_path / "work"
    dest.mkdir()
    with pytest.raises(build.BackendBuildError, match="dali_backend-01783f8.tar.gz: missing"):
        build.fetch_sources(dest, sources, tmp_path / "log")
    _tarball(sources / build.UPSTREAM[0].archive, "dali_backend")
    with pytest.raises(build.BackendBuildError, match="SHA-256 .* is not the pinned"):
        build.fetch_sources(dest, sources, tmp_path / "log")


def test_a_patch_that_does_not_apply_is_named(tmp_path: Path) -> None:
    tree = tmp_path / "dali_backend"
    tree.mkdir()
    (tree / "CMakeLists.txt").write_text("project(other)\n")
    with pytest.raises(build.BackendBuildError, match="applying dali_backend/0001-build-without-unit-tests"):
        build.apply_patches({"dali_backend": tree}, tmp_path / "log")


def test_the_cli_refuses_a_missing_sources_folder(tmp_path: Path, capsys) -> None:
    assert build.main(["--sources", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err
