"""Transforms applied to bodies: the chains built from a route's entries (``loader``), a body's
plan (``plan``: decode, transform, encode), content codings (``codecs``), media types and
charsets (``media``), and the text inside structured bodies (``text``). Plugins import only
:mod:`proxy.transform_api`."""
