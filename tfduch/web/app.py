"""A small search page in front of an archive index: type a caption, see the nearest scenes (and, for a geo
archive, their footprints on a map).

A FastAPI application served by uvicorn (both from PyPI; the standard library's ``wsgiref`` documents
itself as not meant for production). FastAPI also serves the API's OpenAPI description at
``/openapi.json`` and an explorer at ``/docs``. Routes:

======================  ===================================================================
``GET /``               the page (``static/index.html`` + ``app.js`` + ``style.css`` + vendored Leaflet)
``GET /api/info``       index metadata: code length, model id, item counts, limits, ``geo`` (has footprints)
``GET /api/search``     ``?q=caption&k=20[&bbox=minlon,minlat,maxlon,maxlat][&time=FROM/TO]`` → top-k images
                        (id, distance, class, thumbnail URL; geo tiles also footprint, scene, window, time)
``GET /api/captions``   ``?id=IMAGE_ID&k=5`` → the captions nearest to an indexed image's code
``GET /thumb/ID``       JPEG thumbnail of an indexed image or tile (TIFF/WebP/... converted, cached)
======================  ===================================================================

Errors are JSON ``{"error": message}`` with a 4xx status. Robustness: an empty query is a 400 with a message
the page shows; a query longer than ``max_query_chars`` is cut (server-side) and the answer says so; text is
UTF-8 throughout, so any language or emoji is accepted (MiniLM maps unknown characters to ``[UNK]``); ``k``
is clipped to ``max_k`` and to the collection size, with a notice. Only files recorded in the index are ever
read. The map (Leaflet 1.9.4, vendored under ``static/vendor/leaflet``) loads nothing from the internet; an online
base map is used only when ``basemap`` (a tile URL template) is given.
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from tfduch.errors import TfduchError
from tfduch.index.encoders import QueryEncoder
from tfduch.index.searcher import Searcher
from tfduch.index.store import ArchiveIndex

__all__ = ["SearchApp", "WebServer", "serve"]

STATIC_DIR = Path(__file__).with_name("static")


class HTTPError(Exception):
    """An error answered as JSON ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status

    @property
    def code(self) -> int:
        return int(self.status.split()[0])


class ThumbnailCache:
    """JPEG thumbnails of indexed images, rendered on first request and kept (LRU, bounded by count)."""

    def __init__(self, size: int = 224, capacity: int = 1024) -> None:
        self.size, self.capacity = int(size), int(capacity)
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str) -> bytes:
        with self._lock:
            if path in self._items:
                self._items.move_to_end(path)
                return self._items[path]
        data = self._render(path)
        with self._lock:
            self._items[path] = data
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return data

    def _render(self, path: str) -> bytes:
        from PIL import Image

        from tfduch.data.images import load_image

        image = Image.fromarray(load_image(path))  # any format tfduch reads (TIFF, WebP, 16-bit, ...)
        image.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=88)
        return buf.getvalue()


