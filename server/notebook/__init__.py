"""Notebooks: a session's steps as a Jupyter notebook, as a percent script, and back.

Owns the notebook format of DataExec both ways and nothing else: no I/O, no server
state. Export reads step records (anything shaped like ``export.Step``); import reads a
posted notebook into cells for the session manager to replay.

May import: errors, clock. Nothing of sessions, kernels or HTTP.
"""
