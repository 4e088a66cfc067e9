"""Model folders → loaded versions → signature runners, the part of a model server that owns models.

A model lives in the TF Serving layout ``<base_path>/<integer version>/saved_model.pb``. The
:class:`ModelManager` polls each base path, loads the versions its :class:`VersionPolicy` wants (by
default the newest, as TF Serving does), swaps them in without a restart and drops removed ones. A
:class:`SignatureRunner` checks a request against the signature (names, dtypes, shapes, batch size,
UTF-8) before running it, so a bad request becomes an ``INVALID_ARGUMENT`` with a message that names
the problem instead of a TensorFlow stack trace, and the server stays up.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from tfduch.errors import ConfigError
from tfduch.serving.errors import ServingError, StatusCode

try:  # exported tfduch text signatures tokenize with tensorflow-text ops; register them before loading
    import tensorflow_text  # noqa: F401
except ImportError:  # pragma: no cover - a generic server works without it
    pass

__all__ = [
    "VersionPolicy",
    "ModelSource",
    "RequestLimits",
    "SignatureRunner",
    "Servable",
    "VersionState",
    "ModelManager",
    "list_versions",
    "read_extra_metadata",
    "read_model_config_file",
    "sources_from_config",
]

log = logging.getLogger("tfduch.serving")

_VERSION_DIR = re.compile(r"^[0-9]+$")
_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
_METADATA_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_TF_CODE_NAMES = {getattr(tf.errors, name): name for name in (
    "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")}


# --------------------------------------------------------------------------------------------------
# Which versions to serve
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VersionPolicy:
    """TF Serving's ``model_version_policy``: ``latest`` N versions (default 1), ``all``, or ``specific``."""

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """``latest``, ``latest:2``, ``all`` or ``specific:1,3``."""
        kind, _, arg = text.strip().partition(":")
        try:
            if kind == "latest":
                policy = cls("latest", int(arg) if arg else 1)
                if policy.num_versions < 1:
                    raise ValueError
                return policy
            if kind == "all" and not arg:
                return cls("all")
            if kind == "specific" and arg:
                return cls("specific", versions=tuple(sorted(int(v) for v in arg.split(","))))
        except ValueError:
            pass
        raise ConfigError(f"invalid version policy {text!r}: use latest, latest:N (N >= 1), all or specific:V1,V2")

    def select(self, available: Iterable[int]) -> set[int]:
        versions = sorted(set(available))
        if self.kind == "all":
            return set(versions)
        if self.kind == "specific":
            return set(versions) & set(self.versions)
        return set(versions[-self.num_versions:])

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.num_versions}"
        return "all" if self.kind == "all" else "specific:" + ",".join(map(str, self.versions))


@dataclass(frozen=True)
class ModelSource:
    """One served model: its name, its ``<base>/<model_name>`` folder, version policy and version labels.

    ``labels`` maps a label (``stable``, ``canary``) to a version, as ``version_labels`` in TF Serving's
    ``ModelConfig``: clients ask for ``version_label`` (gRPC) or ``/labels/<label>`` (REST).
    """

    name: str
    base_path: Path
    policy: VersionPolicy = VersionPolicy()
    labels: Mapping[str, int] = field(default_factory=dict)


def read_model_config_file(path: str | Path) -> list[ModelSource]:
    """Models listed in a TF Serving ``--model_config_file`` (``ModelServerConfig`` text proto)."""
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(Path(path).read_text(encoding="utf-8"), config)
    except (OSError, text_format.ParseError) as exc:
        raise ConfigError(f"cannot read model config file {path}: {exc}") from exc
    return sources_from_config(config, str(path), Path(path).resolve().parent)


def sources_from_config(config: Any, path: str, base_dir: Path) -> list[ModelSource]:
    """The models of a ``ModelServerConfig`` message (from a file, or a gRPC ReloadConfig request);
    relative base paths are resolved against ``base_dir``, errors name ``path``."""
    sources = []
    for entry in config.model_config_list.config:
        platform = entry.model_platform or "tensorflow"
        if platform != "tensorflow":
            raise ConfigError(f"{path}: model {entry.name!r} has model_platform {platform!r}; only tensorflow")
        which = entry.model_version_policy.WhichOneof("policy_choice")
        if which == "all":
            policy = VersionPolicy("all")
        elif which == "specific":
            policy = VersionPolicy("specific", versions=tuple(sorted(entry.model_version_policy.specific.versions)))
        else:
            n = entry.model_version_policy.latest.num_versions if which == "latest" else 1
            policy = VersionPolicy("latest", max(1, n))
        base = Path(entry.base_path)
        if not base.is_absolute():
            base = base_dir / base
        sources.append(ModelSource(entry.name, base, policy, dict(entry.version_labels)))
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: a model name is listed twice ({', '.join(sorted(names))})")
    if not sources:
        raise ConfigError(f"{path} lists no models (expected model_config_list {{ config {{ name base_path }} }})")
    return sources


