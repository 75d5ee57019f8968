"""Text inside structured bodies: where a route's transforms find the text they rewrite.

A route's ``text`` (and ``request_text``) says how a body is read: as one text (``body``), as
Server-Sent Events whose data is the text (``sse``), as the JSON string values that selectors
pick in SSE events, NDJSON lines or one JSON document, or with a provider preset (``openai``,
``anthropic``, ``ollama``, ``gemini``). The transforms themselves never see the structure: each
text is fed to the route's transform chain and the results are put back in place.
"""
