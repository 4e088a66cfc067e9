"""``python -m tfduch.edge encode --model X.tflite IMAGE...`` (no TensorFlow import)."""

from tfduch.edge.cli import main

raise SystemExit(main())
