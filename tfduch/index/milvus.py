"""The ``milvus`` backend: an archive index held by a Milvus server instead of a file (``pip install tfduch[milvus]``).

Why: past one machine an archive needs a search service that shards, replicates, filters and survives node
loss; Milvus does that for binary codes (``BINARY_VECTOR``, ``BIN_FLAT`` / ``BIN_IVF_FLAT``, ``HAMMING``)
with one client from a single process to a Kubernetes cluster (``docs/scale.md``).

Layout: an archive ``A`` is the collections ``tfduch_A_image`` and ``tfduch_A_text`` (primary key ``id`` =
the item id, ``code`` = the packed code as a ``BINARY_VECTOR`` of K bits, scalar payload fields ``path``,
``class``, ``caption``, ``scene_id``, ``image_id``, footprint ``minlon/minlat/maxlon/maxlat`` for filters,
and ``payload`` = the exact JSON payload the file index returns) and ``tfduch_A_meta``, one row holding
the index metadata (code length, model id, model, next ids) that :meth:`ArchiveIndex.check_compatible`
checks, so a mismatched model is refused exactly as the file index refuses it. All collections use
consistency level ``Strong``: a search sees every write that returned before it.

Locations: ``milvus://HOST:PORT/ARCHIVE`` (``milvus+https://`` for TLS), or ``milvus://local/ARCHIVE`` for
an embedded server that tfduch starts from the ``milvus`` PyPI package (Milvus 2.3 standalone, data under
``~/.cache/tfduch/milvus`` or ``$TFDUCH_MILVUS_DIR``) and stops when the process exits. ``uri=`` /
``--milvus-uri`` (or ``$TFDUCH_MILVUS_URI``) names the server explicitly; ``token=`` / ``--milvus-token``
(or ``$TFDUCH_MILVUS_TOKEN``, ``user:password`` or an API key) and ``ca_pem=`` / ``--milvus-ca-pem`` are for
secured clusters.

Exact ties (``BIN_FLAT``): Milvus orders codes at equal distance arbitrarily. A search asks for
``k + TIE_MARGIN`` candidates; when the last candidate is farther than the k-th, every code at the k-th
distance is among them and sorting by (distance, id) is the exact answer of the ``flat`` file backend.
Otherwise it asks again for more (up to Milvus' top-k limit of 16384) and, past that, fills the boundary
ties by a scan of the collection in id order. ``BIN_IVF_FLAT`` (``index_type``, ``nlist``, ``nprobe``) is
approximate: its candidates are sorted by (distance, id), nothing more is promised.

Failures: every call is retried (``retries`` times, ``retry_wait`` seconds apart) on connection errors; a
search returns only complete answers, so a server that goes away mid-search gives a
:class:`MilvusUnavailableError` naming the server and what to do, never a partial or wrong result. Writes
are upserts by primary key, so a bulk insert that failed part-way is resumed by running it again: rows
already written are overwritten, none are duplicated.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import json
import os
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tfduch.errors import TfduchError
from tfduch.eval.ranking import hamming_distances_packed
from tfduch.index.core import Hit, as_packed, check_k, hits_from
from tfduch.index.errors import IncompatibleIndexError, IndexFileError, SearchError
from tfduch.index.store import COLLECTIONS, ArchiveIndex

__all__ = ["INSTALL_HINT", "MAX_TOPK", "TIE_MARGIN", "EmbeddedMilvus", "MilvusCollection", "MilvusIndex",
           "MilvusTarget", "MilvusUnavailableError", "is_milvus_location", "open_milvus"]

INSTALL_HINT = ("the milvus backend needs the optional extra: pip install 'tfduch[milvus]' "
                "(pymilvus; the embedded server also needs: pip install --no-deps milvus==2.3.5)")
#: Milvus' largest top-k per search.
MAX_TOPK = 16384
#: Extra candidates a BIN_FLAT search asks for to see every code tied at the k-th distance.
TIE_MARGIN = 64
INDEX_TYPES = ("BIN_FLAT", "BIN_IVF_FLAT")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,200}$")
_WRITE_BATCH = 20000
_STR_FIELDS = {"path": 4096, "class": 512, "caption": 8192, "scene_id": 512}
_BBOX = ("minlon", "minlat", "maxlon", "maxlat")
_META_KEY = "index"


class MilvusUnavailableError(TfduchError):
    """The Milvus server could not be reached (or went away) after the configured retries."""


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError:
        raise TfduchError(INSTALL_HINT) from None
    return pymilvus


def is_milvus_location(location: str | os.PathLike[str] | None) -> bool:
    """True for ``milvus://…`` / ``milvus+https://…`` (also after ``pathlib.Path`` folded ``//`` to ``/``)."""
    return location is not None and re.match(r"^milvus(\+https?)?:/", str(location)) is not None


