"""Data / metric faults, each as a kind (fast tier: tiny tokenizers, no training unless stated).

A. in-process caches are keyed by everything that produced the value: the whole task spec, each
   data file's content, the data directory, the tokenizer's content, the caps and length limits.
B. ROUGE (and BLEU) score text of any script: identical text is 1.0 / 100, partial overlap gives
   the hand-counted values, English is unchanged.
C. the files users really have: null / empty text cells, numeric-looking text, YAML booleans in
   `labels:`, string labels, non-UTF-8 files. Each bad input is one UnipetlError line naming the
   file, the field and the row / value; the CLI prints it as one line and exits with code 2.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from unipetl.evaluators import data as data_mod
from unipetl.evaluators import models as models_mod
from unipetl.evaluators.data import TaskData, label_index, load_split, prepare
from unipetl.evaluators.metrics import compute_metrics, load_metric
from unipetl.evaluators.models import tiny_tokenizer
from unipetl.evaluators.tasks import get_task, load_task_file
from unipetl.search.cli import main
from unipetl.search.study import load_study_file
from unipetl.spaces.registry import UnipetlError
from unipetl.spaces.variant import Variant

ROWS = [
    {"text": "red apple pie", "other": "blue sky", "a": 0, "b": 1, "word": "no", "score": 0.5, "summary": "apple pie is red indeed"},
    {"text": "green tea cup", "other": "grey rain", "a": 0, "b": 0, "word": "yes", "score": 1.5, "summary": "tea is green"},
    {"text": "yellow lemon cake", "other": "black night", "a": 1, "b": 1, "word": "yes", "score": 2.5, "summary": "lemon cake"},
    {"text": "white milk glass", "other": "pink dawn", "a": 1, "b": 0, "word": "no", "score": 3.5, "summary": "milk"},
]
BASE = "name: same\ndata_files: {train: train.jsonl, eval: train.jsonl}\ntext_fields: [text]\nlabel_field: a\n"


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _task_file(d: Path, name: str, yaml_text: str) -> str:
    (d / name).write_text(yaml_text, encoding="utf-8")
    return str(d / name)


def _prepare(task_path: str, *, family: str = "bert", max_length: int | None = None) -> TaskData:
    task = get_task(task_path)
    tok = tiny_tokenizer(task, family, None, None)
    return prepare(task, tok, data_dir=None, max_train=None, max_eval=None, max_length=max_length, model_key=f"tiny-{family}")


def _words(td: TaskData, task_path: str) -> list[list[str]]:
    tok = tiny_tokenizer(get_task(task_path), "bert", None, None)
    return [tok.convert_ids_to_tokens(ids) for ids in td.train["input_ids"]]


# ---- A. caches keyed by the full identity of their inputs ----------------------------------------

# (task-spec field, the changed YAML, what the data must read back as after the change)
SPEC_CASES: list[tuple[str, str, Callable[[TaskData, str], Any], Any]] = [
    ("label_field", BASE.replace("label_field: a", "label_field: b"), lambda td, p: list(td.train["labels"]), [1, 0, 1, 0]),
    ("text_fields", BASE.replace("[text]", "[other]"), lambda td, p: [w[1] for w in _words(td, p)], ["blue", "grey", "black", "pink"]),
    ("text_fields pair", BASE.replace("[text]", "[text, other]"), lambda td, p: _words(td, p)[0],
     ["<s>", "red", "apple", "pie", "</s>", "blue", "sky", "</s>"]),
    ("labels", BASE.replace("label_field: a", "label_field: word\nlabels: [yes, no]"), lambda td, p: list(td.train["labels"]), [1, 0, 0, 1]),
    ("kind", BASE.replace("label_field: a", "kind: regression\nlabel_field: score"), lambda td, p: list(td.train["labels"]), [0.5, 1.5, 2.5, 3.5]),
    ("data_files", BASE.replace("{train: train.jsonl, eval: train.jsonl}", "{train: two.jsonl, eval: two.jsonl}"),
     lambda td, p: list(td.train["labels"]), [1, 1]),
    ("max_length", BASE + "max_length: 3\n", lambda td, p: _words(td, p)[0], ["<s>", "red", "</s>"]),
]


@pytest.mark.parametrize(("field", "changed", "read", "want"), SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_changing_a_task_field_in_one_process_gives_the_new_data(tmp_path: Path, field: str, changed: str, read: Callable[[TaskData, str], Any],
                                                                 want: Any) -> None:
    """Two task files with the same `name:` and data, one field apart, in one process."""
    _jsonl(tmp_path / "train.jsonl", ROWS)
    _jsonl(tmp_path / "two.jsonl", ROWS[2:])
    first = _task_file(tmp_path, "first.yaml", BASE)
    second = _task_file(tmp_path, "second.yaml", changed)
    assert list(_prepare(first).train["labels"]) == [0, 0, 1, 1]
    assert read(_prepare(second), second) == want


def test_same_task_name_with_another_label_field_gets_its_own_labels(tmp_path: Path) -> None:
    _jsonl(tmp_path / "train.jsonl", ROWS)
    b = _task_file(tmp_path, "b.yaml", BASE.replace("label_field: a", "label_field: b"))
    a = _task_file(tmp_path, "a.yaml", BASE)
    assert list(_prepare(b).train["labels"]) == [1, 0, 1, 0]
    assert list(_prepare(a).train["labels"]) == [0, 0, 1, 1]  # was [1, 0, 1, 0]: the first task's labels


def test_editing_a_data_file_between_calls_gives_the_new_data(tmp_path: Path) -> None:
    """Same path, same size and the mtime put back: only the content tells the two apart."""
    path = _jsonl(tmp_path / "train.jsonl", ROWS)
    task = _task_file(tmp_path, "t.yaml", BASE)
    before = path.stat()
    assert list(_prepare(task).train["labels"]) == [0, 0, 1, 1]
    edited = [dict(r, a=1 - r["a"]) for r in ROWS]
    _jsonl(path, edited)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    assert list(_prepare(task).train["labels"]) == [1, 1, 0, 0]
    ds, _ = load_split(get_task(task), "train")
    assert list(ds["a"]) == [1, 1, 0, 0]  # the `datasets` on-disk cache is keyed by content too


def test_editing_training_text_retrains_the_tiny_tokenizer(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "train.jsonl", ROWS)
    task = _task_file(tmp_path, "t.yaml", BASE)
    assert "zebra" not in tiny_tokenizer(get_task(task), "bert", None, None).get_vocab()
    _jsonl(path, [dict(r, text=r["text"].replace("red", "zebra")) for r in ROWS])
    assert "zebra" in tiny_tokenizer(get_task(task), "bert", None, None).get_vocab()
    assert [w[1] for w in _words(_prepare(task), task)][0] == "zebra"


def test_the_data_directory_from_the_environment_is_part_of_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for d, label in (("one", 0), ("two", 1)):
        (tmp_path / d / "sst2").mkdir(parents=True)
        for split in ("train", "dev"):
            _jsonl(tmp_path / d / "sst2" / f"{split}.jsonl", [{"sentence": f"word {i}", "label": label} for i in range(4)])
    task = get_task("sst2")
    for d, label in (("one", 0), ("two", 1)):
        monkeypatch.setenv("UNIPETL_DATA_DIR", str(tmp_path / d))
        tok = tiny_tokenizer(task, "bert", None, None)
        got = prepare(task, tok, data_dir=None, max_train=None, max_eval=None, max_length=None, model_key="tiny-bert")
        assert list(got.train["labels"]) == [label] * 4


def test_the_tokenizer_content_is_part_of_the_key_not_its_name(tmp_path: Path) -> None:
    _jsonl(tmp_path / "train.jsonl", ROWS)
    _jsonl(tmp_path / "other.jsonl", [dict(r, text=r["other"]) for r in ROWS])
    one = get_task(_task_file(tmp_path, "t.yaml", BASE))
    two = get_task(_task_file(tmp_path, "u.yaml", BASE.replace("{train: train.jsonl, eval: train.jsonl}", "{train: other.jsonl, eval: train.jsonl}")))
    tok_a, tok_b = tiny_tokenizer(one, "bert", None, None), tiny_tokenizer(two, "bert", None, None)
    a = prepare(one, tok_a, data_dir=None, max_train=None, max_eval=None, max_length=None, model_key="same-name")
    b = prepare(one, tok_b, data_dir=None, max_train=None, max_eval=None, max_length=None, model_key="same-name")
    assert list(a.train["input_ids"]) != list(b.train["input_ids"])
    assert list(b.train["input_ids"][0]) == tok_b("red apple pie")["input_ids"]


def test_generation_limits_are_part_of_the_key(tmp_path: Path) -> None:
    """trial.py narrows a seq2seq task's target length to the model's limit: another limit, other data."""
    _jsonl(tmp_path / "train.jsonl", ROWS)
    path = _task_file(tmp_path, "s.yaml", "name: s\nkind: seq2seq\ndata_files: {train: train.jsonl, eval: train.jsonl}\ntext_fields: [text]\n"
                                          "target_field: summary\nmetrics: [rouge]\n")
    task = get_task(path)
    tok = tiny_tokenizer(task, "bart", None, None)
    short = dataclasses.replace(task, generation=dataclasses.replace(task.generation, max_target_length=3))
    full = prepare(task, tok, data_dir=None, max_train=None, max_eval=None, max_length=None, model_key="tiny-bart")
    cut = prepare(short, tok, data_dir=None, max_train=None, max_eval=None, max_length=None, model_key="tiny-bart")
    assert len(full.train["labels"][0]) == 6 and len(cut.train["labels"][0]) == 3


def test_the_same_inputs_hit_the_cache(tmp_path: Path) -> None:
    """The key is stable: tokenizing (which sets the tokenizer's truncation state) does not change it."""
    _jsonl(tmp_path / "train.jsonl", ROWS)
    task = _task_file(tmp_path, "t.yaml", BASE)
    first = _prepare(task, max_length=5)
    assert _prepare(task, max_length=5) is first
    assert _prepare(task, max_length=6) is not first


def test_the_caches_stay_bounded(tmp_path: Path) -> None:
    _jsonl(tmp_path / "train.jsonl", ROWS)
    for i in range(12):
        _prepare(_task_file(tmp_path, f"t{i}.yaml", BASE + f"max_length: {8 + i}\n"))
    assert len(data_mod._CACHE) <= data_mod._CACHE_SIZE and len(models_mod._TOKENIZERS) <= models_mod._TOKENIZERS_SIZE


# ---- B. ROUGE / BLEU on every script -------------------------------------------------------------

SAME = ["猫 坐 在 垫子 上", "猫坐在垫子上", "बिल्ली चटाई पर बैठी", "кошка сидит на коврике", "القطة تجلس على السجادة", "猫がマットの上に座った",
        "고양이가 매트 위에 앉았다", "Η γάτα κάθεται στο χαλί", "Pisica stă pe covoraș", "the cat sat on the mat"]


@pytest.mark.parametrize("text", SAME)
def test_identical_text_scores_one_in_any_script(text: str) -> None:
    got = compute_metrics(("rouge",), [text], [text])
    assert got == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "rougeLsum": 1.0}  # was 0.0 for every non-Latin script
    assert compute_metrics(("sacrebleu",), [text], [text])["bleu"] == pytest.approx(100.0)


