"""Layer 2: Lightning callbacks shared by every method (exact resume, recommendation writing)."""

from lightning_rec.callbacks.exact_resume import ExactResume
from lightning_rec.callbacks.recommendation_writer import RecommendationWriter

__all__ = ["ExactResume", "RecommendationWriter"]
