"""lcm-trainer: train sentence-level concept models (next-concept prediction) with PyTorch Lightning."""
__version__ = "0.1.0"

from lcm.errors import LCMError  # noqa: E402

__all__ = ["LCMError", "__version__"]
