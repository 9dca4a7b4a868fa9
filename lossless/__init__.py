"""lossless: a literate rebuild of the loSSLess paper."""

__version__ = "0.1.0"
