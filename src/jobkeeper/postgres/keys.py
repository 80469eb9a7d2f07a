"""API keys: stored by hash, looked up by hash, revoked by their public prefix."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from jobkeeper.postgres.compile import raw
from jobkeeper.postgres.pool import Database

__all__ = ["KeyStatements"]

_CREATE = raw(
    "INSERT INTO api_keys (id, tenant, key_hash, prefix, label) VALUES ($1, $2, $3, $4, $5)",
    "id",
    "tenant",
    "key_hash",
    "prefix",
    "label",
)
_LIVE = raw(
    "SELECT id, tenant FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", "key_hash"
)
_REVOKE = raw(
    "UPDATE api_keys SET revoked_at = now() WHERE prefix = $1 AND revoked_at IS NULL RETURNING id",
    "prefix",
)
_LIST = raw(
    "SELECT id, tenant, prefix, label, created_at, revoked_at FROM api_keys"
    " WHERE $1::text IS NULL OR tenant = $1 ORDER BY created_at",
    "tenant",
)


class KeyStatements:
    """The statements above, run on one ``Database``."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def create(
        self, key_id: UUID, *, tenant: str, key_hash: str, prefix: str, label: str | None
    ) -> None:
        params = {
            "id": key_id,
            "tenant": tenant,
            "key_hash": key_hash,
            "prefix": prefix,
            "label": label,
        }
        await self._db.rows(_CREATE, params, read=False)

    async def live(self, key_hash: str) -> tuple[UUID, str] | None:
        """The id and tenant of a live (not revoked) key, by the key's hash."""
        rows = await self._db.rows(_LIVE, {"key_hash": key_hash}, read=True)
        return (rows[0]["id"], rows[0]["tenant"]) if rows else None

    async def revoke(self, prefix: str) -> bool:
        """Revoke the live key with this prefix; ``False`` if there is none."""
        return bool(await self._db.rows(_REVOKE, {"prefix": prefix}, read=False))

    async def list(self, tenant: str | None) -> list[dict[str, Any]]:
        rows = await self._db.rows(_LIST, {"tenant": tenant}, read=True)
        return [dict(r) for r in rows]
