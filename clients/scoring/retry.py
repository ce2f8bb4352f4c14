"""Failure classification and backoff for scoring requests.

A failure is either *transient* (the server or network, not the video: retry, maybe elsewhere) or
*permanent* (the video itself is bad: write an error row). ``endpoint_down`` marks transient failures that
say the endpoint itself is gone (connection refused/reset, UNAVAILABLE, 503), as opposed to one slow
request (a timeout), so the pool can take the endpoint out of rotation at once.
"""

from __future__ import annotations

import asyncio
import random
import re
from dataclasses import dataclass

# gRPC status codes (as tritonclient prints them: "StatusCode.X").
_GRPC_DOWN = {"UNAVAILABLE", "CANCELLED", "ABORTED"}
_GRPC_TRANSIENT = _GRPC_DOWN | {"DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "UNKNOWN"}
# Messages that mean "this server is not serving the model right now" (shutting down, unloading,
# reloading) whatever status carries them -- over HTTP an unloaded model is a plain 400.
_DOWN_MARKERS = (
    "unknown model",
    "has no available versions",
    "server is stopping",
    "server exiting",
    "stopped accepting new inference requests",
)
# Server-side messages that mean "this instance is unwell", not "this input is bad".
_TRANSIENT_MARKERS = (
    "stub process is not healthy",
    "unavailable",
    "connection reset",
    "connection refused",
    "socket closed",
    "broken pipe",
    "server is shutting down",
    "failed to connect",
    "is not ready",
    "timed out",
    "timeout",
)


# DALI's decoder failing on a video (the gpu target's dali model): the input is bad, whatever the status
# (the dali backend reports it as UNKNOWN). This project's dali backend runs a failed batch's requests one
# by one, so the error reaches only the request whose video failed.
_DALI_INPUT_ERROR = re.compile(r"error in (cpu|gpu|mixed) operator `nvidia\.dali\.fn\.decoders\.")


@dataclass(frozen=True)
class Failure:
    """A classified failure: ``reason`` is the one line written into an error row or the log."""

    transient: bool
    endpoint_down: bool
    reason: str


def triage(exc: BaseException) -> Failure:
    """Sort an exception raised by a request into transient/permanent (see module doc)."""
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return Failure(True, False, "timeout: no response within the request timeout")
    if isinstance(exc, ConnectionError | OSError):
        return Failure(True, True, f"connection error: {type(exc).__name__}: {exc}")
    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        msg = " ".join(str(exc.message() or "").split())
        low = msg.lower()
        code = status.removeprefix("StatusCode.")
        reason = f"{code or 'error'}: {msg}" if msg else code or "error"
        if code == "NOT_FOUND" or any(m in low for m in _DOWN_MARKERS):
            return Failure(True, True, reason)
        if _DALI_INPUT_ERROR.search(low) and "out of memory" not in low:
            return Failure(False, False, reason)
        if code in _GRPC_TRANSIENT:
            return Failure(True, code in _GRPC_DOWN, reason)
        if code.isdigit():  # HTTP status
            http = int(code)
            if http in (502, 503, 504) or (http >= 500 and any(m in low for m in _TRANSIENT_MARKERS)):
                return Failure(True, http in (502, 503), reason)
            if http == 429:
                return Failure(True, False, reason)
            return Failure(False, False, reason)
        if code == "INTERNAL" and any(m in low for m in _TRANSIENT_MARKERS):
            return Failure(True, False, reason)
        if not code and any(m in low for m in _TRANSIENT_MARKERS):
            # The HTTP client wraps connection failures without a status.
            return Failure(True, True, reason)
        return Failure(False, False, reason)
    try:  # aiohttp's connection/payload errors (HTTP protocol)
        import aiohttp

        if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ServerDisconnectedError):
            return Failure(True, True, f"connection error: {type(exc).__name__}: {exc}")
        if isinstance(exc, aiohttp.ClientError):
            return Failure(True, False, f"http client error: {type(exc).__name__}: {exc}")
    except ImportError:  # pragma: no cover - aiohttp ships with tritonclient[http]
        pass
    return Failure(False, False, f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**(n-1)))
    seconds, so many clients retrying together spread out instead of hitting a recovering server at once."""

    base_s: float = 0.2
    cap_s: float = 10.0

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.cap_s < self.base_s:
            raise ValueError(f"backoff needs 0 < base ({self.base_s}) <= cap ({self.cap_s})")

    def ceiling(self, attempt: int) -> float:
        """Upper bound of the wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.cap_s, self.base_s * 2 ** max(0, min(attempt - 1, 60)))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait after failed attempt ``attempt``."""
        return (rng or random).uniform(0.0, self.ceiling(attempt))
