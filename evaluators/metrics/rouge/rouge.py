"""ROUGE-1/2/L (F-measure, mean over examples) with rouge-score and Porter stemming; shipped with unipetl.

Summary-level ROUGE-Lsum is given too: newlines separate sentences, as in the BART / XSum set-up.
"""

from __future__ import annotations

import datasets
import evaluate
from rouge_score import rouge_scorer


class Rouge(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Mean F-measure of ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum (rouge-score, stemmed).",
            citation="Lin, ROUGE: A Package for Automatic Evaluation of Summaries, 2004.",
            inputs_description="predictions: list of str; references: list of str; use_stemmer: bool",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, use_stemmer=True):  # type: ignore[no-untyped-def]
        types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
        scorer = rouge_scorer.RougeScorer(types, use_stemmer=use_stemmer)
        totals = dict.fromkeys(types, 0.0)
        for pred, ref in zip(predictions, references, strict=True):
            scores = scorer.score(ref, pred)
            for t in types:
                totals[t] += scores[t].fmeasure
        n = max(len(predictions), 1)
        return {t: totals[t] / n for t in types}
