"""The TensorFlow-free edge runtime: image files → packed binary codes with an exported TFLite model.

For ground stations that cannot carry TensorFlow: LiteRT (``ai-edge-litert``, the ``edge`` extra) runs the
``image_<variant>.tflite`` file of an export, Pillow decodes, and :mod:`tfduch.edge.resize` reproduces the
export's resize bit for bit, so the codes equal TensorFlow's. Nothing here (nor in the ``tfduch`` package
``__init__``) imports TensorFlow or Keras; a test runs it in a subprocess and checks ``sys.modules``.

>>> from tfduch.edge import EdgeEncoder
>>> encoder = EdgeEncoder("exports/tfduch/1/assets.extra/tflite/image_int8.tflite")
>>> packed = encoder.encode_files(["scene.png"])   # uint8 [1, K/8], numpy.packbits order
"""

from __future__ import annotations

from tfduch.edge.runtime import EdgeEncoder, EdgeModelInfo, load_image, pack_codes, preprocess

__all__ = ["EdgeEncoder", "EdgeModelInfo", "load_image", "pack_codes", "preprocess"]
