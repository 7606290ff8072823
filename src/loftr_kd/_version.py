"""The package version (a leaf module: importing it pulls in nothing else of the package)."""

__version__ = "0.1.0"
