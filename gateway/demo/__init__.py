"""Demo backends: real FastAPI + SQLite services (``ledger``, ``workspace``) that the demo,
the tests and the benchmarks route to. Run one with ``python -m gateway.demo.ledger --port 0``."""

__all__: list[str] = []
