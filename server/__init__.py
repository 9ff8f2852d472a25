"""DataExec: a data execution server for LLM-written SQL and pandas code."""

__version__ = "0.1.0"
