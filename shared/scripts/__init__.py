"""Lua scripts of the queue protocol, one file per script, named after what it does.

Each starts with `#!lua` so Redis 7 runs it with script flags (and, on a cluster, refuses keys
it did not declare), and binds KEYS/ARGV to named locals on its first lines.
"""
