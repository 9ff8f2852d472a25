"""Thin HTTP: parse and validate a request, call one service door, serialize the answer.

Each module ends with its ``routes``; ``server/app.py`` joins them. The request and
answer bodies are declared once (``bodies``), and ``/openapi.json`` is built from them.

May import: every room below (through ``runtime``'s services), auth, config, errors.
Nothing imports handlers but ``app``.
"""
