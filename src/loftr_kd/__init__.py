"""loftr-kd: distil LoFTR into a tiny real-time coarse matcher."""

__version__ = "0.1.0"