def list_versions(base_path: str | Path) -> dict[int, Path]:
    """Complete versions under a model folder: integer-named folders holding a ``saved_model.pb``.

    Anything else (``.tmp-3``, ``3.partial``, a half-copied folder without the graph file) is ignored,
    which is what makes an export that renames its finished folder into place safe to pick up.
    """
    base = Path(base_path)
    found: dict[int, Path] = {}
    if not base.is_dir():
        return found
    for child in base.iterdir():
        if _VERSION_DIR.match(child.name) and child.is_dir() and any((child / f).is_file() for f in _SAVED_MODEL_FILES):
            found[int(child.name)] = child
    return found


# --------------------------------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RequestLimits:
    """Checks applied to every request before it reaches the graph.

    ``max_request_batch_size``: larger requests get ``INVALID_ARGUMENT`` (TF Serving's answer to a task
    larger than the batch scheduler's maximum). ``utf8_inputs``: string inputs with these names must be
    valid UTF-8 (text signatures); TF Serving leaves this to the graph, we check it up front so the
    error names the item.
    """

    max_request_batch_size: int = 1024
    utf8_inputs: tuple[str, ...] = ("text",)


def array_dtype(array: np.ndarray) -> tf.DType:
    """The TF dtype a request array stands for (object / bytes / str arrays are ``tf.string``)."""
    if array.dtype == object or array.dtype.kind in "SU":
        return tf.string
    try:
        return tf.as_dtype(array.dtype)
    except TypeError:
        raise ServingError(StatusCode.INVALID_ARGUMENT, f"unsupported input dtype {array.dtype}") from None


def _shape_text(shape: Any) -> str:
    dims = shape.as_list() if isinstance(shape, tf.TensorShape) else list(shape)
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"


def clean_tf_message(message: str) -> str:
    """The human part of a TensorFlow runtime error (no graph-node markers, op names or stack preamble)."""
    lines = []
    for line in message.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("Graph execution error", "Detected at node", "<stack traces",
                                                "File \"", "[[")):
            continue
        lines.append(stripped)
    text = " ".join(lines) or message.strip()
    text = re.sub(r"\{\{function_node [^}]*\}\}|\{\{node [^}]*\}\}", "", text)
    text = re.sub(r"\s*\[\[.*?\]\]|\s*\[Op:[^\]]*\]", "", text)
    return text.strip()