class SearchApp:
    """The page and its JSON API over one index; ``app.asgi`` is the FastAPI (ASGI) application."""

    def __init__(self, index: ArchiveIndex, encoder: QueryEncoder | None, *, max_query_chars: int = 300,
                 max_k: int = 100, default_k: int = 20, thumb_size: int = 224,
                 index_path: str | os.PathLike[str] | None = None, basemap: str | None = None) -> None:
        self.searcher = Searcher(index, encoder)
        self.index = index
        self.max_query_chars, self.max_k, self.default_k = int(max_query_chars), int(max_k), int(default_k)
        self.thumbs = ThumbnailCache(thumb_size)
        self._lock = threading.Lock()  # the encoder and some backends (mih) are not re-entrant
        self.routes: dict[str, Callable[[dict[str, list[str]]], Any]] = {
            "/api/info": self.api_info, "/api/search": self.api_search, "/api/captions": self.api_captions}
        self.index_path = index_path
        self.basemap = basemap
        from tfduch.index.area import has_footprints

        self.geo = has_footprints(index) if "image" in index.collections else False
        self.asgi = self._build()

    # -------------------------------------------------------------------------------------------- ASGI
    def _build(self) -> Any:
        api = FastAPI(title="tfduch search", version="1", docs_url="/docs", redoc_url=None,
                      description="Text → image search over a tfduch archive index (Hamming ranking of binary "
                      "codes), with an optional area / time filter for geo-referenced tile archives.")
        nosniff = {"X-Content-Type-Options": "nosniff"}

        def error(code: int, message: str) -> JSONResponse:
            return JSONResponse({"error": message}, status_code=code, headers={**nosniff, "Cache-Control": "no-store"})

        @api.exception_handler(HTTPError)
        async def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
            return error(exc.code, str(exc))

        @api.exception_handler(TfduchError)
        async def _tfduch_error(request: Request, exc: TfduchError) -> JSONResponse:
            return error(400, str(exc))

        @api.exception_handler(StarletteHTTPException)
        async def _starlette_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
            return error(exc.status_code, f"{exc.detail}: {request.url.path}")

        @api.exception_handler(RequestValidationError)
        async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
            return error(400, str(exc.errors()[:1]))

        def params(request: Request) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for key, value in request.query_params.multi_items():
                out.setdefault(key, []).append(value)
            return out

        def as_json(obj: Any) -> Response:
            return Response(_json(obj), media_type="application/json; charset=utf-8",
                            headers={**nosniff, "Cache-Control": "no-store"})

        @api.get("/api/info", summary="index metadata: code length, model, counts, limits, geo")
        def info(request: Request) -> Response:
            return as_json(self.api_info(params(request)))

        @api.get("/api/search", summary="top-k images for a caption (q, k; geo archives: bbox, time)")
        def search(request: Request, q: str = "", k: str = "", bbox: str = "", time: str = "") -> Response:
            return as_json(self.api_search(params(request)))

        @api.get("/api/captions", summary="captions nearest to an indexed image (id, k)")
        def captions(request: Request, id: str = "", k: str = "") -> Response:  # noqa: A002 (the API's name)
            return as_json(self.api_captions(params(request)))

        @api.get("/thumb/{item_id}", summary="JPEG thumbnail of an indexed image or tile")
        def thumb(item_id: str) -> Response:
            return Response(self.thumbnail(item_id), media_type="image/jpeg",
                            headers={**nosniff, "Cache-Control": "max-age=3600"})

        @api.get("/", include_in_schema=False)
        def page() -> Response:
            return static("index.html")

        @api.get("/static/{name:path}", include_in_schema=False)
        def static(name: str) -> Response:
            path = (STATIC_DIR / name).resolve()
            if STATIC_DIR.resolve() not in path.parents or not path.is_file():
                raise HTTPError("404 Not Found", f"no such page: /static/{name}")
            kind = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                    ".css": "text/css; charset=utf-8", ".png": "image/png"}.get(path.suffix, "application/octet-stream")
            return Response(path.read_bytes(), media_type=kind, headers={**nosniff, "Cache-Control": "no-store"})

        return api

    # ------------------------------------------------------------------------------------------- API
    def api_info(self, params: dict[str, list[str]]) -> dict[str, Any]:
        meta = self.index.metadata
        return {"bits": self.index.bits, "model_id": self.index.model_id,
                "method": (meta.get("model") or {}).get("method"),
                "counts": {n: len(c) for n, c in self.index.collections.items()},
                "max_k": self.max_k, "default_k": self.default_k, "max_query_chars": self.max_query_chars,
                "geo": self.geo, "basemap": self.basemap}

    def _k(self, params: dict[str, list[str]], collection: str, default: int, notices: list[str]) -> int:
        raw = (params.get("k") or [str(default)])[0].strip() or str(default)
        try:
            k = int(raw)
        except ValueError:
            raise HTTPError("400 Bad Request", f"k must be a whole number, got {raw[:20]!r}") from None
        if k < 1:
            raise HTTPError("400 Bad Request", f"k must be at least 1, got {k}")
        size = len(self.index.collection(collection))
        if size == 0:
            raise HTTPError("409 Conflict", f"the {collection} collection of this index is empty")
        limit = min(self.max_k, size)
        if k > limit:
            notices.append(f"showing {limit} results (asked for {k}; "
                           + ("the index holds only that many)" if limit == size else f"the limit is {limit})"))
            k = limit
        return k

    def api_search(self, params: dict[str, list[str]]) -> dict[str, Any]:
        notices: list[str] = []
        query = " ".join((params.get("q") or [""])[0].split())  # collapse whitespace and newlines
        if not query:
            raise HTTPError("400 Bad Request", "empty query: type a few words describing the scene")
        if len(query) > self.max_query_chars:
            notices.append(f"query truncated to its first {self.max_query_chars} of {len(query)} characters")
            query = query[: self.max_query_chars]
        k = self._k(params, "image", self.default_k, notices)
        bbox_raw = (params.get("bbox") or [""])[0].strip()
        time_raw = (params.get("time") or [""])[0].strip()
        t0 = time.perf_counter()
        if bbox_raw or time_raw:
            from tfduch.geo.spatial import parse_bbox, parse_time
            from tfduch.index.area import area_search

            if self.index_path is None or not self.geo:
                raise HTTPError("400 Bad Request", "this index has no tile footprints: bbox / time filters need a "
                                "geo archive (tfduch encode-archive --scenes)")
            bbox = parse_bbox(bbox_raw) if bbox_raw else None
            when = parse_time(time_raw) if time_raw else None
            if self.searcher.encoder is None:
                raise HTTPError("409 Conflict", "this server has no model to encode text queries")
            with self._lock:
                codes = self.searcher.encoder.encode_texts([query])
                hits = area_search(self.index, self.index_path, codes, k, bbox, when)[0]
        else:
            with self._lock:
                hits = self.searcher.by_text([query], k, "image")[0]
        return {"query": query, "k": k, "notices": notices, "ms": round(1000 * (time.perf_counter() - t0), 1),
                "bbox": bbox_raw or None, "time": time_raw or None, "results": [_image_card(h) for h in hits]}

    def api_captions(self, params: dict[str, list[str]]) -> dict[str, Any]:
        notices: list[str] = []
        raw = (params.get("id") or [""])[0]
        try:
            item_id = int(raw)
        except ValueError:
            raise HTTPError("400 Bad Request", f"id must be an image id, got {raw[:20]!r}") from None
        if "text" not in self.index.collections or not len(self.index.collection("text")):
            return {"id": item_id, "results": [], "notices": ["this index holds no captions"]}
        k = self._k(params, "text", 5, notices)
        with self._lock:
            image = self.index.collection("image").payload(item_id)
            hits = self.searcher.by_item("image", item_id, k, "text")
        return {"id": item_id, "class": image.get("class"), "name": Path(image.get("path", "")).name,
                "notices": notices,
                "results": [{"rank": h.rank, "id": h.id, "distance": h.distance, "caption": h.payload.get("caption"),
                             "class": h.payload.get("class"), "image_id": h.payload.get("image_id")} for h in hits]}

    def thumbnail(self, raw_id: str) -> bytes:
        try:
            item_id = int(raw_id)
            payload = self.index.collection("image").payload(item_id)
            path = payload.get("thumbnail") or payload.get("path")  # geo tiles: their PNG, not the scene
        except (ValueError, TfduchError):
            raise HTTPError("404 Not Found", f"no image with id {raw_id[:20]!r} in the index") from None
        if not path:
            raise HTTPError("404 Not Found", f"image {item_id} has no file path")
        try:
            return self.thumbs.get(path)
        except TfduchError as exc:
            raise HTTPError("404 Not Found", f"image {item_id} cannot be shown: {exc}") from None


