"""``/docs`` and ``/redoc``, with every script, style sheet and icon served by the service.

FastAPI's default pages load Swagger UI and ReDoc from a CDN (and ReDoc's fonts from Google):
the browser of whoever opens the docs runs code fetched from a third party, pages fail where
egress is closed, and a content security policy must allow those hosts. The assets here come
from the ``fastapi-offline`` distribution, pinned with the service's other dependencies, and
are served from ``/docs/assets/`` by name (a fixed list: no path from the request reaches the
filesystem).

Included only when ``Settings.serves_docs`` is true (``DOCS_ENABLED``; off in production by
default); ``create_app`` then also serves ``/openapi.json``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from ..errors import NotFoundError

ASSETS_PATH = "/docs/assets"
_ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}

router = APIRouter(include_in_schema=False)


def _title(request: Request) -> str:
    return f"{request.app.title} - API docs"


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=_title(request),
        swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=request.app.openapi_url,
        title=_title(request),
        redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
        redoc_favicon_url=f"{ASSETS_PATH}/favicon.png",
        with_google_fonts=False,
    )


@router.get(ASSETS_PATH + "/{name}")
async def asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFoundError("no such docs asset")
    # FileResponse stats and reads the file in a worker thread: the loop never waits on disk.
    return FileResponse(
        _ASSETS_DIR / name, media_type=media_type, headers={"Cache-Control": "max-age=86400"}
    )
