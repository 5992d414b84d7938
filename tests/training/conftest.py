from tests.conftest import tiny_train_overrides

__all__ = ["tiny_train_overrides"]
