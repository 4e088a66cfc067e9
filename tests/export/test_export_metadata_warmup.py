"""The export's ``metadata`` signature (read by ``Client.metadata()`` through ``tfduch serve``) and its
TF Serving warm-up records; and that the export modules import one way (no cycle)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow_serving.apis")


def test_metadata_signature_returns_the_metadata_json(edge_export):
    from tfduch.export import load_exported, read_metadata

    _, version_dir = edge_export
    loaded = load_exported(version_dir)
    signature = loaded.signatures["metadata"]
    _, inputs = signature.structured_input_signature
    assert inputs == {}  # no inputs: a Predict with an empty request reads it
    out = signature()
    assert set(out) == {"json"} and out["json"].shape == () and out["json"].dtype.name == "string"
    served = json.loads(out["json"].numpy().decode())
    on_disk = read_metadata(version_dir)
    assert served == on_disk and served["model_id"] and served["tflite"]["float32"]["bytes"] > 0


def test_client_metadata_reads_the_model_id_through_tfduch_serve(edge_export):
    from tfduch.export import read_metadata
    from tfduch.serving.client import Client
    from tfduch.serving.models import ModelSource
    from tfduch.serving.server import ModelServer, ServerOptions

    base, version_dir = edge_export
    model_id = read_metadata(version_dir)["model_id"]
    options = ServerOptions(models=[ModelSource("edge", base / "edge")], host="127.0.0.1", port=0,
                            rest_api_port=-1, file_system_poll_wait_seconds=0)
    with ModelServer(options) as server, Client(server.grpc_address, "edge", timeout=30) as client:
        meta = client.metadata()
        assert "metadata" in meta.signatures and meta.signatures["metadata"]["inputs"] == {}
        assert meta.tfduch["model_id"] == model_id and meta.code_length == meta.tfduch["code_length"]


def test_warmup_file_has_one_runnable_record_per_signature(edge_export):
    import tensorflow as tf

    from tfduch.export import load_exported
    from tfduch.export.warmup import MAX_WARMUP_RECORDS, read_warmup_requests

    _, version_dir = edge_export
    assert (version_dir / "assets.extra" / "tf_serving_warmup_requests").is_file()
    logs = read_warmup_requests(version_dir)
    loaded = load_exported(version_dir)
    names = [log.predict_log.request.model_spec.signature_name for log in logs]
    assert sorted(names) == sorted(loaded.signatures) and len(logs) <= MAX_WARMUP_RECORDS
    bits = loaded.bits
    for log in logs:
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        signature = loaded.signatures[request.model_spec.signature_name]
        _, specs = signature.structured_input_signature
        assert set(request.inputs) == set(specs)  # every input present, named as the signature names it
        inputs = {k: tf.constant(tf.make_ndarray(v), specs[k].dtype) for k, v in request.inputs.items()}
        out = signature(**inputs)
        if request.model_spec.signature_name == "metadata":
            assert json.loads(out["json"].numpy().decode())["code_length"] == bits
        else:
            assert out["codes"].shape == (1, bits) and set(np.unique(out["codes"].numpy())) <= {-1, 1}


def test_export_modules_have_no_cycle():
    """graph, calibration, bias_correction, tflite, warmup and savedmodel each import only earlier ones."""
    order = ["layout", "metadata", "graph", "bias_correction", "calibration", "tflite", "warmup", "savedmodel",
             "edge_config", "loaded", "cli"]
    script = (
        "import ast, pathlib, sys, json\n"
        "root = pathlib.Path('tfduch/export')\n"
        "out = {}\n"
        "for f in root.glob('*.py'):\n"
        "    tree = ast.parse(f.read_text())\n"
        "    out[f.stem] = sorted({n.module.split('.')[2] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)"
        " and n.module and n.module.startswith('tfduch.export.')})\n"
        "print(json.dumps(out))\n")
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    imports = json.loads(subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True, text=True,
                                        check=True).stdout)
    assert set(imports) - {"__init__"} == set(order)
    for module, used in imports.items():
        if module == "__init__":
            continue
        later = [m for m in used if order.index(m) >= order.index(module)]
        assert not later, f"tfduch.export.{module} imports {later}, which come after it (a cycle risk)"
