"""The listener: aiohttp's server and what the proxy asks of it (the HTTP/1.1 protocol with its
limits and refusals, the one module that touches aiohttp's private attributes), the lifecycle
(start, drain, reload), the worker processes and the admin listener."""
