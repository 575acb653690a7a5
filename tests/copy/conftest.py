"""Copy-engine tests build configs by hand and run passes in-process."""

from tests.helpers.passes import make_config, sync

__all__ = ["make_config", "sync"]
