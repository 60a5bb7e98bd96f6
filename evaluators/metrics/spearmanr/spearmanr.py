"""Spearman rank correlation (GLUE STS-B); shipped with unipetl."""

from __future__ import annotations

import math

import datasets
import evaluate
from scipy.stats import spearmanr


class Spearmanr(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Spearman's rho between predicted and reference scores (0 when either side is constant).",
            citation="",
            inputs_description="predictions: list of float; references: list of float",
            features=datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}),
        )

    def _compute(self, predictions, references):  # type: ignore[no-untyped-def]
        if len(set(predictions)) < 2 or len(set(references)) < 2:
            return {"spearmanr": 0.0}
        rho = float(spearmanr(references, predictions)[0])
        return {"spearmanr": 0.0 if math.isnan(rho) else rho}
