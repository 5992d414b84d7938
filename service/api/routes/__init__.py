"""One router per resource: ``segment``, ``model`` (versioned, under ``/v1``), ``health``
(``/healthz``, ``/readyz``), ``metrics`` (``/metrics``) and ``demo`` (``/``, ``/static``)."""
