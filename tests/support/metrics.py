"""Prometheus counters read in-process (the default registry), for tests that check what a
piece of code counted."""

from __future__ import annotations

from prometheus_client import REGISTRY


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Counted:
    """Counter deltas over a block."""

    def __init__(self, name: str, **labels: str) -> None:
        self.name, self.labels = name, labels
        self.start = metric(name, **labels)

    @property
    def delta(self) -> float:
        return metric(self.name, **self.labels) - self.start
