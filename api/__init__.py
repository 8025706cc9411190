"""The operator API (`wsm api`)."""
