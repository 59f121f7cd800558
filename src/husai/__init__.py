"""HUSAI: are sparse-autoencoder features stable across seeds?"""

__version__ = "0.1.0"