@dataclass(frozen=True)
class MilvusTarget:
    """Where an archive lives: the server (``uri``; None = the embedded server) and the archive name."""

    archive: str
    uri: str | None = None
    token: str | None = None
    ca_pem: str | None = None
    server_name: str | None = None
    timeout: float = 20.0
    retries: int = 3
    retry_wait: float = 2.0
    #: Reads: "Strong" (default) sees every write acknowledged before the read, at the cost of waiting for
    #: the server's next time tick (~0.2 s per read); "Session" / "Bounded" skip the wait, for read-only
    #: serving of a finished archive (in a test, "Session" missed a delete made just before a count).
    consistency: str = os.environ.get("TFDUCH_MILVUS_CONSISTENCY", "Strong")

    @classmethod
    def parse(cls, location: str | os.PathLike[str], uri: str | None = None, token: str | None = None,
              ca_pem: str | None = None, **options: Any) -> MilvusTarget:
        """``milvus://HOST:PORT/ARCHIVE`` or ``milvus://local/ARCHIVE``; ``uri`` / env vars fill in or override."""
        text = str(location)
        m = re.match(r"^milvus(\+https?)?:/+([^/]*)/([^/?#]+)/?$", text)
        if m is None:
            raise SearchError(f"bad Milvus location {text!r}: expected milvus://HOST:PORT/ARCHIVE or "
                              "milvus://local/ARCHIVE (embedded server)")
        scheme, host, archive = (m.group(1) or "+http")[1:], m.group(2), m.group(3)
        if not _NAME.match(archive):
            raise SearchError(f"bad archive name {archive!r} in {text!r}: use letters, digits and _ "
                              "(starting with a letter)")
        uri = uri or os.environ.get("TFDUCH_MILVUS_URI") or None
        if uri is None and host not in ("", "local", "embedded"):
            uri = f"{scheme}://{host if ':' in host else host + ':19530'}"
        return cls(archive, uri, token or os.environ.get("TFDUCH_MILVUS_TOKEN") or None, ca_pem, **options)

    def location(self) -> str:
        if self.uri is None:
            return f"milvus://local/{self.archive}"
        scheme, _, rest = self.uri.partition("://")
        return f"milvus{'+https' if scheme == 'https' else ''}://{rest.rstrip('/')}/{self.archive}"

    def collection_name(self, what: str) -> str:
        return f"tfduch_{self.archive}_{what}"


# ------------------------------------------------------------------------------------- embedded server
class EmbeddedMilvus:
    """A Milvus standalone server from the ``milvus`` package, on 127.0.0.1, data under ``base_dir``.

    ``start`` reuses a server another process already runs on the same ``base_dir`` (recorded in
    ``tfduch-server.json``); only the process that started a server stops it. Milvus' own components
    listen on every interface (its code, not a setting), so on a shared host keep those ports firewalled.
    """

    def __init__(self, base_dir: str | os.PathLike[str], port: int | None = None) -> None:
        self.base_dir = Path(base_dir).expanduser().resolve()
        self.port = port
        self.server: Any = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _record(self) -> Path:
        return self.base_dir / "tfduch-server.json"

    def _running_elsewhere(self) -> int | None:
        try:
            rec = json.loads(self._record().read_text())
            os.kill(int(rec["pid"]), 0)
            with urllib.request.urlopen(f"http://127.0.0.1:{int(rec['health_port'])}/healthz", timeout=2) as r:
                return int(rec["port"]) if b"OK" in r.read() else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def start(self) -> EmbeddedMilvus:
        if self.server is not None:
            return self
        other = self._running_elsewhere()
        if other is not None:
            self.port = other
            return self
        try:
            from milvus import MilvusServer
        except ImportError:
            raise TfduchError("the embedded Milvus server needs the milvus package: pip install --no-deps "
                              "milvus==2.3.5 (or name a running server with --milvus-uri)") from None
        self.base_dir.mkdir(parents=True, exist_ok=True)
        kwargs = {"proxy_port": self.port} if self.port else {}
        server = MilvusServer(**kwargs)
        server.set_base_dir(str(self.base_dir))
        try:
            server.start()
        except Exception as exc:
            server.stop()
            raise MilvusUnavailableError(f"the embedded Milvus server under {self.base_dir} did not start: {exc} "
                                         f"(logs: {self.base_dir / 'logs'})") from None
        self.server, self.port = server, int(server.listen_port)
        from tfduch.io import atomic_write_json

        atomic_write_json(self._record(), {"pid": server.server_proc.pid, "port": self.port,
                                           "health_port": server.webservice_port})
        return self

    def kill(self) -> None:
        """Kill the server process at once (SIGKILL), as a crash would: for failure tests."""
        if self.server is not None and self.server.server_proc is not None:
            self.server.server_proc.kill()
            self.server.server_proc.wait()
            self.server.server_proc = None
            self.server.stop()
            self.server = None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
            self._record().unlink(missing_ok=True)