# (prediction, reference, rouge1, rouge2) counted by hand
PARTIAL = [
    # Han: one token per character; 5 of 6 characters and 4 of 5 bigrams shared
    ("猫坐在垫子上", "狗坐在垫子上", 5 / 6, 4 / 5),
    ("猫 坐 在 垫子 上", "狗 坐 在 垫子 上", 5 / 6, 4 / 5),
    # Devanagari: combining vowel signs stay inside their word; 2 of 4 words, 1 of 3 bigrams
    ("बिल्ली चटाई पर बैठी", "कुत्ता चटाई पर बैठा", 2 / 4, 1 / 3),
    # Cyrillic: 3 of 4 words, 2 of 3 bigrams
    ("кошка сидит на коврике", "кошка сидит на полу", 3 / 4, 2 / 3),
    # Latin with diacritics: "stă" and "covoraș" are whole words (rouge-score cut them to "st" and "covora")
    ("pisica stă pe covoraș", "pisica doarme pe covoraș", 3 / 4, 1 / 3),
]


@pytest.mark.parametrize(("pred", "ref", "r1", "r2"), PARTIAL, ids=[p[1] for p in PARTIAL])
def test_partial_overlap_known_values(pred: str, ref: str, r1: float, r2: float) -> None:
    got = compute_metrics(("rouge",), [pred], [ref])
    assert got["rouge1"] == pytest.approx(r1) and got["rouge2"] == pytest.approx(r2) and got["rougeL"] == pytest.approx(r1)


