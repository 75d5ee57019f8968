"""Upstreams: an upstream's targets, balancing, retries, failure table and health checks
(``group``), the transports that carry a request to a target (``transports``: the native
HTTP/1.1 client of ``h1client``/``h1pool``, or aiohttp's ``ClientSession``)."""