_EMBEDDED: dict[str, EmbeddedMilvus] = {}
_EMBEDDED_LOCK = threading.Lock()


def embedded_server(base_dir: str | os.PathLike[str] | None = None) -> EmbeddedMilvus:
    """This process' embedded server for ``base_dir`` (default ``$TFDUCH_MILVUS_DIR`` or the user cache)."""
    base = base_dir or os.environ.get("TFDUCH_MILVUS_DIR") or Path("~/.cache/tfduch/milvus").expanduser()
    key = str(Path(base).expanduser().resolve())
    with _EMBEDDED_LOCK:
        if key not in _EMBEDDED:
            _EMBEDDED[key] = EmbeddedMilvus(key).start()
            atexit.register(_EMBEDDED[key].stop)
        return _EMBEDDED[key]


# ------------------------------------------------------------------------------------------ the client
def _transient(exc: BaseException) -> bool:
    """Connection-level failures worth a retry (the server restarting, a dropped channel)."""
    pm = _pymilvus()
    if isinstance(exc, pm.MilvusUnavailableException):
        return True
    try:
        import grpc

        if isinstance(exc, grpc.RpcError):
            return True
    except ImportError:  # pragma: no cover - grpc comes with pymilvus
        pass
    if isinstance(exc, pm.MilvusException):
        text = str(getattr(exc, "message", exc)).lower()
        return getattr(exc, "code", None) in (1, 2) or any(
            s in text for s in ("unavailable", "connect", "not loaded", "deadline", "not ready", "no available"))
    return isinstance(exc, (ConnectionError, TimeoutError))


class _Client:
    """A ``MilvusClient`` for one target with retries and clear errors around every call."""

    def __init__(self, target: MilvusTarget) -> None:
        self.target = target
        self.uri = target.uri or embedded_server().uri
        self._client: Any = None
        self._alias: str | None = None

    def _connect(self) -> Any:
        if self._client is None:
            pm = _pymilvus()
            kwargs: dict[str, Any] = {}
            if self.target.ca_pem:
                kwargs.update(secure=True, server_pem_path=self.target.ca_pem)
            if self.target.server_name:
                kwargs["server_name"] = self.target.server_name
            self._client = pm.MilvusClient(uri=self.uri, token=self.target.token or "", timeout=self.target.timeout,
                                           **kwargs)
        return self._client

    def call(self, what: str, fn: Callable[[Any], Any], on_retry: Callable[[], None] | None = None) -> Any:
        """Run ``fn(client)``; retry connection failures; anything else is raised as a tfduch error."""
        pm = _pymilvus()
        last: BaseException | None = None
        for attempt in range(self.target.retries + 1):
            try:
                return fn(self._connect())
            except Exception as exc:
                if not _transient(exc) and not (isinstance(exc, pm.MilvusException) and self._client is None):
                    if isinstance(exc, pm.MilvusException):
                        raise SearchError(f"Milvus at {self.uri}: {what} failed: {getattr(exc, 'message', exc)}"
                                          ) from None
                    raise
                last = exc
                self._drop()
                if attempt < self.target.retries:
                    time.sleep(self.target.retry_wait)
                    if on_retry is not None:
                        try:
                            on_retry()
                        except Exception:  # the next attempt reports the failure
                            pass
        raise MilvusUnavailableError(
            f"Milvus at {self.uri} is unreachable: {what} failed after {self.target.retries + 1} attempts "
            f"({type(last).__name__}: {str(getattr(last, 'message', last))[:300]}); nothing was returned. Check "
            "that the server is running (or restart it) and try again; writes are upserts and can be re-run")

    def upsert_columns(self, collection: str, columns: list[list[Any]]) -> None:
        """Column-wise upsert (pymilvus' ORM path: ~17x faster than rows of dicts, measured on 20k rows)."""
        import warnings

        pm = _pymilvus()

        def run(client: Any) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=getattr(pm, "PyMilvusDeprecationWarning", Warning))
                orm_upsert()

        def orm_upsert() -> None:
            if self._alias is None:
                self._alias = f"tfduch-{id(self)}-{time.monotonic_ns()}"
                kwargs: dict[str, Any] = {}
                if self.target.ca_pem:
                    kwargs.update(secure=True, server_pem_path=self.target.ca_pem)
                pm.connections.connect(alias=self._alias, uri=self.uri, token=self.target.token or "",
                                       timeout=self.target.timeout, **kwargs)
            pm.Collection(collection, using=self._alias).upsert(columns, timeout=self.target.timeout)

        self.call(f"writing {len(columns[0])} rows to {collection}", run)

    def _drop(self) -> None:
        if self._alias is not None:
            import warnings

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    _pymilvus().connections.disconnect(self._alias)
            except Exception:
                pass
            self._alias = None
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
        self._client = None