def test_ascii_tokenization_is_rouge_scores_own() -> None:
    """English results are unchanged: on ASCII text the tokenizer is rouge-score's, stemming included."""
    from rouge_score.tokenizers import DefaultTokenizer

    from unipetl.evaluators.metrics import METRICS_DIR

    spec = importlib.util.spec_from_file_location("shipped_rouge", METRICS_DIR / "rouge" / "rouge.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    mod = load_metric("rouge")
    unicode_tok = module.UnicodeTokenizer(use_stemmer=True)
    texts = ["The cats were sitting on the mats, didn't they?", "Police ARRESTED two men in London on Friday (2024).", "a_b c-d e.f 42nd running"]
    for t in texts:
        assert unicode_tok.tokenize(t) == DefaultTokenizer(use_stemmer=True).tokenize(t)
    preds, refs = texts, ["the cat sat on the mat", "two men were arrested by police", "running 42nd"]
    assert mod.compute(predictions=preds, references=refs) == mod.compute(predictions=preds, references=refs, tokenizer="rouge_score")


def test_rouge_states_its_tokenization() -> None:
    mod = load_metric("rouge")
    assert "Tokenization: unicode" in mod.description and "any script" in mod.description
    assert "tokenizer" in mod.inputs_description
    # the ASCII-only tokenizer is still there to compare with published numbers, and shows the fault
    assert mod.compute(predictions=["猫 坐 在 垫子 上"], references=["猫 坐 在 垫子 上"], tokenizer="rouge_score")["rouge1"] == 0.0


def test_bleu_segments_chinese_like_sacrebleu_does_for_a_chinese_target() -> None:
    import sacrebleu

    pred, ref = ["猫坐在垫子上了"], ["狗坐在垫子上了"]
    got = compute_metrics(("sacrebleu",), pred, ref)["bleu"]
    assert got == pytest.approx(sacrebleu.corpus_bleu(pred, [ref], tokenize="zh").score) and got > 0
    assert sacrebleu.corpus_bleu(pred, [ref], tokenize="13a").score == 0.0  # 13a: one "word" per sentence
    assert "Tokenization" in load_metric("sacrebleu").description


# ---- C. the files users have --------------------------------------------------------------------

RUN = ["run", "--model", "tiny-bert", "--preset", "lora:r=2", "--max-steps", "1", "--batch-size", "2"]


def _local_task(d: Path, name: str, data: bytes | str, *, ext: str = "jsonl", extra: str = "", eval_data: bytes | str | None = None) -> str:
    for role, content in (("train", data), ("eval", data if eval_data is None else eval_data)):
        f = d / f"{name}-{role}.{ext}"
        f.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return _task_file(d, f"{name}.yaml", f"name: {name}\ndata_files: {{train: {name}-train.{ext}, eval: {name}-eval.{ext}}}\n"
                                         f"text_fields: [text]\nlabel_field: label\n{extra}")


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    out = capsys.readouterr()
    err = out.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"unipetl {argv[0]}: error: ") and "Traceback" not in out.out + out.err
    return err


