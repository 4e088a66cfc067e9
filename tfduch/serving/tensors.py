"""TensorProto <-> numpy for the request path, without ``tf.make_tensor_proto`` / ``tf.make_ndarray``'s overhead.

Both TensorFlow helpers are general (lists, scalars, broadcasting, every dtype) and cost 10-50 µs per
tensor in Python; a Predict request converts its inputs on the server and its outputs on both sides, so
with small batches that is a visible part of the serving overhead. The common cases here are a
``tensor_content`` byte copy for numeric arrays and ``string_val`` for strings; everything else falls
back to TensorFlow's helpers, so the results (and the errors on malformed protos) are the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

__all__ = ["array_to_tensor_proto", "tensor_proto_to_array"]

# Numeric dtypes whose TensorProto.tensor_content is the little-endian numpy buffer.
_NUMPY_TO_DT = {
    np.dtype(np.float32): types_pb2.DT_FLOAT, np.dtype(np.float64): types_pb2.DT_DOUBLE,
    np.dtype(np.int8): types_pb2.DT_INT8, np.dtype(np.uint8): types_pb2.DT_UINT8,
    np.dtype(np.int16): types_pb2.DT_INT16, np.dtype(np.uint16): types_pb2.DT_UINT16,
    np.dtype(np.int32): types_pb2.DT_INT32, np.dtype(np.uint32): types_pb2.DT_UINT32,
    np.dtype(np.int64): types_pb2.DT_INT64, np.dtype(np.uint64): types_pb2.DT_UINT64,
    np.dtype(np.bool_): types_pb2.DT_BOOL,
}
_DT_TO_NUMPY = {dt: dtype for dtype, dt in _NUMPY_TO_DT.items()}
_LITTLE_ENDIAN = np.little_endian


def array_to_tensor_proto(value: Any) -> tensor_pb2.TensorProto:
    """A TensorProto for a numpy array (numeric, or object / bytes / str for ``DT_STRING``).

    Anything else (lists, scalars, float16, ...) goes through ``tf.make_tensor_proto`` unchanged.
    """
    if isinstance(value, np.ndarray) and value.ndim >= 1 and _LITTLE_ENDIAN:
        dt = _NUMPY_TO_DT.get(value.dtype)
        if dt is not None:
            proto = tensor_pb2.TensorProto(dtype=dt)
            _set_shape(proto, value.shape)
            proto.tensor_content = np.ascontiguousarray(value).tobytes()
            return proto
        if value.dtype == object or value.dtype.kind in "SU":
            items = value.ravel().tolist()
            if all(isinstance(x, bytes) for x in items):
                proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
                _set_shape(proto, value.shape)
                proto.string_val.extend(items)
                return proto
            if all(isinstance(x, str) for x in items):
                return array_to_tensor_proto(np.array([x.encode("utf-8") for x in items],
                                                      dtype=object).reshape(value.shape))
    import tensorflow as tf

    return tf.make_tensor_proto(value)


def _set_shape(proto: tensor_pb2.TensorProto, shape: tuple[int, ...]) -> None:
    dims = proto.tensor_shape.dim
    for size in shape:
        dims.add(size=size)


def tensor_proto_to_array(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """The numpy array of a TensorProto (``DT_STRING`` → object array of bytes), as ``tf.make_ndarray``."""
    shape = proto.tensor_shape
    if not shape.unknown_rank and _LITTLE_ENDIAN:
        dims = [d.size for d in shape.dim]
        if all(d >= 0 for d in dims):
            count = int(np.prod(dims, dtype=np.int64)) if dims else 1
            if proto.dtype == types_pb2.DT_STRING:
                if len(proto.string_val) == count and count:
                    return np.array(list(proto.string_val), dtype=object).reshape(dims)
            else:
                dtype = _DT_TO_NUMPY.get(proto.dtype)
                content = proto.tensor_content
                if dtype is not None and content and len(content) == count * dtype.itemsize:
                    return np.frombuffer(content, dtype=dtype).reshape(dims).copy()
    import tensorflow as tf

    return tf.make_ndarray(proto)
