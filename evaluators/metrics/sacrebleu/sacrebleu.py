"""Corpus BLEU with sacreBLEU (13a tokenization by default, 0–100); shipped with unipetl."""

from __future__ import annotations

import datasets
import evaluate
import sacrebleu


class Sacrebleu(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="sacreBLEU corpus score of detokenized hypotheses against one reference each.",
            citation="Post, A Call for Clarity in Reporting BLEU Scores, WMT 2018.",
            inputs_description="predictions: list of str; references: list of str; tokenize: str",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, tokenize="13a"):  # type: ignore[no-untyped-def]
        bleu = sacrebleu.corpus_bleu(list(predictions), [list(references)], tokenize=tokenize)
        return {"bleu": float(bleu.score)}  # the signature (tokenizer, smoothing) is fixed by `tokenize`
