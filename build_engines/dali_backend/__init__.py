"""Triton's dali backend built CPU-only from pinned upstream sources (:mod:`.build`), with its patches."""

from build_engines.dali_backend.build import BackendBuildError, build_backend, inputs_key, is_current

__all__ = ["BackendBuildError", "build_backend", "inputs_key", "is_current"]
