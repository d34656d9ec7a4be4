"""gothic: train a small GPT on a folder of books with a reproducible DVC pipeline, then talk to it."""

__version__ = "0.1.0"