# (case, train file content, extension, task-file extra, fragments the one error line must hold)
BAD_DATA: list[tuple[str, bytes | str, str, str, list[str]]] = [
    ("jsonl null text", '{"text": "ok", "label": 0}\n{"text": null, "label": 1}\n', "jsonl", "", ["row 1", "field 'text'", "missing (null)"]),
    ("jsonl absent text", '{"text": "ok", "label": 0}\n{"label": 1}\n', "jsonl", "", ["row 1", "field 'text'", "missing (null)"]),
    ("csv empty text cell", "text,label\nok,0\n,1\n", "csv", "", ["row 1", "field 'text'", "an empty CSV cell"]),
    ("tsv empty text cell", "text\tlabel\nok\t0\n\t1\n", "tsv", "", ["row 1", "field 'text'", "an empty CSV cell"]),
    ("jsonl null label", '{"text": "ok", "label": 0}\n{"text": "b", "label": null}\n', "jsonl", "", ["row 1", "label field 'label' is missing"]),
    ("jsonl text is a list", '{"text": ["a", "b"], "label": 0}\n', "jsonl", "", ["row 0", "field 'text' holds list", "not text"]),
    ("latin-1 csv", "text,label\ncaf\xe9 au lait,1\nok,0\n".encode("latin-1"), "csv", "", ["is not UTF-8", "byte 0xe9 at offset 14 (line 2)"]),
    ("latin-1 jsonl", '{"text": "ok", "label": 0}\n{"text": "na\xefve", "label": 1}\n'.encode("latin-1"), "jsonl", "",
     ["is not UTF-8", "byte 0xef at offset 39 (line 2)"]),
    ("string label without labels", '{"text": "a", "label": "pos"}\n', "jsonl", "", ["row 0", "label 'pos' is outside the declared classes 0..1", "labels: [...]"]),
    ("label not among labels", '{"text": "a", "label": "maybe"}\n', "jsonl", "labels: [no, yes]\n", ["label 'maybe' is outside the declared classes ['no', 'yes']"]),
    ("header-only csv", "text,label\n", "csv", "", ["has no rows"]),
    ("ragged csv", "text,label\na,0\nb,1,x,y\n", "csv", "", ["ParserError", "Expected 2 fields in line 3, saw 4"]),
]


