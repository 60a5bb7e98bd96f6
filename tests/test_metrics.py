"""The shipped `evaluate` metric modules agree with hand computations and with the reference libraries."""

from __future__ import annotations

import math

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from unipetl.evaluators.metrics import METRICS, compute_metrics, load_metric, metric_key_direction
from unipetl.spaces.registry import UnipetlError

PRED = [1, 0, 1, 1, 0, 1, 0, 0]
REF = [1, 0, 0, 1, 1, 1, 0, 1]
# TP = 3 (idx 0, 3, 5), TN = 2 (1, 6), FP = 1 (2), FN = 2 (4, 7)
TP, TN, FP, FN = 3, 2, 1, 2


def test_accuracy_by_hand() -> None:
    assert compute_metrics(["accuracy"], PRED, REF)["accuracy"] == pytest.approx((TP + TN) / 8, abs=1e-12)


def test_f1_by_hand() -> None:
    p, r = TP / (TP + FP), TP / (TP + FN)
    assert compute_metrics(["f1"], PRED, REF)["f1"] == pytest.approx(2 * p * r / (p + r), abs=1e-12)


def test_matthews_by_hand() -> None:
    mcc = (TP * TN - FP * FN) / math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))
    assert compute_metrics(["matthews_correlation"], PRED, REF)["matthews_correlation"] == pytest.approx(mcc, abs=1e-12)


def test_pearson_spearman_by_hand() -> None:
    x = [1.0, 2.0, 4.0, 3.0, 5.0]
    y = [1.5, 2.0, 3.0, 3.5, 6.0]
    mx, my = sum(x) / 5, sum(y) / 5
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    r = cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    # ranks: x → 1 2 4 3 5, y → 1 2 3 4 5; d² = 0 0 1 1 0 → rho = 1 − 6·2 / (5·24)
    out = compute_metrics(["pearsonr", "spearmanr"], x, y)
    assert out["pearsonr"] == pytest.approx(r, abs=1e-12)
    assert out["spearmanr"] == pytest.approx(1 - 6 * 2 / (5 * 24), abs=1e-12)


def test_constant_predictions_correlate_zero() -> None:
    out = compute_metrics(["pearsonr", "spearmanr"], [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    assert out == {"pearsonr": 0.0, "spearmanr": 0.0}


PREDS = ["the cats were sitting on the mat today", "police arrested two men in london", "a new museum opens"]
REFS = ["the cat sat on the mat", "two men were arrested by police in london on friday", "the museum opened in june"]


def test_rouge_matches_rouge_score_with_stemming() -> None:
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    want = {k: sum(scorer.score(r, p)[k].fmeasure for p, r in zip(PREDS, REFS, strict=True)) / 3 for k in ("rouge1", "rouge2", "rougeL")}
    got = compute_metrics(["rouge"], PREDS, REFS)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-12)
    # stemming matters here ("cats"/"cat", "opens"/"opened"): without it ROUGE-1 is lower
    plain = load_metric("rouge").compute(predictions=PREDS, references=REFS, use_stemmer=False)
    assert plain["rouge1"] < got["rouge1"]


def test_sacrebleu_matches_sacrebleu() -> None:
    want = sacrebleu.corpus_bleu(PREDS, [REFS]).score
    assert compute_metrics(["sacrebleu"], PREDS, REFS)["bleu"] == pytest.approx(want, abs=1e-9)
    assert compute_metrics(["bleu"], REFS, REFS)["bleu"] == pytest.approx(100.0)


def test_registry_directions_and_unknown() -> None:
    assert set(METRICS.names()) == {"accuracy", "f1", "matthews_correlation", "pearsonr", "spearmanr", "rouge", "sacrebleu"}
    assert metric_key_direction("rouge2") is True
    with pytest.raises(UnipetlError, match="Did you mean: accuracy"):
        compute_metrics(["acuracy"], [1], [1])


def test_f1_is_macro_for_more_than_two_classes() -> None:
    from unipetl.evaluators.metrics import compute_metrics

    # per class: 0 → F1 1, 1 → F1 0, 2 → P = R = 1/2 → F1 1/2; macro = 1/2
    assert compute_metrics(["f1"], [0, 1, 2, 2], [0, 2, 2, 1], num_labels=3)["f1"] == pytest.approx(0.5)
    # two classes: the positive class's F1 (GLUE): P = 1/2, R = 1 → 2/3
    assert compute_metrics(["f1"], [1, 1, 0], [1, 0, 0])["f1"] == pytest.approx(2 / 3)
