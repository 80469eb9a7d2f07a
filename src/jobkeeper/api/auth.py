"""API keys: ``Authorization: Bearer <key>``, each key bound to one tenant, stored hashed.

Keys are 256-bit random tokens (``jk_...``); only their SHA-256 is stored, with a short prefix
to name them. A replica trusts a verified key for ``key_cache_ttl`` seconds (so a revocation takes
effect within that time) to keep the database off the hot read path.

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

from cachetools import TTLCache

from jobkeeper.api.problems import ApiProblem
from jobkeeper.domain.values import Caller
from jobkeeper.manager import JobManager

__all__ = ["ApiKeys", "NewKey", "hash_key"]

_PREFIX_CHARS = 10


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key as created: ``key`` is shown once and never stored."""

    id: uuid.UUID
    tenant: str
    key: str
    prefix: str


class ApiKeys:
    """Creates, revokes and verifies API keys."""

    def __init__(self, jobs: JobManager, *, cache_ttl: float = 10.0) -> None:
        self._store = jobs.keys
        self._verified: TTLCache[str, Caller] | None = (
            TTLCache(maxsize=10_000, ttl=cache_ttl, timer=time.monotonic) if cache_ttl > 0 else None
        )

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
        return await self.caller_of_digest(hash_key(key.strip()))

    async def caller_of_digest(self, digest: str) -> Caller:
        """Who the key whose SHA-256 is ``digest`` stands for (a dashboard session holds only
        that); ``ApiProblem("unauthorized")`` for an unknown or revoked key."""
        if self._verified is not None:
            known = self._verified.get(digest)
            if known is not None:
                return known
        live = await self._store.live(digest)
        if live is None:
            raise ApiProblem("unauthorized", "unknown or revoked API key")
        key_id, tenant = live
        caller = Caller(tenant=tenant, principal=f"api-key:{key_id}")
        if self._verified is not None:
            self._verified[digest] = caller
        return caller
