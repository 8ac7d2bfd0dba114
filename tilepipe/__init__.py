"""tilepipe: keep web map tiles in sync with their data."""

__version__ = "0.1.0"
