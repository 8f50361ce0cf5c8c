"""The captions under images, one wording for the card's plots, the Space's galleries and the API."""

from __future__ import annotations


def class_probability(name: str, probability: float) -> str:
    """'cat (0.87)': a class and the probability the model gives it."""
    return f"{name} ({float(probability):.2f})"


def mistake(predicted: str, probability: float, true: str) -> str:
    """'cat (0.91) / dog': a mistake, predicted class (its probability) / true class."""
    return f"{class_probability(predicted, probability)} / {true}"


MISTAKE_LEGEND = "predicted (probability) / true"
