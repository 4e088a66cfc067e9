"""List the ops a SavedModel uses that core TensorFlow does not register (e.g. tensorflow-text's).

    python serving/list_custom_ops.py /exports/tfduch/1

Reads ``saved_model.pb`` (graph and function library) without loading the model. An op counts as custom
when ``tf.raw_ops`` (every op core TensorFlow registers) lacks it, so the answer is the same whether or not
tensorflow_text was imported. These are the ops a
``tensorflow_model_server`` must link to load the model (docs/serving.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def custom_ops(version_dir: Path) -> dict[str, list[str]]:
    """{op type: [signature-reachable function or 'graph' where it appears]} for ops core TF lacks."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
    found: dict[str, set[str]] = {}
    for graph in saved.meta_graphs:
        nodes = [("graph", n) for n in graph.graph_def.node]
        for function in graph.graph_def.library.function:
            nodes += [(function.signature.name, n) for n in function.node_def]
        names = {f.signature.name for f in graph.graph_def.library.function}
        for where, node in nodes:
            if node.op not in names and not hasattr(tf.raw_ops, node.op):
                found.setdefault(node.op, set()).add(where)
    return {op: sorted(where) for op, where in sorted(found.items())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version_dir", type=Path, help="a SavedModel folder (<base>/<model>/<version>)")
    args = parser.parse_args()
    if not (args.version_dir / "saved_model.pb").is_file():
        print(f"no saved_model.pb in {args.version_dir}", file=sys.stderr)
        return 2
    ops = custom_ops(args.version_dir)
    for op, where in ops.items():
        print(f"{op}\t{len(where)} function(s)")
    if not ops:
        print("only core TensorFlow ops")
    return 0


if __name__ == "__main__":
    sys.exit(main())
