"""The operator's tools: the ``cfpo`` command line, the embedded stack, the demo, reports, sweeps, dashboards.

Nothing outside this package imports it; it talks to the services over HTTP and Redis, and starts them with
``python -m``.
"""
