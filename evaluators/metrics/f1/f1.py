"""Binary F1 of the positive class (label 1), as in GLUE MRPC / QQP; shipped with unipetl."""

from __future__ import annotations

import datasets
import evaluate
from sklearn.metrics import f1_score


class F1(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="F1 = 2PR/(P+R) of the positive class (pos_label, default 1); average='macro' etc. for multi-class.",
            citation="",
            inputs_description="predictions: list of int; references: list of int; pos_label: int; average: str",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, pos_label=1, average="binary"):  # type: ignore[no-untyped-def]
        return {"f1": float(f1_score(references, predictions, pos_label=pos_label, average=average, zero_division=0.0))}
