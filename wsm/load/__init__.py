"""`wsm loadtest`'s parts: the private product stack, the simulated customers, the chaos and
the checks. The command itself is wsm/loadtest.py."""
