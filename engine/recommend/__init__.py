"""Recommendation from captured interests: sources, fusion, the Recommender."""

from engine.recommend.core import MODEL_FILE, Recommender, model_path

__all__ = ["MODEL_FILE", "Recommender", "model_path"]
