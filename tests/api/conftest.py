from tests.engine.conftest import waha

__all__ = ["waha"]
