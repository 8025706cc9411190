"""The webhook gateway: WAHA -> verify -> dedupe + enqueue in one Redis round trip -> 200.

Nothing the gateway answered 2xx for is ever dropped: an event Redis cannot confirm within
the deadline goes to a local fsync'd spool and is replayed when Redis answers again.
See docs/gateway.md. Entry point: `wsm gateway` / `python -m gateway` (gateway.cli).
"""
