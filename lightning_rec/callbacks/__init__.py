"""Layer 2: Lightning callbacks shared by every method (exact resume, prediction writing)."""

from lightning_rec.callbacks.exact_resume import ExactResume

__all__ = ["ExactResume"]