@pytest.mark.parametrize(("case", "content", "ext", "extra", "fragments"), BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_bad_data_file_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, content: bytes | str, ext: str, extra: str,
                                          fragments: list[str]) -> None:
    task = _local_task(tmp_path, "t", content, ext=ext, extra=extra)
    err = _cli_error([*RUN, "--task", task, "--out", str(tmp_path / "out")], capsys)
    assert f"t-train.{ext}" in err, err
    for f in fragments:
        assert f in err, err
    assert not (tmp_path / "out").exists()


def test_bad_eval_file_names_the_eval_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    task = _local_task(tmp_path, "t", '{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n', eval_data='{"text": "a", "label": 0}\n{"text": null, "label": 1}\n')
    err = _cli_error([*RUN, "--task", task, "--out", str(tmp_path / "out")], capsys)
    assert "eval data" in err and "t-eval.jsonl" in err and "row 1: field 'text' is missing" in err


def test_numeric_looking_text_stays_text(tmp_path: Path) -> None:
    task = get_task(_local_task(tmp_path, "n", "text,label\n1000,0\n007,1\nNA,0\n1.50,1\n", ext="csv"))
    ds, _ = load_split(task, "train")
    assert list(ds["text"]) == ["1000", "007", "NA", "1.50"]  # as written: no int 7, no null, no 1.5
    task = get_task(_local_task(tmp_path, "j", '{"text": 1000, "label": 0}\n{"text": 1001, "label": 1}\n{"text": "x", "label": 1}\n'))
    assert list(load_split(task, "train")[0]["text"]) == ["1000", "1001", "x"]
    td = prepare(task, tiny_tokenizer(task, "bert", None, None), data_dir=None, max_train=None, max_eval=None, max_length=None, model_key="t")
    assert [len(x) for x in td.train["input_ids"]] == [3, 3, 3]  # <s> word </s>; was a tokenizer ValueError


def test_yaml_labels_stay_the_names_written(tmp_path: Path) -> None:
    path = _local_task(tmp_path, "yn", '{"text": "a", "label": "yes"}\n{"text": "b", "label": "no"}\n', extra="labels: [no, yes]\n")
    task = load_task_file(path)
    assert task.label_names == ("no", "yes")  # was (False, True) → ('False', 'True')
    td = prepare(task, tiny_tokenizer(task, "bert", None, None), data_dir=None, max_train=None, max_eval=None, max_length=None, model_key="t")
    assert list(td.train["labels"]) == [1, 0]
    for written, names in (("[on, off]", ("on", "off")), ("[1.10, 2.0]", ("1.10", "2.0")), ("[2024-01-01, later]", ("2024-01-01", "later")),
                           ("['no', \"yes\"]", ("no", "yes"))):
        (tmp_path / "l.yaml").write_text(f"data_files: {{train: a, eval: b}}\ntext_fields: [text]\nlabel_field: label\nlabels: {written}\n")
        assert load_task_file(tmp_path / "l.yaml").label_names == names


