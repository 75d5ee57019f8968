"""``proxy.yaml``: its models and loading (``models``), the problems it reports with their key
paths (``problems``), sizes and durations (``units``) and the generated reference
(``reference``)."""