class SignatureRunner:
    """One signature of a loaded version: validates request arrays, runs the function, returns numpy."""

    def __init__(self, name: str, function: Any, limits: RequestLimits, model: str = "", version: int = 0) -> None:
        self.name = name
        self.model, self.version = model, version  # whose signature this is (metrics labels)
        self.function = function
        self.limits = limits
        self.inputs: dict[str, tf.TensorSpec] = dict(function.structured_input_signature[1])
        self.outputs: dict[str, tf.TensorSpec] = dict(function.structured_outputs)
        # Concurrent requests can be merged only if every tensor has a leading batch dimension.
        specs = list(self.inputs.values()) + list(self.outputs.values())
        self.batchable = bool(self.inputs) and all(s.shape.rank and s.shape[0] is None for s in specs)
        self._call = self._flat_call(function)

    def _flat_call(self, function: Any) -> Any:
        """The signature's flat call (tensors in input-name order → outputs), or None to use ``function(**kw)``.

        A loaded signature's ``__call__`` re-checks and re-flattens its keyword arguments against the
        structured signature on every call (~0.3 ms); the request is already validated against the same
        specs, so the server calls the flat function with the captured variables directly.
        """
        call_flat = getattr(function, "_call_flat", None)
        captured = getattr(function, "captured_inputs", None)
        if call_flat is None or captured is None:
            return None
        try:
            flat_specs = tf.nest.flatten(function.structured_input_signature)
        except (TypeError, ValueError):
            return None
        names = sorted(self.inputs)
        if [spec.name for spec in flat_specs] != names or any(
                self.inputs[n] != spec for n, spec in zip(names, flat_specs, strict=True)):
            return None
        captured = list(captured)
        structure = function.structured_outputs

        def call(tensors: Mapping[str, tf.Tensor]) -> Any:
            result = call_flat([tensors[n] for n in names], captured)
            if isinstance(result, Mapping):
                return result
            return tf.nest.pack_sequence_as(structure, result)

        return call

    def validate(self, inputs: Mapping[str, np.ndarray]) -> int:
        """Check names, dtypes, shapes, batch size and UTF-8; returns the batch size (0 if unbatched)."""
        sent, expected = set(inputs), set(self.inputs)
        if sent != expected:
            raise ServingError(StatusCode.INVALID_ARGUMENT, (
                f"signature '{self.name}' takes inputs {sorted(expected)}; missing {sorted(expected - sent)}, "
                f"unexpected {sorted(sent - expected)}"))
        batch: int | None = None
        for name, spec in self.inputs.items():
            array = inputs[name]
            dtype = array_dtype(array)
            if dtype != spec.dtype:
                raise ServingError(StatusCode.INVALID_ARGUMENT, (
                    f"input '{name}' of signature '{self.name}' must be {spec.dtype.name}, got {dtype.name}"))
            if not spec.shape.is_compatible_with(array.shape):
                raise ServingError(StatusCode.INVALID_ARGUMENT, (
                    f"input '{name}' of signature '{self.name}' must have shape {_shape_text(spec.shape)}, "
                    f"got {_shape_text(array.shape)}"))
            if spec.shape.rank and spec.shape[0] is None:
                if batch is not None and array.shape[0] != batch:
                    raise ServingError(StatusCode.INVALID_ARGUMENT, (
                        f"inputs of signature '{self.name}' disagree on the batch size ({batch} vs "
                        f"{array.shape[0]} in '{name}')"))
                batch = int(array.shape[0])
        if batch == 0:
            raise ServingError(StatusCode.INVALID_ARGUMENT, f"empty batch: signature '{self.name}' got 0 items")
        if batch is not None and batch > self.limits.max_request_batch_size:
            raise ServingError(StatusCode.INVALID_ARGUMENT, (
                f"Task size {batch} is larger than maximum input batch size {self.limits.max_request_batch_size} "
                "(split the request, or raise --max_request_batch_size)"))
        for name in self.limits.utf8_inputs:
            if name in self.inputs and self.inputs[name].dtype == tf.string:
                _check_utf8(name, inputs[name])
        return batch or 0

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the signature on validated inputs; TensorFlow errors become :class:`ServingError`."""
        try:
            tensors = {name: tf.constant(value, dtype=self.inputs[name].dtype) for name, value in inputs.items()}
            result = self.function(**tensors) if self._call is None else self._call(tensors)
            return {name: _as_array(value.numpy()) for name, value in result.items()}
        except tf.errors.OpError as exc:
            code = _TF_CODE_NAMES.get(exc.error_code, StatusCode.INTERNAL)
            raise ServingError(code, f"signature '{self.name}': {clean_tf_message(exc.message)}") from exc
        except (ValueError, TypeError) as exc:
            raise ServingError(StatusCode.INVALID_ARGUMENT, f"signature '{self.name}': {exc}") from exc


def _as_array(value: Any) -> np.ndarray:
    """Scalar outputs come back from ``.numpy()`` as ``bytes`` / numpy scalars: make every output an array."""
    if isinstance(value, np.ndarray):
        return value
    return np.array(value, dtype=object) if isinstance(value, bytes) else np.asarray(value)


def _check_utf8(name: str, array: np.ndarray) -> None:
    for i, item in enumerate(array.ravel()):
        if isinstance(item, bytes):
            try:
                item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ServingError(StatusCode.INVALID_ARGUMENT, (
                    f"input '{name}' item {i} is not valid UTF-8 ({exc.reason} at byte {exc.start})")) from None


# --------------------------------------------------------------------------------------------------
# Loaded versions
# --------------------------------------------------------------------------------------------------
def read_signature_defs(version_dir: Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDef map of the ``serve`` meta graph, as TF Serving's GetModelMetadata returns it."""
    saved = saved_model_pb2.SavedModel()
    pb = version_dir / "saved_model.pb"
    if pb.is_file():
        saved.ParseFromString(pb.read_bytes())
    else:
        text_format.Parse((version_dir / "saved_model.pbtxt").read_text(encoding="utf-8"), saved)
    graphs = [g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags] or list(saved.meta_graphs)
    return dict(graphs[0].signature_def) if graphs else {}


