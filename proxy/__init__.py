"""streamproxy: a streaming reverse proxy that rewrites bodies as they flow."""

__version__ = "0.1.0"
PRODUCT = "streamproxy"
