"""A pool of Triton endpoints: which one gets the next request, and what happens when one goes away.

Policy:

- ``least-loaded`` sends to the up endpoint with the fewest requests in flight (ties: round-robin), which
  follows each server's real speed; ``round-robin`` cycles over up endpoints.
- A connection-level failure (refused/reset, UNAVAILABLE, HTTP 503) marks the endpoint *down* at once;
  other transient failures (timeouts) mark it down after ``max_consecutive_failures`` in a row. A down
  endpoint gets no requests; a probe task waits a cool-off (doubling from ``cooloff_s`` up to
  ``max_cooloff_s``), opens a *fresh* client (a gRPC channel that saw its server die may sit in its own
  reconnect backoff for a long time) and asks ``is_server_ready`` and ``is_model_ready``; success puts it
  back in rotation.
- When every endpoint has been down for longer than ``down_limit_s``, :meth:`EndpointPool.acquire` raises
  :class:`AllEndpointsDown` and the scorer stops (its output stays resumable).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from typing import Any

from clients.core import PROTOCOLS, make_client

BALANCE_POLICIES = ("least-loaded", "round-robin")


class AllEndpointsDown(RuntimeError):
    """Every endpoint stayed down beyond the limit."""


def normalize_url(url: str) -> str:
    """``http://host:port/`` -> ``host:port`` (tritonclient takes no scheme)."""
    u = url.strip()
    for scheme in ("http://", "https://", "grpc://"):
        if u.startswith(scheme):
            u = u[len(scheme) :]
    u = u.rstrip("/")
    host, sep, port = u.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--url {url!r}: expected host:port")
    return u


class Endpoint:
    """One server: its client, load and health."""

    def __init__(self, url: str, client: Any) -> None:
        self.url = url
        self.client = client
        self.in_flight = 0
        self.up = True
        self.consecutive_failures = 0
        self.downs = 0  # times marked down (for the summary)
        self.served = 0
        self.cooloff_s = 0.0
        self.probe_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Endpoint({self.url}, up={self.up}, in_flight={self.in_flight})"