def read_extra_metadata(version_dir: Path) -> dict[str, str]:
    """``assets.extra/<field>.json`` files of a version (e.g. ``tfduch_metadata``), served as extra
    GetModelMetadata fields. TF Serving ignores ``assets.extra``; clients fall back gracefully."""
    extra = version_dir / "assets.extra"
    found = {}
    for path in sorted(extra.glob("*.json")) if extra.is_dir() else []:
        if _METADATA_FIELD.match(path.stem):
            try:
                found[path.stem] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                log.warning("ignoring unreadable %s: %s", path, exc)
    return found


@dataclass
class Servable:
    """A loaded version: its SignatureDefs (for metadata) and a runner per callable signature."""

    name: str
    version: int
    path: Path
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]
    runners: dict[str, SignatureRunner]
    extra_metadata: dict[str, str] = field(default_factory=dict)
    loaded: Any = field(repr=False, default=None)  # keeps the SavedModel's variables alive
    warmup_requests: int = 0  # warm-up records replayed before the version became AVAILABLE

    @classmethod
    def load(cls, name: str, version: int, path: Path, limits: RequestLimits) -> Servable:
        loaded = tf.saved_model.load(str(path), tags=["serve"])
        runners = {sig: SignatureRunner(sig, fn, limits, name, version) for sig, fn in loaded.signatures.items()}
        return cls(name, version, path, read_signature_defs(path), runners, read_extra_metadata(path), loaded)

    def runner(self, signature_name: str) -> SignatureRunner:
        sig = signature_name or "serving_default"
        if sig not in self.runners:
            raise ServingError(StatusCode.INVALID_ARGUMENT, (
                f'Serving signature name: "{sig}" not found in signature def (model {self.name} version '
                f"{self.version} has {sorted(self.runners)})"))
        return self.runners[sig]


@dataclass
class VersionState:
    """What GetModelStatus reports for one version: ``AVAILABLE``, ``LOADING`` or ``END`` (+ error)."""

    version: int
    state: str
    error_code: str = StatusCode.OK
    error_message: str = ""


