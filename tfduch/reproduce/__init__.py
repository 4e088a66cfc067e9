"""One harness for the whole comparison table: every method × code length × seed on the same features.

Why: users compare methods, and the papers compare DUCH with DJSRH and JDSH. Every cell here uses the
same cached frozen features (:func:`tfduch.pipeline.prepare`), the same protocol split and the same
evaluation, so differences come from the methods alone. A cell is one (method, bits, seed) training
and evaluation; its result is written atomically to ``OUT/cells/<cell>.json`` and skipped on a re-run
whose settings (resolved config, dataset and split) are unchanged, so an interrupted reproduction
resumes where it stopped. The table (``reproduce.md`` + ``reproduce.json``) and one PR-curve figure per
code length are rebuilt from the requested cells at the end of each run; runs with other method lists
(e.g. an ablation) can share the output folder, reusing its cells, under another table ``name``.

Rows:

* learned methods (``duch``, ``chnr`` when :mod:`tfduch.models.chnr` exists, ``cach``, ``djsrh``,
  ``jdsh``, and CACH ablation variants such as ``cach-no-similarity``) — trained with their
  ``configs/<method>.yaml``; each also yields a "tanh · cosine" row (its continuous codes ranked by
  cosine), which shows what binarisation costs;
* classical hashing on the same features: ``cca-itq``, ``ridge-itq``;
* ``cosine`` — cosine ranking of the frozen encoder features themselves, no training (uni-modal
  directions only: the image and text encoders do not share a space).
"""

from tfduch.reproduce.cells import CELL_VERSION, cell_path, load_cell, same_settings, settings_of
from tfduch.reproduce.grid import (
    CLASSICAL,
    DEFAULT_CONFIG_DIR,
    LEARNED,
    PUBLISHED,
    REFERENCE,
    VARIANTS,
    Cell,
    ReproduceSpec,
    base_config,
    cell_config,
    chnr_unavailable,
    display_name,
    known_methods,
    parse_list,
)
from tfduch.reproduce.reporting import build_table, pr_figure, table_markdown, write_table
from tfduch.reproduce.runners import ReproduceResult, reproduce, run_cell

__all__ = ["CELL_VERSION", "CLASSICAL", "Cell", "DEFAULT_CONFIG_DIR", "LEARNED", "PUBLISHED", "REFERENCE",
           "ReproduceResult", "ReproduceSpec", "VARIANTS", "base_config", "build_table", "cell_config", "cell_path",
           "chnr_unavailable", "display_name", "known_methods", "load_cell", "parse_list", "pr_figure", "reproduce",
           "run_cell", "same_settings", "settings_of", "table_markdown", "write_table"]
