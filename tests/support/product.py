"""The whole product as real processes for a test module: wsm/load/product.py's stack, the one
`wsm loadtest` runs, with one worker process and no nginx unless the module asks for more."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from wsm.load.product import ProductStack, StackOptions, build_stack
from wsm.stack import running


@contextmanager
def started_product(home: Path, **options: Any) -> Iterator[ProductStack]:
    """Built under `home` and started; on the way out every part is stopped in the order that
    loses nothing (wsm.stack.running), whatever ended the block."""
    product = build_stack(StackOptions(home=home, **{"processes": 1, "nginx": "off", **options}))
    with running(product.stack, product.stop_order):
        product.start()
        yield product
