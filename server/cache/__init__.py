"""The cache: result frames under tenant-scoped keys, in Parquet.

Owns spilling frames (quota, reservation, eviction, TTL), finding and deleting keys,
their lineage, uploads, the download formats (parquet, arrow, csv, json) and the
result part of an answer computed from an Arrow table.

May import: store, config, errors, clock, telemetry, and the kernel protocol. Nothing above
it.
"""