def test_string_labels_are_matched_as_written(tmp_path: Path) -> None:
    t = get_task(_local_task(tmp_path, "s", '{"text": "a", "label": "1"}\n{"text": "b", "label": "0"}\n'))
    assert [label_index(t, y) for y in ("0", "1", " 1 ", 1, 1.0, "2", "x", True, None)] == [0, 1, 1, 1, 1, None, None, None, None]
    td = prepare(t, tiny_tokenizer(t, "bert", None, None), data_dir=None, max_train=None, max_eval=None, max_length=None, model_key="t")
    assert list(td.train["labels"]) == [1, 0]  # was "label '1' is outside the declared classes 0..1"
    # numeric names: a number is only ever a name ("1" is class 0 here), never a class id
    named = get_task(_local_task(tmp_path, "m", '{"text": "a", "label": 3}\n{"text": "b", "label": "1"}\n', extra="labels: [1, 2, 3]\n"))
    assert [label_index(named, y) for y in (1, "1", 3, "3", 0)] == [0, 0, 2, 2, None]
    # CSV reads every cell as text: "0"/"1" labels, "3.5" regression targets
    csv = get_task(_local_task(tmp_path, "c", "text,label\na,1\nb,0\n", ext="csv"))
    assert list(prepare(csv, tiny_tokenizer(csv, "bert", None, None), data_dir=None, max_train=None, max_eval=None, max_length=None,
                        model_key="t").train["labels"]) == [1, 0]
    reg = get_task(_local_task(tmp_path, "r", "text,label\na,3.5\nb,-1e-1\n", ext="csv", extra="kind: regression\n"))
    assert list(prepare(reg, tiny_tokenizer(reg, "bert", None, None), data_dir=None, max_train=None, max_eval=None, max_length=None,
                        model_key="t").train["labels"]) == pytest.approx([3.5, -0.1])


def test_utf8_with_byte_order_mark_and_empty_json_text_are_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    task = get_task(_local_task(tmp_path, "b", b"\xef\xbb\xbftext,label\nab,1\n", ext="csv"))
    assert list(load_split(task, "train")[0]["text"]) == ["ab"]
    # an empty JSON string is the empty text (the shared WMT16 train set has one): kept, with a warning
    task = get_task(_local_task(tmp_path, "e", '{"text": "", "label": 0}\n{"text": "b", "label": 1}\n'))
    with caplog.at_level("WARNING"):
        assert list(load_split(task, "train")[0]["text"]) == ["", "b"]
    assert "1 row(s) with empty text in 'text' (first: row 0)" in caplog.text


def test_local_data_of_every_kind_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """(b) + (c) + (d) together through `unipetl run`: numeric CSV text, YAML-boolean label names."""
    task = _local_task(tmp_path, "ok", "text,label\n1000,yes\n1001,no\n007,yes\nNA,no\n", ext="csv", extra="labels: [no, yes]\n")
    assert main([*RUN, "--task", task, "--out", str(tmp_path / "out")]) == 0
    rec = json.loads((tmp_path / "out" / "record.json").read_text())
    assert rec["status"] == "ok" and rec["train_settings"]["train_examples"] == 4


# task files, study files, variant files: one line naming the file and the key / value
BAD_TASK_FILES: list[tuple[str, bytes | str, list[str]]] = [
    ("not UTF-8", "name: caf\xe9\n".encode("latin-1"), ["is not a UTF-8 text file", "byte 0xe9 at offset 9 (line 1)"]),
    ("num_labels text", "num_labels: three\n", ["`num_labels` should be an integer >= 1, got 'three'"]),
    ("max_length negative", "max_length: -4\n", ["`max_length` should be an integer >= 1, got -4"]),
    ("labels twice", "labels: [no, yes, no]\n", ["`labels` lists 'no' twice"]),
    ("labels a mapping", "labels: {a: 1}\n", ["`labels` must be a list of label names, got {'a': '1'}"]),
    ("labels null entry", "labels: [~, x]\n", ["`labels[0]` must be a label name (text), got None"]),
    ("text_fields mapping", "text_fields: {a: b}\n", ["`text_fields` must be a name or a list of names, got {'a': 'b'}"]),
    ("generation type", "generation: {num_beams: two}\n", ["`generation.num_beams` should be an integer >= 1, got 'two'"]),
    ("generation key", "generation: {beams: 2}\n", ["Unknown key 'beams' in generation", "num_beams"]),
    ("data file null", "data_files: {train: ~, eval: x.jsonl}\n", ["`data_files.train` must be a file path, got None"]),
    ("deeply nested", "labels: " + "[" * 5000 + "]" * 5000 + "\n", ["nested too deeply to be a task file"]),
    ("huge", "name: x\n" + "# pad\n" * 200_000, ["is larger than 1000000 bytes"]),
]


