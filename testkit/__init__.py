"""What the tests and the benchmarks share: media files made on the spot, a loopback media origin,
engine faults on the runner's forward hook, checkpoints taken apart, /proc readings of a
server's processes, and a throwaway PostgreSQL server (postgres.py, for the state database).

Neither `server` nor `model_runtime` imports it, and it is not in the wheel; `bench/` imports it
instead of `tests/` (tests/test_import_graph.py holds both rules).
"""
