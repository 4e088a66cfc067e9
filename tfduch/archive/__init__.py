"""Archive-scale encoding: image files → sharded code files (``tfduch encode-archive``) the index ingests.

``tfduch.archive.shards`` (the file format) needs only numpy; ``tfduch.archive.beam`` (the pipeline)
needs the ``beam`` extra and is imported only by the command that runs it.
"""
