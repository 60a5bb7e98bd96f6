"""Pearson correlation (GLUE STS-B); shipped with unipetl."""

from __future__ import annotations

import math

import datasets
import evaluate
from scipy.stats import pearsonr


class Pearsonr(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Pearson's r between predicted and reference scores (0 when either side is constant).",
            citation="",
            inputs_description="predictions: list of float; references: list of float",
            features=datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}),
        )

    def _compute(self, predictions, references):  # type: ignore[no-untyped-def]
        # a constant prediction (an untrained regressor) has no correlation; scipy says nan, we say 0
        if len(set(predictions)) < 2 or len(set(references)) < 2:
            return {"pearsonr": 0.0}
        r = float(pearsonr(references, predictions)[0])
        return {"pearsonr": 0.0 if math.isnan(r) else r}
