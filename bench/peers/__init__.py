"""Peer-system benchmarks (Restate, DBOS) run in their own virtualenv; see README.md."""
