"""Telemetry: the Prometheus metrics of one server (``metrics``), what a step reports
(``steps``) and the log lines (``logs``: JSON or text, one line per request and per
execution, never a secret).

A top unit, like ``config``: every room may report to it. May import: nothing of the server
(prometheus_client, orjson and the standard library only).
"""
