"""Plan an archive's tiles (scenes → windows → footprints, recipe statistics) and read one tile as PNG.

:func:`plan` runs on the driver: it opens each scene's header (and, for a percentile stretch, one decimated
read), so it is cheap and bounded in memory. :func:`tile_job_bytes` runs on a worker for one planned tile;
this is what ``tfduch encode-archive --scenes`` (Beam) and ``tfduch archive tile`` (local) call.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tfduch.errors import DataError
from tfduch.geo.recipe import BandRecipe
from tfduch.geo.scenes import (
    Scene,
    TileSpec,
    footprints,
    list_scenes,
    plan_tiles,
    read_tile,
    scene_stats,
    tile_payload,
    tile_png,
)
from tfduch.io import atomic_write_bytes, atomic_write_json

__all__ = ["TilePlan", "plan", "tile_job_bytes", "write_tiles"]


@dataclass
class TilePlan:
    """Every tile of an archive: its key (``scene#col,row,w,h``), payload and what a worker needs to read it."""

    scenes: list[Scene]
    spec: TileSpec
    recipe: BandRecipe
    keys: list[str] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """What the archive manifest stores: recipe (with per-scene stats), tiling, scenes."""
        return {"recipe": self.recipe.to_dict(), "tiling": vars(self.spec).copy(),
                "scenes": [{"id": s.id, "uri": s.uri, "bands": s.band_names, "width": s.width, "height": s.height,
                            "crs": s.crs, "datetime": s.datetime} for s in self.scenes],
                "tiles": len(self.jobs),
                "trained_gsd_note": "the encoders were trained on UC Merced: RGB, 0.3 m/px (1 ft), 256 px tiles"}


def plan(sources: Sequence[str], spec: TileSpec, recipe: BandRecipe, *, asset: str | None = None,
         thumbnails: str | None = None, log: Callable[[str], None] = print) -> TilePlan:
    """Scenes from ``sources`` (globs / STAC JSON) cut into tiles with footprints; percentile stats computed."""
    from tfduch.geo import require

    require()
    scenes = list_scenes(sources, recipe.bands, asset)
    out = TilePlan(scenes, spec, recipe)
    for scene in scenes:
        if recipe.scale == "percentile" and scene.id not in recipe.stats:
            assert recipe.scale_args is not None
            recipe.stats[scene.id] = scene_stats(scene, recipe.scale_args)
        tiles = plan_tiles(scene, spec)
        if not tiles:
            log(f"scene {scene.id}: smaller than one tile with edge=drop; no tiles")
            continue
        native, wgs84 = footprints(scene, np.array([t["window"] for t in tiles]))
        sd = scene.to_dict()
        for i, tile in enumerate(tiles):
            payload = tile_payload(scene, tile, native[i], wgs84[i])
            if thumbnails:
                payload["thumbnail"] = _thumb(thumbnails, payload)
            out.keys.append(payload["path"])
            out.jobs.append({"scene": sd, "tile": tile, "payload": payload})
    return out


def _thumb(folder: str | Path, payload: dict[str, Any]) -> str:
    return str(Path(folder) / payload["scene_id"] /
               f"r{round(payload['window_row'])}_c{round(payload['window_col'])}.png")


def tile_job_bytes(job: dict[str, Any], recipe: dict[str, Any] | BandRecipe) -> tuple[bytes | None, str | None]:
    """PNG bytes of a planned tile, or ``(None, reason)``: ``skipped: ...`` (mostly nodata) or a read error."""
    rec = recipe if isinstance(recipe, BandRecipe) else BandRecipe.from_dict(recipe)
    scene = Scene.from_dict(job["scene"])
    try:
        rgb, reason = read_tile(scene, job["tile"], rec)
    except Exception as exc:  # rasterio errors, corrupt blocks, vanished files: dead-lettered, the job goes on
        return None, f"cannot read window {job['tile']['window']} of {scene.uri}: {type(exc).__name__}: {exc}"
    if rgb is None:
        return None, reason
    data = tile_png(rgb)
    thumb = job["payload"].get("thumbnail")
    if thumb:
        Path(thumb).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(thumb, data)
    return data, None


def write_tiles(tile_plan: TilePlan, out: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Local tiling without a model: PNG tiles + ``tiles.jsonl`` (payloads) + ``geo.json`` (recipe) under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = tile_plan.recipe
    lines, skipped, failed = [], 0, []
    for job in tile_plan.jobs:
        job = {**job, "payload": {**job["payload"], "thumbnail": _thumb(out / "tiles", job["payload"])}}
        data, reason = tile_job_bytes(job, recipe)
        if data is None:
            if reason and reason.startswith("skipped"):
                skipped += 1
            else:
                failed.append({"path": job["payload"]["path"], "reason": reason})
            continue
        lines.append(json.dumps(job["payload"]))
    atomic_write_bytes(out / "tiles.jsonl", ("\n".join(lines) + "\n").encode() if lines else b"")
    summary = {"scenes": len(tile_plan.scenes), "tiles_planned": len(tile_plan.jobs), "tiles_written": len(lines),
               "skipped_nodata": skipped, "failed": len(failed)}
    atomic_write_json(out / "geo.json", {**tile_plan.describe(), "summary": summary, "failures": failed})
    log(f"{len(lines)} tiles written, {skipped} skipped as mostly nodata, {len(failed)} failed → {out}")
    if not tile_plan.jobs:
        raise DataError("no tiles planned: the scenes are smaller than one tile")
    return summary
