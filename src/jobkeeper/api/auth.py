"""API keys: ``Authorization: Bearer <key>``, each key bound to one tenant, stored hashed.

Keys are 256-bit random tokens (``jk_...``); only their SHA-256 is stored, with a short prefix
to name them. A replica trusts a verified key for ``key_cache_ttl`` seconds (so a revocation takes
effect within that time) to keep the database off the hot read path.
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
        self._verified: TTLCache[str, str] | None = (
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

    async def tenant_of(self, authorization: str | None) -> str:
        """The tenant of a ``Bearer`` key; ``ApiProblem("unauthorized")`` otherwise."""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiProblem("unauthorized", "send Authorization: Bearer <api key>")
        return await self.tenant_of_digest(hash_key(key.strip()))

    async def tenant_of_digest(self, digest: str) -> str:
        """The tenant of the key whose SHA-256 is ``digest`` (a dashboard session holds only
        that); ``ApiProblem("unauthorized")`` for an unknown or revoked key."""
        if self._verified is not None:
            tenant = self._verified.get(digest)
            if tenant is not None:
                return tenant
        tenant = await self._store.tenant_for(digest)
        if tenant is None:
            raise ApiProblem("unauthorized", "unknown or revoked API key")
        if self._verified is not None:
            self._verified[digest] = tenant
        return tenant
