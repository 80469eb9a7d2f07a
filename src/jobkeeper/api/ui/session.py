"""Who uses the dashboard of ``jobkeeper serve``: an API key entered once, kept as a signed cookie.

The sign-in page posts the key (in the body, never a URL); the server verifies it and sets a
cookie holding the key's SHA-256 (what the database stores, never the key) and an expiry, signed
with HMAC-SHA256 under ``JOBKEEPER_UI_SECRET``. Every request verifies the signature and asks
``ApiKeys`` who that digest stands for (cached like a Bearer key: the same ``Caller``, principal
``api-key:<key id>``), so a revoked key signs its sessions out within ``key_cache_ttl``. The
cookie is HttpOnly, SameSite=Strict and Secure over https; state-changing requests also need the
``X-Jobkeeper-UI`` header, which no cross-site form can send (``require_ui_header``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from jobkeeper.api.auth import hash_key
from jobkeeper.api.deps import ANONYMOUS, DEV_TENANT, Services, ServicesDep
from jobkeeper.api.problems import ApiProblem
from jobkeeper.domain.values import Caller

__all__ = [
    "COOKIE",
    "UI_HEADER",
    "KeySessions",
    "RequireUiHeader",
    "SessionSigner",
    "require_ui_header",
    "sign_out",
]

COOKIE = "jobkeeper_ui"
# sent by the dashboard's own scripts with every state-changing request: a cross-site form cannot
# set a header, and a cross-site fetch with one needs a CORS preflight this server never grants
UI_HEADER = "X-Jobkeeper-UI"


class SessionSigner:
    """Signs and verifies session cookies with one secret (random per process when none)."""

    def __init__(self, secret: str | None, ttl: float) -> None:
        self._key = (secret or secrets.token_urlsafe(32)).encode()
        self.ttl = ttl

    def sign(self, digest: str) -> str:
        body = json.dumps({"d": digest, "e": int(time.time() + self.ttl)})
        encoded = base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
        return f"{encoded}.{self._mac(encoded)}"

    def verify(self, cookie: str) -> str | None:
        """The key digest of a valid, unexpired cookie, else ``None``."""
        encoded, _, mac = cookie.partition(".")
        if not hmac.compare_digest(mac, self._mac(encoded)):
            return None
        try:
            body = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
            digest, expires = str(body["d"]), float(body["e"])
        except (ValueError, KeyError, TypeError):
            return None
        return digest if expires > time.time() else None

    def _mac(self, encoded: str) -> str:
        return hmac.new(self._key, encoded.encode(), hashlib.sha256).hexdigest()


class KeySessions:
    """The sign-in of one dashboard router: its signer (from the settings, on first use) and
    the ``Caller`` dependency that reads the cookie."""

    def __init__(self) -> None:
        self._signer: SessionSigner | None = None

    def signer(self, svc: Services) -> SessionSigner:
        if self._signer is None:
            secret = svc.settings.ui_secret
            self._signer = SessionSigner(
                None if secret is None else secret.get_secret_value(),
                svc.settings.ui_session_ttl,
            )
        return self._signer

    async def caller(self, request: Request, svc: ServicesDep) -> Caller:
        """The signed-in caller; not signed in: a redirect (303) to the sign-in page."""
        if svc.settings.auth == "disabled":
            return Caller(DEV_TENANT, ANONYMOUS)
        digest = self.signer(svc).verify(request.cookies.get(COOKIE, ""))
        if digest is not None:
            with contextlib.suppress(ApiProblem):  # revoked since: sign in again
                return await svc.keys.caller_of_digest(digest)
        target = request.url_for("ui_sign_in").include_query_params(next=request.url.path)
        location = f"{target.path}?{target.query}"  # a path: right behind a TLS proxy too
        raise HTTPException(303, "sign in first", headers={"Location": location})

    async def sign_in(self, request: Request, svc: Services, key: str) -> Response:
        """Verify ``key`` and answer 204 with the session cookie (401 problem if unknown)."""
        key = key.strip()
        digest = hash_key(key)
        await svc.keys.caller_of_digest(digest)  # ApiProblem("unauthorized") if unknown
        signer = self.signer(svc)
        response = Response(status_code=204)
        response.set_cookie(
            COOKIE,
            signer.sign(digest),
            max_age=int(signer.ttl),
            path=_cookie_path(request),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response


def sign_out(request: Request) -> Response:
    """204 that deletes the session cookie."""
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path=_cookie_path(request), httponly=True, samesite="strict")
    return response


def _cookie_path(request: Request) -> str:
    # the dashboard's own path: the cookie is never sent to the API routes
    return request.url_for("ui_jobs").path


async def require_ui_header(
    x_jobkeeper_ui: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """Refuse a state-changing request not sent by the dashboard's scripts (CSRF)."""
    if x_jobkeeper_ui != "1":  # an HTTPException: answered even where no problem handler is
        raise HTTPException(400, f"send the {UI_HEADER}: 1 header")


RequireUiHeader = Depends(require_ui_header)