# ---------------------------------------------------------------------------------------- collections
class _BackendInfo:
    """What ``tfduch index info`` and the CLI read from ``collection.backend``."""

    def __init__(self, bits: int, params: dict[str, Any]) -> None:
        self.bits, self.params = bits, params
        self.name = "milvus"
        self.exact = params.get("index_type", "BIN_FLAT") == "BIN_FLAT"
        self.supports_remove = True

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "bits": self.bits, **self.params}


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _columns(ids: np.ndarray, codes: np.ndarray, payloads: Sequence[dict[str, Any] | None] | None
             ) -> list[list[Any]]:
    """Column lists in schema order (id, code, path, class, caption, scene_id, image_id, bbox…, payload)."""
    n = len(ids)
    if payloads is None:
        return [ids.tolist(), [row.tobytes() for row in codes], *([[""] * n] * len(_STR_FIELDS)), [-1] * n,
                *([[float("nan")] * n] * len(_BBOX)), ["{}"] * n]
    ps = [dict(p or {}) for p in payloads]
    cols: list[list[Any]] = [ids.tolist(), [row.tobytes() for row in codes]]
    for name, width in _STR_FIELDS.items():
        cols.append(["" if p.get(name) is None else str(p[name])[: width // 4] for p in ps])  # limits are bytes
    cols.append([int(p["image_id"]) if isinstance(p.get("image_id"), (int, np.integer)) else -1 for p in ps])
    for name in _BBOX:
        cols.append([_num(p.get(name)) for p in ps])
    cols.append([json.dumps(p, ensure_ascii=False, separators=(",", ":"), default=str) for p in ps])
    return cols


class MilvusCollection:
    """One collection (``image`` or ``text``) in Milvus with the search API of :class:`HammingIndex`."""

    def __init__(self, index: MilvusIndex, name: str) -> None:
        self.index, self.name = index, name
        self.bits = index.bits
        self.collection = index.target.collection_name(name)
        self.backend = _BackendInfo(self.bits, index.params)
        self.next_id = int((index.metadata.get("next_id") or {}).get(name, 0))
        self.removed = None  # the file index's tombstones; Milvus deletes at once

    @property
    def _client(self) -> _Client:
        return self.index.client

    @property
    def _level(self) -> str:
        return self.index.target.consistency

    def __len__(self) -> int:
        rows = self._client.call(f"counting {self.collection}", lambda c: c.query(
            self.collection, filter="", output_fields=["count(*)"], consistency_level=self._level), self._reload)
        return int(rows[0]["count(*)"])

    def _reload(self) -> None:
        self._client.call(f"loading {self.collection}", lambda c: c.load_collection(self.collection))

    def check_k(self, k: int) -> int:
        return check_k(k, len(self))

    # ------------------------------------------------------------------------------------- updates
    def add(self, codes: np.ndarray, payloads: Sequence[dict[str, Any] | None] | None = None,
            ids: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Upsert codes with payloads; ids default to ``next_id, next_id + 1, …``. Returns the ids.

        Upserts make a re-run of an interrupted bulk insert with the same ids overwrite, never duplicate.
        """
        packed = as_packed(codes, self.bits)
        n = packed.shape[0]
        if payloads is not None and len(payloads) != n:
            raise SearchError(f"{len(payloads)} payloads for {n} codes")
        new_ids = (np.arange(self.next_id, self.next_id + n, dtype=np.int64) if ids is None
                   else np.asarray(ids, np.int64))
        if new_ids.shape != (n,):
            raise SearchError(f"{len(new_ids)} ids for {n} codes")
        for start in range(0, n, _WRITE_BATCH):
            end = min(n, start + _WRITE_BATCH)
            part = payloads[start:end] if payloads is not None else None
            cols = _columns(new_ids[start:end], packed[start:end], part)
            self._client.upsert_columns(self.collection, cols)
        if n:
            self.next_id = max(self.next_id, int(new_ids.max()) + 1)
        return new_ids

    def _existing(self, ids: np.ndarray) -> np.ndarray:
        found: list[int] = []
        for start in range(0, len(ids), 1000):
            chunk = [int(i) for i in ids[start : start + 1000]]
            rows = self._client.call(f"reading {self.collection}", lambda c, chunk=chunk: c.query(
                self.collection, filter=f"id in {chunk}", output_fields=["id"], consistency_level=self._level),
                self._reload)
            found += [int(r["id"]) for r in rows]
        return np.array(sorted(found), np.int64)

    def positions(self, ids: Iterable[int]) -> np.ndarray:
        """The ids themselves, after checking they exist (the file index's error for missing ids)."""
        wanted = np.unique(np.asarray(list(ids), dtype=np.int64))
        missing = np.setdiff1d(wanted, self._existing(wanted))
        if len(missing):
            shown = ", ".join(str(i) for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise SearchError(f"{len(missing)} id(s) not in the collection: {shown}")
        return wanted

    def remove(self, ids: Iterable[int]) -> int:
        """Delete items by id (all or nothing: unknown ids are refused before anything is deleted)."""
        wanted = self.positions(ids)
        for start in range(0, len(wanted), 1000):
            chunk = [int(i) for i in wanted[start : start + 1000]]
            self._client.call(f"deleting from {self.collection}",
                              lambda c, chunk=chunk: c.delete(self.collection, ids=chunk))
        return len(wanted)

    def ids_where(self, expr: str) -> list[int]:
        """Ids of the items matching a Milvus filter expression (e.g. ``image_id in [3, 4]``)."""
        rows = self._client.call(f"filtering {self.collection}", lambda c: c.query(
            self.collection, filter=expr, output_fields=["id"], consistency_level=self._level), self._reload)
        return sorted(int(r["id"]) for r in rows)

    @property
    def ids(self) -> np.ndarray:
        """Every live id, sorted (the file index's ``ids``): a full scan of the id column — for small archives
        and the web page's geo check; large archives should filter in Milvus instead."""
        found: list[int] = []

        def scan(c: Any) -> None:
            it = c.query_iterator(self.collection, batch_size=16384, filter="id >= 0", output_fields=["id"])
            try:
                while rows := it.next():
                    found.extend(int(r["id"]) for r in rows)
            finally:
                it.close()

        self._client.call(f"listing the ids of {self.collection}", scan)
        return np.array(sorted(found), np.int64)

    def compact(self) -> None:
        """Nothing to do: Milvus compacts deleted rows itself."""

    # -------------------------------------------------------------------------------------- search
    def _raw_search(self, q: np.ndarray, limit: int, **extra: Any) -> list[list[tuple[int, int]]]:
        params = {"metric_type": "HAMMING", "params": {}}
        if not self.backend.exact:
            params["params"] = {"nprobe": int(self.index.params.get("nprobe", 16))}
        params["params"].update(extra)
        data = [row.tobytes() for row in q]
        res = self._client.call(f"searching {self.collection}", lambda c: c.search(
            self.collection, data=data, limit=limit, search_params=params, consistency_level=self._level),
            self._reload)
        if len(res) != len(data):
            raise MilvusUnavailableError(f"Milvus at {self._client.uri} answered {len(res)} of {len(data)} queries")
        return [[(int(round(h["distance"])), int(h["id"])) for h in hits] for hits in res]

    def _scan_ties(self, query: np.ndarray, radius: int, need: int) -> list[int]:
        """The ``need`` lowest ids at exactly ``radius`` from ``query``: a full scan (rare: > 16384 ties)."""
        found: list[int] = []

        def scan(c: Any) -> None:
            it = c.query_iterator(self.collection, batch_size=10000, filter="id >= 0", output_fields=["id", "code"])
            try:
                while True:
                    rows = it.next()
                    if not rows:
                        break
                    codes = np.stack([np.frombuffer(r["code"][0] if isinstance(r["code"], list) else r["code"],
                                                    np.uint8) for r in rows])
                    dist = hamming_distances_packed(query[None], codes)[0]
                    found.extend(int(rows[i]["id"]) for i in np.flatnonzero(dist == radius))
            finally:
                it.close()

        self._client.call(f"scanning {self.collection}", scan)
        return sorted(found)[:need]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids int64 [Q, k], distances int32 [Q, k])``; BIN_FLAT: exactly the ``flat`` backend's answer."""
        n = len(self)
        k = check_k(k, n)
        q = as_packed(queries, self.bits, "query codes")
        out_ids = np.full((len(q), k), -1, np.int64)
        out_dist = np.full((len(q), k), (1 << 22) - 1, np.int32)
        if not self.backend.exact:
            limit = min(n, MAX_TOPK, max(k + 16, 2 * k))
            for i, cand in enumerate(self._raw_search(q, limit)):
                top = sorted(cand)[:k]
                out_dist[i, : len(top)] = [d for d, _ in top]
                out_ids[i, : len(top)] = [j for _, j in top]
            return out_ids, out_dist
        pending, limit = np.arange(len(q)), min(n, k + TIE_MARGIN)
        while len(pending):
            results = self._raw_search(q[pending], limit)
            again = []
            for i, cand in zip(pending, results, strict=True):
                cand = sorted(cand)
                if len(cand) < min(k, n):
                    raise MilvusUnavailableError(f"Milvus at {self._client.uri} returned {len(cand)} results of "
                                                 f"{k} from {self.collection} ({n} items): refusing a partial answer")
                radius = cand[k - 1][0]
                if limit >= n or cand[-1][0] > radius:  # every code at the k-th distance was seen
                    top = cand[:k]
                elif limit < min(n, MAX_TOPK):
                    again.append(i)
                    continue
                else:
                    closer = [c for c in cand if c[0] < radius]
                    top = closer + [(radius, j) for j in self._scan_ties(q[i], radius, k - len(closer))]
                out_dist[i] = [d for d, _ in top]
                out_ids[i] = [j for _, j in top]
            pending, limit = np.array(again, np.int64), min(n, MAX_TOPK, limit * 8)
        return out_ids, out_dist

    def search_hits(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        ids, dist = self.search(queries, k)
        return hits_from(ids, dist, self.payloads_of)

    def _rows(self, ids: Sequence[int], fields: list[str]) -> dict[int, dict[str, Any]]:
        wanted = [int(i) for i in ids]
        rows = self._client.call(f"reading {self.collection}", lambda c: c.query(
            self.collection, filter=f"id in {wanted}", output_fields=fields, consistency_level=self._level),
            self._reload) if wanted else []
        return {int(r["id"]): r for r in rows}

    def payloads_of(self, ids: np.ndarray) -> list[dict[str, Any]]:
        rows = self._rows(list(ids), ["payload"])
        missing = [int(i) for i in ids if int(i) not in rows]
        if missing:
            raise SearchError(f"{self.collection}: items {missing[:10]} were deleted while they were being read")
        return [json.loads(rows[int(i)]["payload"] or "{}") for i in ids]

    def payload(self, item_id: int) -> dict[str, Any]:
        return self.payloads_of(self.positions([item_id]))[0]

    def code(self, item_id: int) -> np.ndarray:
        """The packed code ``uint8 [bits/8]`` of one item."""
        row = self._rows(self.positions([item_id]).tolist(), ["code"])[int(item_id)]
        code = row["code"][0] if isinstance(row["code"], list) else row["code"]
        return np.frombuffer(bytes(code), np.uint8).copy()

    def get_config(self) -> dict[str, Any]:
        return {"bits": self.bits, "backend": self.backend.get_config(), "count": len(self), "removed": 0,
                "next_id": self.next_id, "collection": self.collection}


# --------------------------------------------------------------------------------------------- the index
class MilvusIndex(ArchiveIndex):
    """An archive index in Milvus: the :class:`ArchiveIndex` API (search, add, remove, check_compatible, info).

    Writes go to the server at once; :meth:`save` only records the metadata (next ids, update time).
    """

    def __init__(self, target: MilvusTarget, metadata: dict[str, Any], client: _Client | None = None) -> None:
        self.target = target
        self.client = client or _Client(target)
        backend = dict(metadata.get("backend") or {})
        self.params = {k: v for k, v in backend.items() if k not in ("name", "bits")}
        self.metadata = metadata
        collections = {name: MilvusCollection(self, name) for name in metadata.get("collections", COLLECTIONS)}
        super().__init__(metadata, collections, None)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"MilvusIndex({self.target.location()} at {self.client.uri}, {self.bits} bits, model {self.model_id})"

    def _where(self) -> str:
        return f"Milvus index {self.target.location()}"

    @classmethod
    def create(cls, target: MilvusTarget, bits: int, model: dict[str, Any] | None = None,  # type: ignore[override]
               *, overwrite: bool = False, resume: bool = False, index_type: str = "BIN_FLAT",
               nlist: int = 1024, nprobe: int = 16, shards: int = 1, collections: tuple[str, ...] = COLLECTIONS
               ) -> MilvusIndex:
        """Create the archive's collections; an existing archive needs ``overwrite`` (drop) or ``resume``.

        ``resume`` reopens an archive of the same model and code length (an interrupted build re-run with
        the same ids: its upserts overwrite what was written before).
        """
        from tfduch.index.store import ArchiveIndex as _Plain

        if index_type not in INDEX_TYPES:
            raise SearchError(f"milvus index_type must be one of {', '.join(INDEX_TYPES)}, got {index_type!r}")
        if bits < 8 or bits % 8:
            raise SearchError(f"code length must be a positive multiple of 8 bits, got {bits}")
        plain = _Plain.create(bits, model, "flat", collections=())  # the file index's checks and metadata
        params: dict[str, Any] = {"index_type": index_type}
        if index_type == "BIN_IVF_FLAT":
            params.update(nlist=int(nlist), nprobe=int(nprobe))
        client = _Client(target)
        names = [target.collection_name(c) for c in (*collections, "meta")]
        exists = [n for n in names if client.call("listing collections", lambda c, n=n: c.has_collection(n))]
        if exists and resume and not overwrite:
            index = open_milvus(target)
            model = dict(model or {})
            index.check_compatible(model)
            if index.bits != bits:
                raise IncompatibleIndexError(f"{index._where()} holds {index.bits}-bit codes, not {bits}")
            for coll in index.collections.values():  # a re-run assigns the same ids from the start
                coll.next_id = 0  # type: ignore[attr-defined]
            return index
        if exists and not overwrite:
            raise IndexFileError(f"{target.location()} exists (collections {', '.join(exists)}): pass --overwrite "
                                 "to replace it, or use tfduch index add")
        for n in exists:
            client.call(f"dropping {n}", lambda c, n=n: c.drop_collection(n))
        pm = _pymilvus()
        for name in collections:
            schema = pm.MilvusClient.create_schema(auto_id=False,
                                                   description=f"tfduch {name} codes of {target.archive}")
            schema.add_field("id", pm.DataType.INT64, is_primary=True)
            schema.add_field("code", pm.DataType.BINARY_VECTOR, dim=int(bits))
            for field, width in _STR_FIELDS.items():
                schema.add_field(field, pm.DataType.VARCHAR, max_length=width)
            schema.add_field("image_id", pm.DataType.INT64)
            for field in _BBOX:
                schema.add_field(field, pm.DataType.DOUBLE)
            schema.add_field("payload", pm.DataType.VARCHAR, max_length=65535)
            ip = pm.MilvusClient.prepare_index_params()
            ip.add_index("code", index_type=index_type, metric_type="HAMMING",
                         params={"nlist": int(nlist)} if index_type == "BIN_IVF_FLAT" else {})
            coll = target.collection_name(name)
            client.call(f"creating {coll}", lambda c, coll=coll, schema=schema, ip=ip: c.create_collection(
                coll, schema=schema, index_params=ip, consistency_level="Strong", num_shards=int(shards)))
        meta = dict(plain.metadata)
        meta.update(backend={"name": "milvus", "bits": int(bits), **params}, collections=list(collections),
                    next_id={c: 0 for c in collections}, location=target.location())
        meta_coll = target.collection_name("meta")
        schema = pm.MilvusClient.create_schema(auto_id=False, description=f"tfduch index metadata of {target.archive}")
        schema.add_field("key", pm.DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("value", pm.DataType.VARCHAR, max_length=65535)
        schema.add_field("vector", pm.DataType.FLOAT_VECTOR, dim=2)  # Milvus 2.3 requires a vector field
        ip = pm.MilvusClient.prepare_index_params()
        ip.add_index("vector", index_type="FLAT", metric_type="L2")
        client.call(f"creating {meta_coll}", lambda c: c.create_collection(
            meta_coll, schema=schema, index_params=ip, consistency_level="Strong"))
        index = cls(target, meta, client)
        index.save()
        return index

    # ------------------------------------------------------------------------------------------ writes
    def add(self, collection: str, codes: np.ndarray, payloads: list[dict[str, Any]] | None = None,
            ids: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        new = self.collection(collection).add(codes, payloads, ids)  # type: ignore[call-arg]
        self.save()
        return new

    def remove(self, collection: str, ids: list[int]) -> int:
        n = self.collection(collection).remove(ids)
        self.save()
        return n

    def remove_captions_of(self, image_ids: Sequence[int]) -> int:
        """Delete the captions (``text`` items) of the given images; returns how many."""
        if "text" not in self.collections:
            return 0
        text = self.collection("text")
        found = [i for start in range(0, len(image_ids), 1000)
                 for i in text.ids_where(f"image_id in {[int(x) for x in image_ids[start : start + 1000]]}")]
        return self.remove("text", found) if found else 0

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:  # type: ignore[override]
        """Record the metadata (next ids, update time) in the archive's meta collection."""
        self.metadata["next_id"] = {n: c.next_id for n, c in self.collections.items()}  # type: ignore[attr-defined]
        self.metadata["updated_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        text = json.dumps(self.metadata, ensure_ascii=False, default=str)
        if len(text.encode()) > 65000:
            raise SearchError("index metadata over 64 kB cannot be stored in Milvus")
        meta_coll = self.target.collection_name("meta")
        self.client.call(f"writing {meta_coll}", lambda c: c.upsert(
            meta_coll, [{"key": _META_KEY, "vector": [0.0, 0.0], "value": text}]))
        return Path(self.target.location())

    def flush(self, wait: float = 600.0) -> None:
        """Seal the written rows and wait until the code index covers them (searches then use the index,
        not a brute-force pass over growing segments): call after a bulk load."""
        for coll in self.collections.values():
            name = coll.collection  # type: ignore[attr-defined]
            self.client.call(f"flushing {name}", lambda c, name=name: c.flush(name))
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                info = self.client.call(f"describing the index of {name}",
                                        lambda c, name=name: c.describe_index(name, "code"))
                # Milvus 2.3 keeps reporting pending_index_rows after the build (compaction bookkeeping):
                # indexed_rows reaching total_rows is the signal
                if int(info.get("indexed_rows", 0)) >= int(info.get("total_rows", 0)):
                    break
                time.sleep(0.5)
            self.client.call(f"loading {name}", lambda c, name=name: c.load_collection(name))

    def info(self) -> dict[str, Any]:
        out = dict(self.metadata)
        out["collections"] = {n: c.get_config() for n, c in self.collections.items()}
        out["count"] = sum(v["count"] for v in out["collections"].values())
        out["server"] = {"uri": self.client.uri, "location": self.target.location()}
        return out

    def drop(self) -> None:
        """Delete the archive's collections from the server."""
        for name in (*self.collections, "meta"):
            coll = self.target.collection_name(name)
            self.client.call(f"dropping {coll}", lambda c, coll=coll: c.drop_collection(coll))


def open_milvus(location: str | os.PathLike[str] | MilvusTarget, *, model: dict[str, Any] | None = None,
                **options: Any) -> MilvusIndex:
    """Open an archive in Milvus (``milvus://HOST:PORT/ARCHIVE``); with ``model`` refuse an incompatible one."""
    target = location if isinstance(location, MilvusTarget) else MilvusTarget.parse(location, **options)
    if isinstance(location, MilvusTarget) and options:
        target = replace(target, **options)
    client = _Client(target)
    meta_coll = target.collection_name("meta")
    if not client.call("listing collections", lambda c: c.has_collection(meta_coll)):
        raise IndexFileError(f"no archive {target.archive!r} on Milvus at {client.uri} (collection {meta_coll} "
                             "is missing): build it with tfduch index build --out " + target.location())
    rows = client.call(f"reading {meta_coll}", lambda c: c.query(
        meta_coll, filter=f'key == "{_META_KEY}"', output_fields=["value"]),
        lambda: client.call(f"loading {meta_coll}", lambda c: c.load_collection(meta_coll)))
    if not rows:
        raise IndexFileError(f"{target.location()}: the metadata row is missing (an interrupted create?): rebuild "
                             "with tfduch index build --overwrite")
    index = MilvusIndex(target, json.loads(rows[0]["value"]), client)
    if model is not None:
        index.check_compatible(model)
    return index
