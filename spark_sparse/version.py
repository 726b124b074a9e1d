"""The package's version, in a module of its own: the command line reads it without importing torch."""
__version__ = "0.1.0"
