"""convdsl's version, importable from any layer (the package root imports the whole API)."""
__version__ = "0.1.0"
