"""Prediction records: the answer with and without memory, and what explains it."""
from engine.explain.predict import MODES, PredictError, Predictor, predict, retrieve, retrieve_many
from engine.explain.record import Explanation, InjectedEntity, RetrievedEntry

__all__ = ["MODES", "Explanation", "InjectedEntity", "PredictError", "Predictor", "RetrievedEntry", "predict", "retrieve",
           "retrieve_many"]
