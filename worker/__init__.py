"""The arq worker: drains the session plane's streams into PostgreSQL and keeps its tables in shape.

Each concern is one module: `flush` (heartbeats), `history` (session events), `reaper` (timed-out
sessions), `reconcile` (sessions the plane lost), `partitions` (heartbeat partitions), `metrics` (backlog
endpoint).  `settings` wires them into arq; `main` is the `heartline worker` entry point.
"""