class ModelManager:
    """Keeps the wanted versions of every model loaded, polling their folders in a background thread.

    New versions load before old ones are dropped (TF Serving's availability-preserving order), so a
    request never finds a model with no version while a newer export is being picked up. A version that
    fails to load is reported as ``END`` with the error and retried only when its folder changes; the
    policy then falls back to the newest version that did load.
    """

    def __init__(self, sources: Iterable[ModelSource], poll_seconds: float = 1.0,
                 limits: RequestLimits = RequestLimits(), on_load: Callable[[Servable], None] | None = None) -> None:
        self.sources = {s.name: s for s in sources}
        self.on_load = on_load  # runs after a version loaded and before it is AVAILABLE (warm-up)
        self.poll_seconds = float(poll_seconds)
        self.limits = limits
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._loaded: dict[str, dict[int, Servable]] = {name: {} for name in self.sources}
        self._states: dict[str, dict[int, VersionState]] = {name: {} for name in self.sources}
        self._failed: dict[tuple[str, int], float] = {}  # (model, version) -> mtime of the failed graph file
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- polling ---------------------------------------------------------------------------------
    def update_sources(self, sources: Iterable[ModelSource]) -> None:
        """Serve exactly ``sources`` from now on (a re-read ``--model_config_file``): new models load,
        dropped ones unload, changed policies and labels apply; no restart, other models keep serving."""
        new = {s.name: s for s in sources}
        with self._poll_lock:
            with self._lock:
                for name in set(self.sources) - set(new):
                    for version in self._loaded.pop(name, {}):
                        log.info("unloaded model %s version %d (no longer in the config)", name, version)
                    self._states.pop(name, None)
                for name in set(new) - set(self.sources):
                    self._loaded[name], self._states[name] = {}, {}
                self.sources = new
        self.poll()

    def poll(self) -> None:
        """Scan every model folder once: load wanted new versions, then unload unwanted ones."""
        with self._poll_lock:
            for source in list(self.sources.values()):
                try:
                    self._poll_model(source)
                except Exception:  # noqa: BLE001 - a broken folder must not stop the other models
                    log.exception("polling model %s at %s failed", source.name, source.base_path)

    def _poll_model(self, source: ModelSource) -> None:
        on_disk = list_versions(source.base_path)
        usable = {v: p for v, p in on_disk.items() if self._failed.get((source.name, v)) != _mtime(p)}
        wanted = source.policy.select(usable)
        loaded = self._loaded[source.name]
        if not on_disk and not loaded:
            log.debug("no versions of model %s under %s yet", source.name, source.base_path)
        while wanted - set(loaded):
            for version in sorted(wanted - set(loaded), reverse=True):
                self._load(source.name, version, usable[version])
            # A version that failed to load (or to warm up) gives its place to the next one the policy picks.
            failed = {v for v in wanted if (source.name, v) in self._failed}
            if not failed:
                break
            usable = {v: p for v, p in usable.items() if v not in failed}
            wanted = source.policy.select(usable)
        # The policy counts only versions that loaded: if the newest failed, the previous one stays.
        wanted = source.policy.select(set(self._loaded[source.name]) & set(on_disk))
        for version in sorted(set(loaded) - wanted):
            with self._lock:
                self._loaded[source.name].pop(version, None)
                self._states[source.name][version] = VersionState(version, "END")
            log.info("unloaded model %s version %d", source.name, version)

    def _load(self, name: str, version: int, path: Path) -> None:
        with self._lock:
            self._states[name][version] = VersionState(version, "LOADING")
        log.info("loading model %s version %d from %s", name, version, path)
        try:
            servable = Servable.load(name, version, path, self.limits)
            if self.on_load is not None:
                self.on_load(servable)
        except Exception as exc:  # noqa: BLE001 - any load failure is reported through GetModelStatus
            self._failed[(name, version)] = _mtime(path)
            message = clean_tf_message(str(exc)) or type(exc).__name__
            with self._lock:
                self._states[name][version] = VersionState(version, "END", StatusCode.UNKNOWN, message)
            log.error("model %s version %d failed to load: %s", name, version, message)
            return
        self._failed.pop((name, version), None)
        with self._lock:
            self._loaded[name][version] = servable
            self._states[name][version] = VersionState(version, "AVAILABLE")
        log.info("model %s version %d is available (signatures: %s)", name, version,
                 ", ".join(sorted(servable.runners)))

    def start(self) -> ModelManager:
        """Load the current versions now, then keep polling every ``poll_seconds`` in the background."""
        self.poll()
        if self.poll_seconds > 0 and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll_forever, name="tfduch-model-poller", daemon=True)
            self._thread.start()
        return self

    def _poll_forever(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.poll()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    # -- lookups ---------------------------------------------------------------------------------
    def resolve_label(self, name: str, label: str) -> int:
        """The version a label points at; ``INVALID_ARGUMENT`` for an unknown label, as TF Serving."""
        source = self.sources.get(name)
        if source is None:
            raise ServingError(StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name})")
        if label not in source.labels:
            known = ", ".join(sorted(source.labels)) or "none configured"
            raise ServingError(StatusCode.INVALID_ARGUMENT,
                               f"Unrecognized servable version label: {label} (model {name} has: {known})")
        return int(source.labels[label])

    def get(self, name: str, version: int | None = None, label: str = "") -> Servable:
        """The requested version (by number or label), or the newest loaded one; ``NOT_FOUND`` as TF Serving."""
        if label:
            version = self.resolve_label(name, label)
        with self._lock:
            versions = self._loaded.get(name)
            if versions:
                chosen = max(versions) if version is None else version
                if chosen in versions:
                    return versions[chosen]
        request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
        raise ServingError(StatusCode.NOT_FOUND, f"Servable not found for request: {request}")

    def status(self, name: str, version: int | None = None) -> list[VersionState]:
        with self._lock:
            states = self._states.get(name)
            if states is None or not states:
                raise ServingError(StatusCode.NOT_FOUND, f"Could not find any versions of model {name}")
            if version is None:
                return [states[v] for v in sorted(states, reverse=True)]
            if version not in states:
                raise ServingError(StatusCode.NOT_FOUND, f"Could not find version {version} of model {name}")
            return [states[version]]

    def loaded_versions(self, name: str) -> list[int]:
        with self._lock:
            return sorted(self._loaded.get(name, {}))


def _mtime(version_dir: Path) -> float:
    for name in _SAVED_MODEL_FILES:
        try:
            return (version_dir / name).stat().st_mtime
        except OSError:
            continue
    return -1.0
