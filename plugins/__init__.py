"""Built-in body transforms: ``redact`` and ``tag_lines``."""
