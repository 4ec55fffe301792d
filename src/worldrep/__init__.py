"""worldrep: how small transformers come to represent a world."""

__version__ = "0.1.0"
