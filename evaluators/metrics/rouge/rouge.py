"""ROUGE-1/2/L (F-measure, mean over examples) with rouge-score and Porter stemming; shipped with unipetl.

Summary-level ROUGE-Lsum is given too: newlines separate sentences, as in the BART / XSum set-up.

Tokenization (`tokenizer="unicode"`, the default): lower-case, then a token is a run of letters,
combining marks and digits of *any* script (Unicode categories L*, M*, N*); everything else
separates tokens. Han ideographs and kana are one token per character (Chinese and Japanese are
written without spaces; character ROUGE is their usual choice). The Porter stemmer is applied to
ASCII tokens of more than 3 characters only. On ASCII text this is exactly rouge-score's default
tokenizer, so English scores are unchanged; that tokenizer (`tokenizer="rouge_score"`) keeps only
[a-z0-9] and scores every Chinese, Hindi or Russian summary 0, even an exact copy. Scripts
without spaces other than Han / kana (Thai, Khmer, …) are compared per space-separated chunk.
"""

from __future__ import annotations

import re
import unicodedata

import datasets
import evaluate
from rouge_score import rouge_scorer, tokenizers

TOKENIZATION = ("unicode: lower-cased runs of letters / marks / digits of any script, one token per Han or kana character, "
                "Porter stemming of ASCII tokens longer than 3 characters (identical to rouge-score's tokenizer on ASCII text)")
_ASCII_TOKEN = re.compile(r"[a-z0-9]+")
# Han (CJK unified ideographs, extensions, compatibility), hiragana, katakana (+ half-width)
_CHAR_TOKEN = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f]")


class UnicodeTokenizer(tokenizers.Tokenizer):
    """rouge-score's tokenizer for every script (see the module docstring)."""

    def __init__(self, use_stemmer: bool = False) -> None:
        from nltk.stem import porter

        self._stemmer = porter.PorterStemmer() if use_stemmer else None

    def tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        word: list[str] = []
        for ch in text.lower():
            if _CHAR_TOKEN.match(ch):
                self._flush(word, tokens)
                tokens.append(ch)
            elif unicodedata.category(ch)[0] in "LMN":
                word.append(ch)
            else:
                self._flush(word, tokens)
        self._flush(word, tokens)
        return tokens

    def _flush(self, word: list[str], tokens: list[str]) -> None:
        if not word:
            return
        token = "".join(word)
        word.clear()
        if self._stemmer is not None and len(token) > 3 and _ASCII_TOKEN.fullmatch(token):
            token = self._stemmer.stem(token)
        tokens.append(token)


class Rouge(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=f"Mean F-measure of ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum (rouge-score, stemmed). Tokenization: {TOKENIZATION}.",
            citation="Lin, ROUGE: A Package for Automatic Evaluation of Summaries, 2004.",
            inputs_description="predictions: list of str; references: list of str; use_stemmer: bool; "
                               "tokenizer: 'unicode' (default, every script) or 'rouge_score' (its ASCII-only default, for comparison)",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, use_stemmer=True, tokenizer="unicode"):  # type: ignore[no-untyped-def]
        types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
        if tokenizer not in ("unicode", "rouge_score"):
            raise ValueError(f"`tokenizer` must be 'unicode' or 'rouge_score', got {tokenizer!r}.")
        tok = UnicodeTokenizer(use_stemmer) if tokenizer == "unicode" else None
        scorer = rouge_scorer.RougeScorer(types, use_stemmer=use_stemmer, tokenizer=tok)
        totals = dict.fromkeys(types, 0.0)
        for pred, ref in zip(predictions, references, strict=True):
            scores = scorer.score(ref, pred)
            for t in types:
                totals[t] += scores[t].fmeasure
        n = max(len(predictions), 1)
        return {t: totals[t] / n for t in types}
