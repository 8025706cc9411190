"""The simulator's webhooks and the load test's customers use the product's lean HTTP
transport (shared/lean_http.py: why, and its scope)."""

from shared.lean_http import LeanHTTPTransport

__all__ = ["LeanHTTPTransport"]
