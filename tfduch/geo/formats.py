"""Search results as GeoJSON (a FeatureCollection QGIS opens) or as STAC Items (``pystac``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["GEO_FIELDS", "to_geojson", "to_stac"]

# payload fields that become geometry / window rather than plain properties
GEO_FIELDS = ("footprint", "footprint_wgs84", "transform", "lon_min", "lat_min", "lon_max", "lat_max")


def _feature(hit: dict[str, Any], query: str | None) -> dict[str, Any]:
    ring = hit.get("footprint_wgs84")
    props = {k: v for k, v in hit.items() if k not in GEO_FIELDS and k != "captions"}
    props["window"] = [hit.get("window_col"), hit.get("window_row"), hit.get("window_width"), hit.get("window_height")]
    props["thumbnail"] = hit.get("thumbnail")
    if query is not None:
        props["query"] = query
    return {"type": "Feature", "id": hit.get("id"),
            "geometry": {"type": "Polygon", "coordinates": [ring]} if ring else None,
            "bbox": [hit["lon_min"], hit["lat_min"], hit["lon_max"], hit["lat_max"]] if ring else None,
            "properties": props}


def to_geojson(results: Sequence[Sequence[dict[str, Any]]], queries: Sequence[str] | None = None) -> dict[str, Any]:
    """One FeatureCollection of all queries' hits (``Hit.to_dict()`` rows); each feature has rank, distance,
    scene id, tile window and thumbnail path as properties, its WGS84 footprint as geometry."""
    features = [_feature(hit, queries[qi] if queries else None)
                for qi, hits in enumerate(results) for hit in hits]
    return {"type": "FeatureCollection", "features": features}


def to_stac(results: Sequence[Sequence[dict[str, Any]]], queries: Sequence[str] | None = None) -> dict[str, Any]:
    """An ItemCollection (STAC 1.x, built and validated by ``pystac``): one Item per hit, the tile as an asset."""
    from datetime import datetime, timezone

    import pystac

    items = []
    for qi, hits in enumerate(results):
        for hit in hits:
            f = _feature(hit, queries[qi] if queries else None)
            when = datetime.fromisoformat(hit["datetime"]) if hit.get("datetime") else None
            props = {k: v for k, v in f["properties"].items() if k != "datetime" and v is not None}
            props["proj:code"] = hit.get("crs")
            props["proj:transform"] = hit.get("transform")
            extra: dict[str, Any] = {}
            if when is None:  # STAC wants a time: an unknown one is the open range 1970..now, flagged
                extra = {"start_datetime": datetime(1970, 1, 1, tzinfo=timezone.utc),
                         "end_datetime": datetime.now(timezone.utc)}
                props["tfduch:datetime_unknown"] = True
            item = pystac.Item(id=f"q{qi}-r{hit['rank']}-{hit.get('scene_id', 'item')}-{hit['id']}",
                               geometry=f["geometry"], bbox=f["bbox"], datetime=when, properties=props,
                               stac_extensions=["https://stac-extensions.github.io/projection/v2.0.0/schema.json"],
                               **extra)
            if hit.get("thumbnail"):
                item.add_asset("thumbnail", pystac.Asset(href=hit["thumbnail"], media_type=pystac.MediaType.PNG,
                                                         roles=["thumbnail"]))
            if hit.get("scene"):
                item.add_asset("scene", pystac.Asset(href=hit["scene"], roles=["data"],
                                                     title="source scene (window in properties)"))
            items.append(item)
    return pystac.ItemCollection(items).to_dict()
