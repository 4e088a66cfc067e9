"""The code-shard file format, under its historical name: it lives in :mod:`tfduch.index.code_shards`.

(The index ingests shards, so their format sits with it; archive encoding, above the index, writes them.)
"""

from tfduch.index.code_shards import (
    DEAD_LETTER_NAME,
    MANIFEST_NAME,
    SHARD_NAME,
    Shard,
    ShardError,
    dead_letter_name,
    file_exists,
    inputs_digest,
    is_remote,
    iter_shards,
    join,
    read_dead_letters,
    read_manifest,
    read_shard,
    read_shard_meta,
    shard_name,
    write_manifest,
    write_shard,
)

__all__ = [
    "DEAD_LETTER_NAME",
    "MANIFEST_NAME",
    "SHARD_NAME",
    "Shard",
    "ShardError",
    "dead_letter_name",
    "file_exists",
    "inputs_digest",
    "is_remote",
    "iter_shards",
    "join",
    "read_dead_letters",
    "read_manifest",
    "read_shard",
    "read_shard_meta",
    "shard_name",
    "write_manifest",
    "write_shard",
]
