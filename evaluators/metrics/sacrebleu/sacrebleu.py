"""Corpus BLEU with sacreBLEU (0–100); shipped with unipetl.

Tokenization: sacreBLEU's `13a` (the WMT default), except that references containing Han
ideographs are scored with sacreBLEU's `zh` tokenizer (one token per ideograph, `13a`-style for
the rest), which is what sacreBLEU itself picks for a Chinese target (`-l xx-zh`): `13a` does not
segment text written without spaces, so a Chinese hypothesis that differs in one character would
score 0. No script is dropped by either. Pass `tokenize=` to choose another (e.g. 'char', 'intl').
"""

from __future__ import annotations

import re

import datasets
import evaluate
import sacrebleu

TOKENIZATION = "sacreBLEU 13a; zh (one token per Han ideograph) when the references contain Han ideographs, as sacreBLEU does for -l xx-zh"
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")


def default_tokenize(references: list[str]) -> str:
    return "zh" if any(_HAN.search(r) for r in references) else "13a"


class Sacrebleu(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=f"sacreBLEU corpus score of detokenized hypotheses against one reference each. Tokenization: {TOKENIZATION}.",
            citation="Post, A Call for Clarity in Reporting BLEU Scores, WMT 2018.",
            inputs_description="predictions: list of str; references: list of str; tokenize: str (default: 13a, or zh for Han references)",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, tokenize=None):  # type: ignore[no-untyped-def]
        refs = list(references)
        bleu = sacrebleu.corpus_bleu(list(predictions), [refs], tokenize=tokenize or default_tokenize(refs))
        return {"bleu": float(bleu.score)}  # the signature (tokenizer, smoothing) is fixed by `tokenize`
