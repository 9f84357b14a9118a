"""lightning-rec: a PyTorch Lightning component zoo of recent recommenders."""

__version__ = "0.1.0"
__all__ = ["__version__"]
