"""API keys: ``Authorization: Bearer <key>``, each key bound to one tenant, stored hashed.

Keys are 256-bit random tokens (``jk_...``); only their SHA-256 is stored, with a short prefix
to name them. A replica trusts a verified key for ``key_cache_ttl`` seconds from its check
against the database (so a revocation takes effect within that time) to keep the database off
the hot read path; within that time a token it has seen is not even hashed again.

A verified key is the ``Caller`` of its tenant with principal ``api-key:<key id>``: the key's
UUID, which names it in ``answered_by``, ``cancelled_by`` and the history without revealing any
part of the token.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from jobkeeper.api.problems import ApiProblem
from jobkeeper.domain.values import Caller
from jobkeeper.manager import JobManager

__all__ = ["ApiKeys", "NewKey", "hash_key"]

_PREFIX_CHARS = 10
_TRUSTED_MAX = 10_000  # keys (and tokens) trusted at once


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key as created: ``key`` is shown once and never stored."""

    id: uuid.UUID
    tenant: str
    key: str
    prefix: str


class _Trusted:
    """Callers by key, each trusted until its own deadline (``time.monotonic``), at most
    ``_TRUSTED_MAX`` at once (when full, the expired go, else the oldest)."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[Caller, float]] = {}

    def get(self, key: str) -> tuple[Caller, float] | None:
        entry = self._entries.get(key)
        if entry is not None and entry[1] <= time.monotonic():
            del self._entries[key]
            return None
        return entry

    def put(self, key: str, caller: Caller, until: float) -> None:
        if len(self._entries) >= _TRUSTED_MAX:
            now = time.monotonic()
            for stale in [k for k, (_, deadline) in self._entries.items() if deadline <= now]:
                del self._entries[stale]
            if len(self._entries) >= _TRUSTED_MAX:
                del self._entries[next(iter(self._entries))]
        self._entries[key] = (caller, until)


class ApiKeys:
    """Creates, revokes and verifies API keys."""

    def __init__(self, jobs: JobManager, *, cache_ttl: float = 10.0) -> None:
        self._store = jobs.keys
        self._ttl = cache_ttl
        # by digest (as checked against the store) and by token (the same entry's deadline:
        # a token is never trusted longer than its key's check allows)
        self._by_digest = _Trusted()
        self._by_token = _Trusted()

    async def create(self, tenant: str, label: str | None = None) -> NewKey:
        key = "jk_" + secrets.token_urlsafe(32)
        new = NewKey(uuid.uuid4(), tenant, key, key[:_PREFIX_CHARS])
        await self._store.create(
            new.id, tenant=tenant, key_hash=hash_key(key), prefix=new.prefix, label=label
        )
        return new

    async def revoke(self, prefix: str) -> bool:
        return await self._store.revoke(prefix)

    async def list(self, tenant: str | None = None) -> list[dict[str, Any]]:
        return await self._store.list(tenant)

    async def caller_of(self, key: str | None) -> Caller:
        """Who a ``Bearer`` key (the token alone) stands for; ``ApiProblem("unauthorized")`` if
        it is missing, unknown or revoked."""
        if not key or not key.strip():
            raise ApiProblem("unauthorized", "send Authorization: Bearer <api key>")
        known = self._by_token.get(key)
        if known is not None:
            return known[0]
        caller, until = await self._verified(hash_key(key.strip()))
        if self._ttl > 0:
            self._by_token.put(key, caller, until)
        return caller

    async def caller_of_digest(self, digest: str) -> Caller:
        """Who the key whose SHA-256 is ``digest`` stands for (a dashboard session holds only
        that); ``ApiProblem("unauthorized")`` for an unknown or revoked key."""
        return (await self._verified(digest))[0]

    async def _verified(self, digest: str) -> tuple[Caller, float]:
        """The caller of ``digest`` and until when it is trusted: checked against the store at
        most once per ``cache_ttl``."""
        known = self._by_digest.get(digest)
        if known is not None:
            return known
        checked = time.monotonic()  # before the query: a revocation after it counts from here
        live = await self._store.live(digest)
        if live is None:
            raise ApiProblem("unauthorized", "unknown or revoked API key")
        key_id, tenant = live
        caller = Caller(tenant=tenant, principal=f"api-key:{key_id}")
        until = checked + self._ttl
        if self._ttl > 0:
            self._by_digest.put(digest, caller, until)
        return caller, until
