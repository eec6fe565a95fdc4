"""Recommendation from captured interests: sources, fusion, the learner and its snapshots.

``Learner`` (learner.py) owns the mutable models on one thread and publishes
immutable ``Models`` snapshots (models.py) that any thread scores from;
``Recommender`` (core.py) is the same behind the former single-object API.
"""

from interest.engine.recommend.core import MODEL_FILE, Recommender, model_path
from interest.engine.recommend.learner import Learner
from interest.engine.recommend.models import Models

__all__ = ["MODEL_FILE", "Learner", "Models", "Recommender", "model_path"]
