"""The HTTP layer of the worker, in pieces (as full-stack-fastapi-template's ``app/api``).

* :mod:`.main`: which routers are mounted where: the API under :data:`API_PREFIX`
  (``/v1/segment``, ``/v1/model``), the aliases kept for older clients (``/segment``), and the
  unversioned probes, metrics, docs and demo page;
* :mod:`.routes`: one module per resource;
* :mod:`.deps`: what a route needs from ``app.state``, as ``Annotated[..., Depends(...)]`` aliases;
* :mod:`.middleware`: request ids, security headers, latency metrics, the access log, the API key;
* :mod:`.body`: the bounded, timed body reader and the image extraction of ``/v1/segment``;
* :mod:`.error_handlers`: every error as JSON ``{"error": {"code", "message", "request_id"}}``;
* :mod:`.docs`: ``/docs`` from the package's own Swagger UI files.
"""

API_PREFIX = "/v1"
"""The version prefix of every API route. Routers take it as their own ``prefix`` (not from
``include_router``), so each route's template, the ``route`` label of the request metrics, is
the full path."""
