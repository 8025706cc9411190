"""Customers' media: what kind a WAHA message is (kinds.py), where its bytes are kept
(store.py), fetching them from WAHA (fetch.py), and all of it for one message (ingest.py).
docs/conversations.md, "Media", says what a customer's media becomes."""
