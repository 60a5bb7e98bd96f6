"""Accuracy, as an `evaluate` metric module shipped with unipetl (the hub copy is unreachable offline)."""

from __future__ import annotations

import datasets
import evaluate
from sklearn.metrics import accuracy_score


class Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Fraction of predictions equal to the reference label.",
            citation="",
            inputs_description="predictions: list of int; references: list of int",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):  # type: ignore[no-untyped-def]
        return {"accuracy": float(accuracy_score(references, predictions))}
