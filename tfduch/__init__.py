"""tfduch: unsupervised deep cross-modal hashing for remote-sensing image-text retrieval."""

__version__ = "0.1.0"
