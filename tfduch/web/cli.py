"""``tfduch web``: serve the search page for an index on this machine (loopback by default)."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import Any

EPILOG = """\
examples:
  tfduch web --index ucm.tfidx                      # model recorded in the index; http://127.0.0.1:8080
  tfduch web --index ucm.tfidx --export exports/tfduch --port 9000
  tfduch web --index milvus://localhost:19530/archive   # an archive indexed into Milvus

The page sends each query to the model that built the index and shows the top-k images with their
Hamming distance and class; clicking an image lists the captions nearest to it. For a geo archive
(encode-archive --scenes) it also shows the result footprints on a map; drawing a box filters by area.
Served by uvicorn (FastAPI); the JSON API is described at /openapi.json and /docs. The server binds to
the loopback interface unless --host says otherwise: it has no authentication.
"""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_web(args: argparse.Namespace) -> int:
    from tfduch.index.cli import open_location, query_encoder
    from tfduch.web.app import SearchApp, serve

    index = open_location(args.index, args)  # an index file, a shard set or an archive in Milvus
    encoder = query_encoder(args, index.metadata.get("model"))
    app = SearchApp(index, encoder, max_query_chars=args.max_query_chars, max_k=args.max_k, index_path=args.index,
                    basemap=args.basemap)
    print("warming up the text encoder …", file=sys.stderr)
    encoder.encode_texts(["warm up"])
    server = serve(app, args.host, args.port)
    if not _is_loopback(args.host):
        print(f"warning: serving on {args.host}, reachable from other machines, without authentication",
              file=sys.stderr)
    host, port = server.server_address[:2]
    print(f"tfduch web: {index} → http://{host}:{port}/  (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("web", help="search page for an index (text → images → captions)",
                              description="Serve a small web page that searches an index by text: a text box, "
                              "a grid of the top-k thumbnails with distance and class, and the nearest captions "
                              "of a clicked image.", epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, type=Path,
                   help="index file (tfduch index build), shard set, or Milvus archive milvus://HOST:PORT/NAME")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--run", type=Path, help="trained run folder (default: the model recorded in the index)")
    g.add_argument("--export", type=Path, help="exported SavedModel (default: the model recorded in the index)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 picks a free one)")
    p.add_argument("--max-k", type=int, default=100, help="most results a query may ask for (default 100)")
    p.add_argument("--max-query-chars", type=int, default=300,
                   help="longer queries are cut to this many characters, and the page says so (default 300)")
    p.add_argument("--basemap", metavar="URL",
                   help="online base map tile URL for the geo map, e.g. https://tile.openstreetmap.org/{z}/{x}/{y}.png "
                   "(default: none, the page loads nothing from the internet)")
    from tfduch.index.cli import add_milvus_args

    add_milvus_args(p)
    p.set_defaults(func=cmd_web)
