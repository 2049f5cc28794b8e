"""Reliability harness: fuzz, mutated media, overload, faults, concurrency integrity and a soak against
real `llava-serve` processes on loopback (`python -m bench.stress`; figures in docs/RELIABILITY.md)."""
