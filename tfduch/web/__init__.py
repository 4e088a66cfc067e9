"""``tfduch web``: a local search page over an archive index (text box → thumbnails → nearest captions)."""

from tfduch.web.app import SearchApp, serve

__all__ = ["SearchApp", "serve"]
