"""Geo-referenced archives: scenes (GeoTIFF/COG, STAC) → tiles with footprints → area/time filtered search.

Where it sits in the one-way data flow: beside :mod:`tfduch.data` (it turns scenes into the 8-bit RGB
images the encoders expect) and below the index and the archive pipeline, which call it. It imports
nothing above ``tfduch.data``. The geo libraries (rasterio, pyproj, shapely, pystac) are the optional
extra ``tfduch[geo]``; :func:`require` names it when they are missing. See ``docs/geo.md``.
"""

from __future__ import annotations

from tfduch.errors import TfduchError

__all__ = ["INSTALL_HINT", "require"]

INSTALL_HINT = ('geo-referenced archives need the geo extra: pip install "tfduch[geo]" '
                '(rasterio, pyproj, shapely, pystac)')


def require() -> None:
    """Raise a :class:`TfduchError` naming the extra when a geo library is missing."""
    try:
        import pyproj  # noqa: F401
        import rasterio  # noqa: F401
        import shapely  # noqa: F401
    except ImportError as exc:
        raise TfduchError(f"{INSTALL_HINT} ({exc})") from None
