"""``/docs`` without the internet: Swagger UI's files from the ``swagger-ui-py`` package.

FastAPI's default docs page loads Swagger UI from a CDN, which a machine without internet cannot
reach; this serves the same page with the script, style and icon from this server.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response

__all__ = ["offline_docs"]

_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def offline_docs(app: FastAPI, *, path: str = "/docs") -> None:
    """Serve Swagger UI at ``path`` (and its files under ``path/assets``) for an app created
    with ``docs_url=None``."""
    folder = resources.files("swagger_ui") / "static"
    assets = {name: (folder / name).read_bytes() for name in _ASSETS}
    redirect = f"{path}/oauth2-redirect"

    @app.get(path, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{path}/assets/swagger-ui-bundle.js",
            swagger_css_url=f"{path}/assets/swagger-ui.css",
            swagger_favicon_url=f"{path}/assets/favicon-32x32.png",
            oauth2_redirect_url=redirect,
        )

    @app.get(redirect, include_in_schema=False)
    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(f"{path}/assets/{{name}}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in assets:
            return Response(status_code=404)
        return Response(
            assets[name],
            media_type=_ASSETS[name],
            headers={"Cache-Control": "public, max-age=86400"},
        )
