"""The worker fleet: a supervisor and N worker processes that take conversations from the
per-conversation queue (shared/queue_consumer.py), hand each message to the handler
(worker/handler.py) in order, and commit its work. `wsm worker --help` for the command."""