@pytest.mark.parametrize(("case", "content", "fragments"), BAD_TASK_FILES, ids=[c[0] for c in BAD_TASK_FILES])
def test_bad_task_file_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, content: bytes | str,
                                          fragments: list[str]) -> None:
    base = "kind: classification\ndata_files: {train: a.jsonl, eval: a.jsonl}\ntext_fields: [text]\nlabel_field: label\n"
    if isinstance(content, str) and case not in ("huge",):
        keys = {line.split(":", 1)[0] for line in content.splitlines()}
        content = "".join(line + "\n" for line in base.splitlines() if line.split(":", 1)[0] not in keys) + content
    path = tmp_path / "t.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    _jsonl(tmp_path / "a.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
    err = _cli_error([*RUN, "--task", str(path), "--out", str(tmp_path / "out")], capsys)
    assert str(path) in err or "task file" in err, err
    for f in fragments:
        assert f in err, err


def test_study_file_names_stay_text_and_bad_values_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("task: sst2\nmodel: tiny-bert\nstudy: 2024\nbudget: 0.50%\nwith_full: yes\ntrain: {device: cpu, scheduler: linear}\n"
                 "space: {presets: [lora]}\n")
    data = load_study_file(f)
    assert (data["study"], data["budget"], data["with_full"]) == ("2024", "0.50%", True)  # study was int 2024
    cases = [
        ("task: [sst2, rte]\n", "`task` must be text, got ['sst2', 'rte']"),
        ("with_full: maybe\n", "`with_full` must be true or false, got 'maybe'"),
        ("trials: many\n", "`trials` should be an integer, got 'many'"),
        ("space: [lora]\n", "`space` must be a mapping, got ['lora']"),
        ("train:\n", "`train` must be a mapping, got None"),
    ]
    for text, message in cases:
        f.write_text(text)
        err = _cli_error(["search", "--study-file", str(f), "--storage", f"sqlite:///{tmp_path}/s.db", "--no-progress"], capsys)
        assert message in err and str(f) in err, err
    f.write_bytes("task: sst2\n# r\xe9sum\xe9\n".encode("latin-1"))
    err = _cli_error(["search", "--study-file", str(f), "--storage", f"sqlite:///{tmp_path}/s.db", "--no-progress"], capsys)
    assert "is not a UTF-8 text file: byte 0xe9 at offset 14 (line 2)" in err and str(f) in err
    assert not (tmp_path / "s.db").exists()


def test_variant_file_bad_input_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = Variant.from_dict({"modules": [{"site": "ffn", "kind": "adapter", "size": 4}]})
    f = tmp_path / "v.json"
    f.write_bytes(b"\xef\xbb\xbf" + good.to_json().encode())
    assert Variant.from_file(str(f)) == good  # a byte-order mark is fine
    cases: list[tuple[bytes, str]] = [
        ('{"name": "caf\xe9"}'.encode("latin-1"), "is not a UTF-8 text file: byte 0xe9 at offset 13 (line 1)"),
        (b'{"modules": [', "malformed"),
        (b'{"bitfitt": true}', "Did you mean: bitfit?"),
        (b" " * 4_000_001, "is larger than 4000000 bytes"),
    ]
    for content, message in cases:
        f.write_bytes(content)
        err = _cli_error(["count", "--model", "roberta-base", "--variant", str(f)], capsys)
        assert message in err and str(f) in err, err
        with pytest.raises(UnipetlError, match="v.json"):
            Variant.from_file(str(f))


def test_column_reads_the_rows_a_view_holds_and_decodes_what_arrow_stores_encoded() -> None:
    import datasets

    ds = datasets.Dataset.from_dict({"label": [0, 1, 1, 0], "text": ["a", "b", "c", "d"], "input_ids": [[1], [1, 2], [], [3, 4, 5]]},
                                    features=datasets.Features({"label": datasets.ClassLabel(names=["n", "p"]), "text": datasets.Value("string"),
                                                                "input_ids": datasets.List(datasets.Value("int32"))}))
    view = ds.select([3, 1, 2])
    assert data_mod.column(view, "label") == [0, 1, 1] and data_mod.column(view, "text") == ["d", "b", "c"]
    assert data_mod.token_lengths(view) == [3, 2, 0] and data_mod.token_lengths(ds.shuffle(seed=0)) == [len(x) for x in ds.shuffle(seed=0)["input_ids"]]
    assert data_mod.column(view, "input_ids") == [[3, 4, 5], [1, 2], []]  # a list feature takes the decoding path
