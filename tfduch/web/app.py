"""A small search page in front of an archive index: type a caption, see the nearest scenes.

A plain WSGI application (no framework) served by the standard library's threaded ``wsgiref`` server.
Routes:

======================  ===================================================================
``GET /``               the page (``static/index.html`` + ``app.js`` + ``style.css``)
``GET /api/info``       index metadata: code length, model id, item counts, limits
``GET /api/search``     ``?q=caption&k=20`` → top-k images (id, distance, class, thumbnail URL)
``GET /api/captions``   ``?id=IMAGE_ID&k=5`` → the captions nearest to an indexed image's code
``GET /thumb/ID``       JPEG thumbnail of an indexed image (TIFF/WebP/... converted, cached)
======================  ===================================================================

Robustness: an empty query is a 400 with a message the page shows; a query longer than
``max_query_chars`` is cut (server-side) and the answer says so; text is UTF-8 throughout, so any
language or emoji is accepted (MiniLM maps unknown characters to ``[UNK]``); ``k`` is clipped to
``max_k`` and to the collection size, with a notice. Only files recorded in the index are ever read.
"""

from __future__ import annotations

import io
import json
import mimetypes
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tfduch.errors import TfduchError
from tfduch.index.encoders import QueryEncoder
from tfduch.index.searcher import Searcher
from tfduch.index.store import ArchiveIndex

__all__ = ["SearchApp", "serve"]

STATIC_DIR = Path(__file__).with_name("static")
STATIC_FILES = ("index.html", "app.js", "style.css")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class HTTPError(Exception):
    """An error answered as JSON ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


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
    """The WSGI application: ``SearchApp(index, encoder)`` is callable as ``app(environ, start_response)``."""

    def __init__(self, index: ArchiveIndex, encoder: QueryEncoder | None, *, max_query_chars: int = 300,
                 max_k: int = 100, default_k: int = 20, thumb_size: int = 224) -> None:
        self.searcher = Searcher(index, encoder)
        self.index = index
        self.max_query_chars, self.max_k, self.default_k = int(max_query_chars), int(max_k), int(default_k)
        self.thumbs = ThumbnailCache(thumb_size)
        self._lock = threading.Lock()  # the encoder and some backends (mih) are not re-entrant
        self.routes: dict[str, Callable[[dict[str, list[str]]], Any]] = {
            "/api/info": self.api_info, "/api/search": self.api_search, "/api/captions": self.api_captions}

    # ------------------------------------------------------------------------------------------- WSGI
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/") or "/"
        try:
            if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
                raise HTTPError("405 Method Not Allowed", "only GET is supported")
            params = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True, encoding="utf-8",
                              errors="replace")
            if path in self.routes:
                return self._send(start_response, "200 OK", "application/json; charset=utf-8",
                                  _json(self.routes[path](params)))
            if path.startswith("/thumb/"):
                return self._send(start_response, "200 OK", "image/jpeg", self.thumbnail(path[len("/thumb/"):]),
                                  cache=True)
            name = "index.html" if path == "/" else path.removeprefix("/static/")
            if name in STATIC_FILES and (path == "/" or path.startswith("/static/")):
                kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
                return self._send(start_response, "200 OK", f"{kind}; charset=utf-8",
                                  (STATIC_DIR / name).read_bytes())
            raise HTTPError("404 Not Found", f"no such page: {path}")
        except HTTPError as exc:
            return self._send(start_response, exc.status, "application/json; charset=utf-8",
                              _json({"error": str(exc)}))
        except TfduchError as exc:
            return self._send(start_response, "400 Bad Request", "application/json; charset=utf-8",
                              _json({"error": str(exc)}))

    @staticmethod
    def _send(start_response: StartResponse, status: str, content_type: str, body: bytes,
              cache: bool = False) -> list[bytes]:
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
                   ("X-Content-Type-Options", "nosniff"),
                   ("Cache-Control", "max-age=3600" if cache else "no-store")]
        start_response(status, headers)
        return [body]

    # ------------------------------------------------------------------------------------------- API
    def api_info(self, params: dict[str, list[str]]) -> dict[str, Any]:
        meta = self.index.metadata
        return {"bits": self.index.bits, "model_id": self.index.model_id,
                "method": (meta.get("model") or {}).get("method"),
                "counts": {n: len(c) for n, c in self.index.collections.items()},
                "max_k": self.max_k, "default_k": self.default_k, "max_query_chars": self.max_query_chars}

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
        t0 = time.perf_counter()
        with self._lock:
            hits = self.searcher.by_text([query], k, "image")[0]
        return {"query": query, "k": k, "notices": notices, "ms": round(1000 * (time.perf_counter() - t0), 1),
                "results": [_image_card(h) for h in hits]}

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
            path = self.index.collection("image").payload(item_id).get("path")
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
    return {"rank": hit.rank, "id": hit.id, "distance": hit.distance, "class": p.get("class"),
            "name": Path(p.get("path", "")).name, "caption": p.get("caption"), "thumb": f"/thumb/{hit.id}"}


def _json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass


def serve(app: SearchApp, host: str = "127.0.0.1", port: int = 8080) -> WSGIServer:
    """A threaded server for ``app`` bound to ``host:port`` (port 0: any free port); call ``serve_forever``."""
    return make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