def _image_card(hit: Any) -> dict[str, Any]:
    p = hit.payload
    card = {"rank": hit.rank, "id": hit.id, "distance": hit.distance, "class": p.get("class"),
            "name": Path(p.get("path", "")).name, "caption": p.get("caption"), "thumb": f"/thumb/{hit.id}"}
    if "footprint_wgs84" in p:  # a geo tile: where it is and when
        card.update(footprint=p["footprint_wgs84"], scene_id=p.get("scene_id"), datetime=p.get("datetime"),
                    window=[p.get("window_col"), p.get("window_row"), p.get("window_width"), p.get("window_height")],
                    name=f"{p.get('scene_id')} r{p.get('window_row')} c{p.get('window_col')}")
    return card


def _json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


class WebServer:
    """uvicorn serving ``app.asgi`` on a socket bound at construction (so port 0's choice is known at once).

    The same small surface as the standard library's servers: ``server_address``, ``serve_forever()``
    (blocking; run it in a thread for tests), ``shutdown()`` and ``server_close()``.
    """

    def __init__(self, app: SearchApp, host: str = "127.0.0.1", port: int = 8080) -> None:
        import uvicorn

        self.socket = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.server_address = self.socket.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn.Config(app.asgi, log_level="warning", access_log=False,
                                                    lifespan="off", timeout_graceful_shutdown=2))
        self._done = threading.Event()

    def serve_forever(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self._done.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self._done.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()


def serve(app: SearchApp, host: str = "127.0.0.1", port: int = 8080) -> WebServer:
    """A server for ``app`` bound to ``host:port`` (port 0: any free port); call ``serve_forever``."""
    return WebServer(app, host, port)
