"""GET /gallery over HTTP: browse what the server made (newest first, search, filters, lineage) and watch running jobs.

Same bearer token as /mcp: an `Authorization: Bearer` header, or a login form that puts a value derived
from the token in an HttpOnly, SameSite=Strict cookie scoped to /gallery (never the token in a URL).
The Host/Origin rules of /mcp apply to every gallery route.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from PIL import Image
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from .config import Settings
from .store import ID_PATTERN, OutputStore

log = logging.getLogger(__name__)

COOKIE = "imgtools_gallery"
COOKIE_MAX_AGE_S = 7 * 24 * 3600
THUMB_EDGE = 256
PAGE_LIMIT = 200
ACTIVE_STATES = ("queued", "running")
ACTIVE_ORDER = {"running": 0, "queued": 1}

# The page and the viewer it embeds are inline documents that fetch only from this server.
PAGE_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` on the login form POST.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@cache
def _page(name: str) -> str:
    return resources.files("imgtools_mcp.ui").joinpath(name).read_text(encoding="utf-8")


def cookie_value(token: str) -> str:
    """What the login cookie holds: a keyed digest of the token, so a leaked cookie is not a /mcp credential."""
    return hmac.new(token.encode("utf-8", "surrogateescape"), b"imgtools-gallery-cookie-v1", hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Summary:
    """One output as the gallery lists it, read from its sidecar."""

    id: str
    created: str
    tool: str
    prompt: str
    model: str
    family: str
    width: int
    height: int
    seed: int | None
    parent: str | None

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


class OutputIndex:
    """Sidecars of the output folder, parsed once per file version (the folder can hold thousands)."""

    def __init__(self, store: OutputStore) -> None:
        self.store = store
        self._parsed: dict[str, tuple[int, Summary]] = {}

    def summaries(self) -> list[Summary]:
        seen: set[str] = set()
        for path in self.store.root.glob("*.json"):
            image_id = path.stem
            if not ID_PATTERN.match(image_id) or not self.store.png_path(image_id).is_file():
                continue
            seen.add(image_id)
            try:
                stamp = path.stat().st_mtime_ns
            except OSError:
                continue
            cached = self._parsed.get(image_id)
            if cached is None or cached[0] != stamp:
                summary = self._summary(path)
                if summary is None:
                    continue
                self._parsed[image_id] = (stamp, summary)
        for gone in set(self._parsed) - seen:
            del self._parsed[gone]
        return sorted((s for _, s in self._parsed.values()), key=lambda s: (s.created, s.id), reverse=True)

    @staticmethod
    def _summary(path: Path) -> Summary | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("gallery skips unreadable sidecar %s: %s", path.name, exc)
            return None
        params = data.get("parameters") or {}
        model = data.get("model") or {}
        parent = data.get("parent")
        return Summary(
            id=data.get("id", path.stem),
            created=str(data.get("created", "")),
            tool=str(data.get("tool", "")),
            prompt=str(params.get("prompt") or (data.get("sweep") or {}).get("title") or ""),
            model=str(model.get("name", "")),
            family=str(model.get("family", "")),
            width=int(data.get("width", 0)),
            height=int(data.get("height", 0)),
            seed=data.get("seed"),
            parent=parent if isinstance(parent, str) and ID_PATTERN.match(parent.removeprefix("imgtools://images/")) else None,
        )


def matches(summary: Summary, terms: list[str], model: str, family: str) -> bool:
    """Every search word appears in the prompt (any case); model and family match exactly when given."""
    prompt = summary.prompt.lower()
    return all(term in prompt for term in terms) and (not model or summary.model == model) and (
        not family or summary.family == family
    )


def lineage(summaries: list[Summary], image_id: str) -> dict[str, list[dict[str, Any]]]:
    """Ancestors (oldest first: parent → edit → inpaint …) and the direct children of one output."""
    by_id = {s.id: s for s in summaries}
    ancestors: list[Summary] = []
    current = by_id.get(image_id)
    while current is not None and current.parent and len(ancestors) < 50:
        parent = by_id.get(current.parent.removeprefix("imgtools://images/"))
        if parent is None or parent in ancestors:
            break
        ancestors.append(parent)
        current = parent
    children = [s for s in summaries if s.parent and s.parent.removeprefix("imgtools://images/") == image_id]
    return {
        "ancestors": [s.as_dict() for s in reversed(ancestors)],
        "children": [s.as_dict() for s in sorted(children, key=lambda s: s.created)],
    }


class Thumbnails:
    """Small WebP previews made on first request and kept in memory (least recently used dropped first)."""

    def __init__(self, capacity: int = 512) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, bytes] = OrderedDict()

    def get(self, image_id: str, path: Path) -> bytes:
        if image_id in self._items:
            self._items.move_to_end(image_id)
            return self._items[image_id]
        with Image.open(path) as image:
            image.thumbnail((THUMB_EDGE, THUMB_EDGE))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="WEBP", quality=80)
        data = buffer.getvalue()
        self._items[image_id] = data
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return data


class Gallery:
    """The gallery's routes for one server; `server.app_context` supplies the store and the task list."""

    def __init__(self, server: Any, settings: Settings, security: TransportSecuritySettings) -> None:
        self.server = server
        self.settings = settings
        self.security = TransportSecurityMiddleware(security)
        self._token = settings.auth_token.get_secret_value() if settings.auth_token else None
        self._token_digest = hashlib.sha256(self._token.encode("utf-8", "surrogateescape")).digest() if self._token else None
        self._cookie = cookie_value(self._token) if self._token else None
        self._index: OutputIndex | None = None
        self.thumbnails = Thumbnails()

    # --- checks every route makes ---
    def authorised(self, request: Request) -> bool:
        if self._token is None:
            return True  # no token configured: the gallery is as open as /mcp is
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            offered = hashlib.sha256(header[7:].strip().encode("utf-8", "surrogateescape")).digest()
            return hmac.compare_digest(offered, self._token_digest or b"")
        cookie = request.cookies.get(COOKIE)
        return cookie is not None and hmac.compare_digest(cookie.encode(), (self._cookie or "").encode())

    async def refused(self, request: Request, *, page: bool = False) -> Response | None:
        """The Host/Origin answer (421/403) or a 401; None when the request may go on."""
        bad = await self.security.validate_request(request)
        if bad is not None:
            return bad
        if self.authorised(request):
            return None
        if page:
            return HTMLResponse(_page("gallery_login.html").replace("{{message}}", ""), status_code=401, headers=PAGE_HEADERS)
        return JSONResponse({"error": "unauthorised: send the bearer token (Authorization header) or log in at /gallery"},
                            status_code=401, headers={"WWW-Authenticate": 'Bearer realm="imgtools"', "Cache-Control": "no-store"})

    def app(self) -> Any:
        app = self.server.app_context
        if app is None:
            return None
        if self._index is None or self._index.store is not app.store:
            self._index = OutputIndex(app.store)
        return app

    # --- pages ---
    async def page(self, request: Request) -> Response:
        if (refusal := await self.refused(request, page=True)) is not None:
            return refusal
        return HTMLResponse(_page("gallery.html"), headers=PAGE_HEADERS)

    async def login(self, request: Request) -> Response:
        bad = await self.security.validate_request(request)
        if bad is not None:
            return bad
        if self._token is None:
            return RedirectResponse("/gallery", status_code=303)
        origin = request.headers.get("origin")
        if not origin:  # browsers send Origin with every form POST; its absence is not a browser login
            return Response("Origin header required", status_code=403)
        form = await request.form()
        offered = str(form.get("token", ""))
        if not hmac.compare_digest(hashlib.sha256(offered.encode("utf-8", "surrogateescape")).digest(), self._token_digest or b""):
            page = _page("gallery_login.html").replace("{{message}}", '<p class="error" role="alert">That token is not right.</p>')
            return HTMLResponse(page, status_code=401, headers=PAGE_HEADERS)
        response = RedirectResponse("/gallery", status_code=303)
        response.set_cookie(COOKIE, self._cookie or "", max_age=COOKIE_MAX_AGE_S, path="/gallery", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    async def logout(self, request: Request) -> Response:
        bad = await self.security.validate_request(request)
        if bad is not None:
            return bad
        response = RedirectResponse("/gallery", status_code=303)
        response.delete_cookie(COOKIE, path="/gallery", httponly=True, samesite="strict")
        return response

    async def viewer(self, request: Request) -> Response:
        """The MCP App page, which the gallery shows each image in (one front end for both)."""
        if (refusal := await self.refused(request)) is not None:
            return refusal
        from .ui.viewer import viewer_html

        return HTMLResponse(viewer_html(), headers=PAGE_HEADERS)

    # --- data ---
    async def images(self, request: Request) -> Response:
        if (refusal := await self.refused(request)) is not None:
            return refusal
        app = self.app()
        if app is None:
            return JSONResponse({"error": "starting"}, status_code=503)
        assert self._index is not None
        summaries = await anyio.to_thread.run_sync(self._index.summaries)
        query = request.query_params
        terms = query.get("q", "").lower().split()
        model, family = query.get("model", ""), query.get("family", "")
        try:
            offset = max(0, int(query.get("offset", "0")))
            limit = min(PAGE_LIMIT, max(1, int(query.get("limit", "60"))))
        except ValueError:
            return JSONResponse({"error": "offset/limit: whole numbers"}, status_code=400)
        found = [s for s in summaries if matches(s, terms, model, family)]
        body = {
            "images": [s.as_dict() for s in found[offset : offset + limit]],
            "total": len(found),
            "models": sorted({s.model for s in summaries if s.model}),
            "families": sorted({s.family for s in summaries if s.family}),
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def image_detail(self, request: Request) -> Response:
        if (refusal := await self.refused(request)) is not None:
            return refusal
        app = self.app()
        image_id = request.path_params["image_id"]
        if app is None:
            return JSONResponse({"error": "starting"}, status_code=503)
        try:
            metadata = await anyio.to_thread.run_sync(app.store.read_metadata, image_id)
        except KeyError:
            return JSONResponse({"error": f"unknown image id {image_id!r}"}, status_code=404)
        assert self._index is not None
        summaries = await anyio.to_thread.run_sync(self._index.summaries)
        return JSONResponse({"metadata": metadata, "lineage": lineage(summaries, image_id)}, headers={"Cache-Control": "no-store"})

    async def image_file(self, request: Request) -> Response:
        if (refusal := await self.refused(request)) is not None:
            return refusal
        app = self.app()
        path = app.store.lookup(request.path_params["image_id"]) if app is not None else None
        if path is None:
            return Response("unknown image", status_code=404)
        data = await anyio.to_thread.run_sync(path.read_bytes)
        # Ids never change content, so the browser may keep them; private: the token guards them.
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=86400, immutable"})

    async def thumbnail(self, request: Request) -> Response:
        if (refusal := await self.refused(request)) is not None:
            return refusal
        app = self.app()
        image_id = request.path_params["image_id"]
        path = app.store.lookup(image_id) if app is not None else None
        if path is None:
            return Response("unknown image", status_code=404)
        data = await anyio.to_thread.run_sync(self.thumbnails.get, image_id, path)
        return Response(data, media_type="image/webp", headers={"Cache-Control": "private, max-age=86400, immutable"})

    async def jobs(self, request: Request) -> Response:
        if (refusal := await self.refused(request)) is not None:
            return refusal
        app = self.app()
        if app is None:
            return JSONResponse({"error": "starting"}, status_code=503)
        records = app.tasks.list()
        active = sorted((r for r in records if r.state in ACTIVE_STATES), key=lambda r: (ACTIVE_ORDER[r.state], r.created))
        finished = sorted((r for r in records if r.state not in ACTIVE_STATES), key=lambda r: r.updated, reverse=True)[:10]

        def row(record: Any) -> dict[str, Any]:
            return {
                "id": record.id, "tool": record.tool, "state": record.state, "progress": record.progress,
                "total": record.total, "message": record.message, "error": record.error,
                "created": record.created, "updated": record.updated,
            }

        return JSONResponse({"active": [row(r) for r in active], "recent": [row(r) for r in finished]},
                            headers={"Cache-Control": "no-store"})


def add_gallery_routes(server: MCPServer, settings: Settings, security: TransportSecuritySettings) -> Gallery:
    """Mount the gallery's routes beside /mcp on `server`'s Starlette app."""
    gallery = Gallery(server, settings, security)
    routes = [
        ("/gallery", ["GET"], gallery.page),
        ("/gallery/login", ["POST"], gallery.login),
        ("/gallery/logout", ["POST"], gallery.logout),
        ("/gallery/viewer", ["GET"], gallery.viewer),
        ("/gallery/api/images", ["GET"], gallery.images),
        ("/gallery/api/images/{image_id}", ["GET"], gallery.image_detail),
        ("/gallery/api/jobs", ["GET"], gallery.jobs),
        ("/gallery/image/{image_id}", ["GET"], gallery.image_file),
        ("/gallery/thumb/{image_id}", ["GET"], gallery.thumbnail),
    ]
    for path, methods, endpoint in routes:
        server.custom_route(path, methods=methods)(endpoint)
    return gallery
