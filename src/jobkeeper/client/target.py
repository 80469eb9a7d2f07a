"""Where a client sends its requests and how: the base URL (with any mount prefix), credentials,
timeouts and the reconnect policy of event streams, the same for the async and the sync client."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypedDict, TypeVar, Unpack

import httpx

from jobkeeper.client.calls import Call

__all__ = ["DEFAULT_TIMEOUT", "ClientOptions", "Connection", "Reconnect", "Target"]

DEFAULT_TIMEOUT = 10.0
# the server pings every 15 s: three missed pings and a stream counts as dropped
DEFAULT_STREAM_TIMEOUT = 45.0
RECONNECT_ATTEMPTS, RECONNECT_BACKOFF, MAX_BACKOFF = 8, 0.25, 5.0
H = TypeVar("H", httpx.Client, httpx.AsyncClient)


class ClientOptions(TypedDict, total=False):
    """Keywords of ``AsyncJobClient`` and ``JobClient`` besides ``base_url`` and ``http``.

    - ``api_key``: sent as ``Authorization: Bearer <api_key>``.
    - ``headers``: sent with every request (after the ``http`` client's own).
    - ``auth``: an ``httpx.Auth`` for every request, e.g. the host application's own scheme.
    - ``timeout``: seconds (or an ``httpx.Timeout``) per request; default: the ``http``
      client's, else 10 s.
    - ``stream_timeout``: the longest silence on an event stream before it counts as dropped
      (45 s; the server pings every 15 s).
    - ``reconnect_attempts``: how many times in a row an event stream may fail to reconnect
      before ``events`` gives up (8); every event received starts the count again.
    - ``reconnect_backoff``: the first pause before reconnecting, doubled after each failure up
      to 5 s, with jitter (0.25 s).
    """

    api_key: str | None
    headers: Mapping[str, str] | None
    auth: httpx.Auth | None
    timeout: float | httpx.Timeout | None
    stream_timeout: float
    reconnect_attempts: int
    reconnect_backoff: float


@dataclass(frozen=True, slots=True)
class Reconnect:
    """How an event stream reconnects: ``attempts`` failures in a row at most, the first pause
    ``backoff`` seconds, doubled each time up to ``max_backoff``."""

    attempts: int
    backoff: float
    max_backoff: float = MAX_BACKOFF

    def pause(self, failures: int, jitter: float) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (``jitter`` in [0, 1))."""
        return min(self.backoff * 2.0 ** (failures - 1), self.max_backoff) * (0.5 + jitter / 2)


@dataclass(frozen=True, slots=True)
class Target:
    """The resolved options of one client."""

    base: str
    headers: Mapping[str, str]
    auth: httpx.Auth | None
    timeout: httpx.Timeout
    stream_timeout: httpx.Timeout
    reconnect: Reconnect

    @classmethod
    def of(
        cls,
        base_url: str | httpx.URL | None,
        http: httpx.Client | httpx.AsyncClient | None,
        options: ClientOptions,
    ) -> Target:
        """Resolve ``options``; ``base_url`` defaults to the ``http`` client's."""
        base = str(base_url or (http.base_url if http is not None else "")).rstrip("/")
        if not base:
            raise ValueError("a base_url is required (or an http client that has one)")
        headers = dict(options.get("headers") or {})
        if api_key := options.get("api_key"):
            headers["Authorization"] = f"Bearer {api_key}"
        given = options.get("timeout")
        if given is not None:
            timeout = httpx.Timeout(given)
        else:
            timeout = http.timeout if http is not None else httpx.Timeout(DEFAULT_TIMEOUT)
        stream = httpx.Timeout(
            connect=timeout.connect,
            read=options.get("stream_timeout", DEFAULT_STREAM_TIMEOUT),
            write=timeout.write,
            pool=timeout.pool,
        )
        reconnect = Reconnect(
            options.get("reconnect_attempts", RECONNECT_ATTEMPTS),
            options.get("reconnect_backoff", RECONNECT_BACKOFF),
        )
        return cls(base, headers, options.get("auth"), timeout, stream, reconnect)

    def request(
        self, http: httpx.Client | httpx.AsyncClient, call: Call[Any], *, stream: bool = False
    ) -> httpx.Request:
        """``call`` as a request under the base URL, with this target's headers and timeout
        (an event stream's read timeout is ``stream_timeout``)."""
        return http.build_request(
            call.method,
            self.base + call.path,
            params=call.params,
            json=call.body,
            headers={**self.headers, **call.headers},
            timeout=self.stream_timeout if stream else self.timeout,
        )


class Connection(ABC, Generic[H]):
    """The construction both clients share (see ``AsyncJobClient``): the resolved ``Target``,
    the httpx client, and whether closing is this client's job."""

    def __init__(
        self,
        base_url: str | httpx.URL | None = None,
        *,
        http: H | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        self._target = Target.of(base_url, http, options)
        self._owns_http = http is None
        self._http: H = self._new_http() if http is None else http
        self._auth = self._target.auth or httpx.USE_CLIENT_DEFAULT

    @abstractmethod
    def _new_http(self) -> H:
        """The httpx client to make when none was given."""

    def _request(self, call: Call[Any], *, stream: bool = False) -> httpx.Request:
        return self._target.request(self._http, call, stream=stream)
