from tests.access.conftest import pki

__all__ = ["pki"]