class EndpointPool:
    """Chooses endpoints and tracks their health (see module doc). Single event loop, no locks needed."""

    def __init__(
        self,
        urls: list[str],
        *,
        protocol: str = "grpc",
        model: str,
        balance: str = "least-loaded",
        down_limit_s: float = 60.0,
        cooloff_s: float = 0.5,
        max_cooloff_s: float = 5.0,
        probe_timeout_s: float = 2.0,
        max_consecutive_failures: int = 3,
        client_factory: Callable[[str], Any] | None = None,
        log: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        if not urls:
            raise ValueError("at least one --url is needed")
        if balance not in BALANCE_POLICIES:
            raise ValueError(f"--balance must be one of {BALANCE_POLICIES}, got {balance!r}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"--protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.protocol = protocol
        self.model = model
        self.balance = balance
        self.down_limit_s = down_limit_s
        self.cooloff_s = cooloff_s
        self.max_cooloff_s = max_cooloff_s
        self.probe_timeout_s = probe_timeout_s
        self.max_consecutive_failures = max_consecutive_failures
        self._factory = client_factory or (lambda url: make_client(url, protocol, aio=True))
        self.endpoints = [
            Endpoint(u, self._factory(u)) for u in dict.fromkeys(normalize_url(u) for u in urls)
        ]
        self._rr = itertools.cycle(range(len(self.endpoints)))
        self._changed = asyncio.Event()
        self._all_down_since: float | None = None
        self.last_error = ""
        self._log = log

    # -- choice --------------------------------------------------------------------------------------

    def _pick(self, avoid: Endpoint | None) -> Endpoint | None:
        up = [e for e in self.endpoints if e.up]
        if len(up) > 1 and avoid is not None:
            up = [e for e in up if e is not avoid] or up
        if not up:
            return None
        # Rotate the start so ties (least-loaded) and plain cycling (round-robin) share one counter.
        start = next(self._rr)
        order = self.endpoints[start:] + self.endpoints[:start]
        ranked = [e for e in order if e in up]
        if self.balance == "round-robin":
            return ranked[0]
        return min(ranked, key=lambda e: e.in_flight)

    async def acquire(self, avoid: Endpoint | None = None) -> Endpoint:
        """An up endpoint for one request (its in-flight count is raised; call :meth:`release`).
        Waits while all are down; raises :class:`AllEndpointsDown` past ``down_limit_s``."""
        while True:
            ep = self._pick(avoid)
            if ep is not None:
                ep.in_flight += 1
                return ep
            since = self._all_down_since or time.monotonic()
            left = self.down_limit_s - (time.monotonic() - since)
            if left <= 0:
                raise AllEndpointsDown(
                    f"all {len(self.endpoints)} endpoint(s) down for more than {self.down_limit_s:g} s "
                    f"(last error: {self.last_error or 'not ready'})"
                )
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(left, 1.0))

    def release(self, ep: Endpoint, *, ok: bool, down: bool = False, error: str = "") -> None:
        """Report the outcome of a request sent to ``ep``. ``ok=False`` is a transient failure;
        ``down`` says it was connection-level (take ``ep`` out at once)."""
        ep.in_flight -= 1
        if ok:
            ep.consecutive_failures = 0
            ep.served += 1
            return
        ep.consecutive_failures += 1
        self.last_error = f"{ep.url}: {error}" if error else self.last_error
        if ep.up and (down or ep.consecutive_failures >= self.max_consecutive_failures):
            self.mark_down(ep, error)

    def mark_down(self, ep: Endpoint, reason: str = "") -> None:
        """Take ``ep`` out of rotation and start probing it back."""
        if not ep.up:
            return
        ep.up = False
        ep.downs += 1
        ep.cooloff_s = self.cooloff_s
        self._log(f"endpoint {ep.url} down ({reason or 'not ready'}); probing it back")
        if not any(e.up for e in self.endpoints):
            self._all_down_since = time.monotonic()
        if ep.probe_task is None or ep.probe_task.done():
            ep.probe_task = asyncio.get_running_loop().create_task(self._probe(ep))

    def _mark_up(self, ep: Endpoint) -> None:
        ep.up = True
        ep.consecutive_failures = 0
        self._all_down_since = None
        self._changed.set()

    async def _probe(self, ep: Endpoint) -> None:
        while not ep.up:
            await asyncio.sleep(ep.cooloff_s)
            ep.cooloff_s = min(self.max_cooloff_s, ep.cooloff_s * 2)
            # A fresh client: the old channel may be parked in its own reconnect backoff.
            old, ep.client = ep.client, self._factory(ep.url)
            await _close_quietly(old)
            if await self.is_ready(ep):
                self._log(f"endpoint {ep.url} back up")
                self._mark_up(ep)

    async def is_ready(self, ep: Endpoint) -> bool:
        """Server and model ready, within ``probe_timeout_s``."""

        async def ask() -> bool:
            return bool(await ep.client.is_server_ready()) and bool(
                await ep.client.is_model_ready(self.model)
            )

        try:
            return await asyncio.wait_for(ask(), timeout=self.probe_timeout_s)
        except Exception as exc:  # any failure to answer is "not ready"
            self.last_error = f"{ep.url}: {type(exc).__name__}: {exc}"
            return False

    async def start(self) -> None:
        """Check every endpoint once; the ones not ready start down (and are probed)."""
        ready = await asyncio.gather(*(self.is_ready(e) for e in self.endpoints))
        for ep, ok in zip(self.endpoints, ready):
            if not ok:
                self.mark_down(ep, self.last_error or "not ready")

    async def close(self) -> None:
        """Stop probing and close every client."""
        for ep in self.endpoints:
            if ep.probe_task is not None:
                ep.probe_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ep.probe_task
            await _close_quietly(ep.client)


async def _close_quietly(client: Any) -> None:
    with contextlib.suppress(Exception):
        await client.close()
