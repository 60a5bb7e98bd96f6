"""Every task builds its data from ../shared/data and runs a short trial on a tiny model of the right family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import DATA

from unipetl.evaluators.data import load_split, prepare
from unipetl.evaluators.models import load_model
from unipetl.evaluators.tasks import TASKS, get_task
from unipetl.evaluators.trial import TrialConfig, run_trial
from unipetl.spaces.presets import parse_preset
from unipetl.spaces.registry import UnipetlError

# (task, tiny model of a fitting family, preset, eval split sizes expected from the shared data)
CASES = [
    ("sst2", "tiny-bert", "lora:r=4", 872),
    ("mnli", "tiny-roberta", "prefix:l=4", 9815),
    ("cola", "tiny-gpt2", "bitfit", 1043),
    ("mrpc", "tiny-llama", "pa-ffn:r=8", 408),
    ("rte", "tiny-qwen2", "lora:r=4", 277),
    ("qnli", "tiny-bert", "houlsby:r=8", 5463),
    ("qqp", "tiny-roberta", "mam:l=4,r=8,s=2", 1000),
    ("stsb", "tiny-bert", "scaled-pa:r=8,s=4", 1500),
    ("wnli", "tiny-bert", "full", 71),
    ("xsum", "tiny-bart", "mam:l=4,r=8,s=4", 287),
    ("wmt16-en-ro", "tiny-t5", "lora:r=4", 1999),
]


def test_registry_declares_every_task() -> None:
    assert set(TASKS.names()) == {c[0] for c in CASES}
    assert get_task("mnli").num_labels == 3 and "mismatched" in get_task("mnli").extra_eval
    assert get_task("stsb").kind == "regression" and get_task("stsb").num_labels == 1 and get_task("stsb").main_metric == "pearsonr"
    assert get_task("cola").main_metric == "matthews_correlation"
    assert get_task("mrpc").metrics == ("f1", "accuracy")
    xsum, enro = get_task("xsum"), get_task("wmt16-en-ro")
    assert (xsum.generation.num_beams, xsum.generation.no_repeat_ngram_size, xsum.main_metric) == (6, 3, "rouge2")
    assert (enro.generation.num_beams, enro.main_metric) == (5, "bleu")
    assert all(t.higher_is_better for _, t in TASKS.items())


@pytest.mark.parametrize(("task", "model", "preset", "n_eval"), CASES, ids=[c[0] for c in CASES])
def test_task_short_trial(task: str, model: str, preset: str, n_eval: int) -> None:
    full_eval, _ = load_split(get_task(task), "eval", DATA)
    assert len(full_eval) == n_eval
    cfg = TrialConfig(task=task, model=model, variant=parse_preset(preset), data_dir=DATA, max_train_examples=24, max_eval_examples=8,
                      max_steps=3, batch_size=8, eval_every=2, lr=1e-3, max_length=48, max_new_tokens=4)
    rec = run_trial(cfg)
    assert rec["status"] == "ok", rec["error"]
    t = get_task(task)
    assert rec["main_metric"] == t.main_metric and rec["metric"] == rec["metrics"][t.main_metric]
    assert [c["step"] for c in rec["curve"]] == [2, 3]
    assert rec["train_settings"]["train_examples"] == 24 and rec["train_settings"]["eval_examples"]["eval"] == 8
    if task == "mnli":
        assert "mismatched_accuracy" in rec["metrics"]
    json.dumps(rec)


def test_tokenized_data_is_cached_in_process() -> None:
    t = get_task("rte")
    lm = load_model("tiny-bert", t, data_dir=DATA, max_train=16)
    a = prepare(t, lm.tokenizer, data_dir=DATA, max_train=16, max_eval=8, max_length=32, model_key=lm.key)
    b = prepare(t, lm.tokenizer, data_dir=DATA, max_train=16, max_eval=8, max_length=32, model_key=lm.key)
    assert a is b
    assert max(len(x) for x in a.train["input_ids"]) <= 32


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_generic_yaml_task_with_string_labels(tmp_path: Path) -> None:
    rows = [{"text": f"{w} movie number {i}", "stars": w} for i, w in enumerate(["good", "bad"] * 12)]
    _write_jsonl(tmp_path / "train.jsonl", rows)
    _write_jsonl(tmp_path / "dev.jsonl", rows[:6])
    (tmp_path / "task.yaml").write_text(
        "name: reviews\nkind: classification\ndata_files: {train: train.jsonl, eval: dev.jsonl}\ntext_fields: [text]\n"
        "label_field: stars\nlabels: [bad, good]\nmetrics: [accuracy, f1]\n"
    )
    task = get_task(str(tmp_path / "task.yaml"))
    assert (task.name, task.num_labels, task.main_metric) == ("reviews", 2, "accuracy")
    rec = run_trial(TrialConfig(task=str(tmp_path / "task.yaml"), model="tiny-bert", variant=parse_preset("full"), max_steps=50,
                                batch_size=8, lr=1e-3, eval_every=50, warmup_ratio=0.0))
    assert rec["status"] == "ok" and rec["task"] == "reviews"
    # the label word is in the text: fifty steps from random init separate the two classes
    assert rec["metrics"]["accuracy"] == 1.0 and rec["metrics"]["f1"] == 1.0


def test_generic_json_task_seq2seq(tmp_path: Path) -> None:
    rows = [{"src": f"say {w}", "tgt": w} for w in ["one", "two", "three", "four"] * 3]
    _write_jsonl(tmp_path / "train.jsonl", rows)
    _write_jsonl(tmp_path / "dev.jsonl", rows[:4])
    (tmp_path / "t.json").write_text(json.dumps({"kind": "seq2seq", "data_files": {"train": "train.jsonl", "eval": "dev.jsonl"},
                                                 "text_fields": ["src"], "target_field": "tgt", "metrics": ["sacrebleu"],
                                                 "generation": {"num_beams": 2, "max_new_tokens": 4}}))
    rec = run_trial(TrialConfig(task=str(tmp_path / "t.json"), model="tiny-bart", variant=parse_preset("lora:r=2"), max_steps=2, batch_size=4))
    assert rec["status"] == "ok" and rec["main_metric"] == "bleu" and rec["task"] == "t"


# ---- bad input: one clear UnipetlError each, before any training ----------------------------


def _bad(tmp_path: Path, train_rows: list[dict], dev_rows: list[dict] | None = None, extra: str = "") -> str:
    _write_jsonl(tmp_path / "train.jsonl", train_rows)
    _write_jsonl(tmp_path / "dev.jsonl", dev_rows if dev_rows is not None else train_rows)
    (tmp_path / "task.yaml").write_text("kind: classification\ndata_files: {train: train.jsonl, eval: dev.jsonl}\ntext_fields: [text]\nlabel_field: label\n" + extra)
    return str(tmp_path / "task.yaml")


def _run(task: str, model: str = "tiny-bert", data_dir: str | None = None) -> dict:
    return run_trial(TrialConfig(task=task, model=model, variant=parse_preset("lora:r=2"), data_dir=data_dir, max_steps=2, batch_size=4))


def test_unknown_task_and_model_suggest() -> None:
    with pytest.raises(UnipetlError, match=r"Unknown task 'sst3'\. Did you mean: sst2\?"):
        _run("sst3")
    with pytest.raises(UnipetlError, match=r"Unknown model 'tiny-bret'\. Did you mean: tiny-bert\?"):
        _run("sst2", "tiny-bret", DATA)


def test_missing_field(tmp_path: Path) -> None:
    with pytest.raises(UnipetlError, match=r"has no field 'label'"):
        _run(_bad(tmp_path, [{"text": "a", "stars": 1}]))


def test_empty_split(tmp_path: Path) -> None:
    with pytest.raises(UnipetlError, match=r"eval split .* is empty"):
        _run(_bad(tmp_path, [{"text": "a", "label": 1}], [{"text": "x", "label": 0}][:0]))


def test_label_outside_classes(tmp_path: Path) -> None:
    with pytest.raises(UnipetlError, match=r"row 1: label 7 is outside the declared classes 0\.\.1"):
        _run(_bad(tmp_path, [{"text": "a", "label": 1}, {"text": "b", "label": 7}]))
    with pytest.raises(UnipetlError, match=r"label 'meh' is outside the declared classes \['bad', 'good'\]"):
        _run(_bad(tmp_path, [{"text": "a", "label": "good"}, {"text": "b", "label": "meh"}], extra="labels: [bad, good]\n"))


def test_no_local_data_says_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnipetlError, match=rf"no train data found \(looked in: {tmp_path}/sst2/train\.jsonl.*HF_HUB_OFFLINE"):
        _run("sst2", data_dir=str(tmp_path))


def test_bad_task_file_key(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("kind: classification\ntext_field: [a]\n")
    with pytest.raises(UnipetlError, match=r"Unknown key 'text_field'.*Did you mean: text_fields\?"):
        get_task(str(tmp_path / "t.yaml"))


def test_generation_keeps_the_tasks_limit_where_the_model_has_room() -> None:
    """XSum generates its 60 new tokens (He et al. 2022, App. A), not 59: one decoder position is reserved for the start
    token only where the model's positions are the limit; a cap of 4 gives at most 4 (and at least min(10, 4))."""
    from types import SimpleNamespace

    from unipetl.evaluators.trial import fit_generation

    def model(positions: int) -> SimpleNamespace:
        return SimpleNamespace(config=SimpleNamespace(max_position_embeddings=positions, model_type="bart"))

    xsum, enro = get_task("xsum").generation, get_task("wmt16-en-ro").generation
    big = fit_generation(model(1024), xsum)
    assert (big.max_new_tokens, big.min_new_tokens, big.max_target_length) == (60, 10, 64)
    assert fit_generation(model(1024), xsum, 20).max_new_tokens == 20
    capped = fit_generation(model(1024), xsum, 4)
    assert (capped.max_new_tokens, capped.min_new_tokens) == (4, 4)
    tiny = fit_generation(model(128), enro)  # 150 wanted, 128 positions: 127 new tokens and the start token
    assert (tiny.max_new_tokens, tiny.max_target_length) == (127, 128)
    assert fit_generation(model(61), xsum).max_new_tokens == 60 and fit_generation(model(60), xsum).max_new_tokens == 59


def _mbart_dir(tmp_path: Path, tokenizer_class: str) -> Path:
    """A local stand-in for facebook/mbart-large-cc25 (or an mBART-50): the tokenizer's built-in vocabulary with its
    language codes, a 1-layer random mBART with cc25's special ids and no decoder_start_token_id."""
    import torch
    import transformers as tf

    d = tmp_path / tokenizer_class
    tok = getattr(tf, tokenizer_class)()
    tok.save_pretrained(d)
    cfg = tf.MBartConfig(vocab_size=len(tok), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                         encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=160, bos_token_id=0, pad_token_id=1, eos_token_id=2,
                         decoder_start_token_id=2 if "50" in tokenizer_class else None, forced_eos_token_id=2)
    torch.manual_seed(0)
    tf.MBartForConditionalGeneration(cfg).save_pretrained(d)
    return d


def test_mbart_on_a_task_without_languages_starts_the_decoder_where_training_does(tmp_path: Path) -> None:
    """XSum (no languages) on mBART cc25: the labels end with the tokenizer's own code (en_XX), so training's decoder
    starts there, and generation must too (it started from <s>)."""
    task = get_task("xsum")
    assert task.languages is None
    loaded = load_model(str(_mbart_dir(tmp_path, "MBartTokenizer")), task)
    en = loaded.tokenizer.convert_tokens_to_ids("en_XX")
    labels = loaded.tokenizer(text_target="a short summary")["input_ids"]
    assert labels[-1] == en and loaded.model.generation_config.decoder_start_token_id == en


@pytest.mark.parametrize("tokenizer_class", ["MBartTokenizer", "MBart50Tokenizer"])
def test_mbart_trains_and_generates_in_the_target_language(tmp_path: Path, tokenizer_class: str) -> None:
    """en→ro on mBART: the labels carried the source code (en_XX) and generation started from <s>; now training and
    generation both start the decoder in Romanian — cc25 by the decoder start, mBART-50 by the forced first token."""
    import torch
    from transformers.models.mbart.modeling_mbart import shift_tokens_right

    task = get_task("wmt16-en-ro")
    assert task.languages == ("en", "ro")
    loaded = load_model(str(_mbart_dir(tmp_path, tokenizer_class)), task)
    tok, ro = loaded.tokenizer, loaded.tokenizer.convert_tokens_to_ids("ro_RO")
    data = prepare(task, tok, data_dir=DATA, max_train=2, max_eval=2, max_length=32, model_key=loaded.key)
    src, labels = data.train[0]["input_ids"], data.train[0]["labels"]
    decoder_input = shift_tokens_right(torch.tensor([labels]), loaded.model.config.pad_token_id)[0].tolist()
    enc = tok(["Hello world"], return_tensors="pt")
    out = loaded.model.generate(**enc, max_new_tokens=3, min_new_tokens=3, num_beams=1, do_sample=False)[0].tolist()
    if tokenizer_class == "MBartTokenizer":  # cc25: "text </s> en_XX" → "text </s> ro_RO"; the decoder starts from ro_RO
        assert tok.convert_ids_to_tokens(src[-2:]) == ["</s>", "en_XX"] and tok.convert_ids_to_tokens(labels[-2:]) == ["</s>", "ro_RO"]
        assert decoder_input[0] == ro and out[0] == ro and loaded.model.generation_config.decoder_start_token_id == ro
    else:  # mBART-50: "ro_RO text </s>"; the decoder starts from </s>, then ro_RO
        assert tok.convert_ids_to_tokens(src[0]) == "en_XX" and labels[0] == ro
        assert decoder_input[:2] == [2, ro] and out[:2] == [2, ro] and loaded.model.generation_config.forced_bos_token_id == ro


def test_task_languages_are_checked(tmp_path: Path) -> None:
    from unipetl.evaluators.models import set_languages

    class Tok:
        lang_code_to_id = {"en_XX": 250004, "ro_RO": 250020}

    with pytest.raises(UnipetlError, match=r"task language 'fr' \(target\) is not a language code of this tokenizer"):
        set_languages(None, Tok(), ("en", "fr"))
    (tmp_path / "t.csv").write_text("src,tgt\na,b\n")
    base = "kind: seq2seq\ndata_files: {train: t.csv, eval: t.csv}\ntext_fields: [src]\ntarget_field: tgt\n"
    (tmp_path / "ok.yaml").write_text(base + "languages: [en, de]\n")
    assert get_task(str(tmp_path / "ok.yaml")).languages == ("en", "de")
    (tmp_path / "bad.yaml").write_text(base + "languages: [en]\n")
    with pytest.raises(UnipetlError, match=r"`languages` must be \[source, target\] language names .*got \('en',\)"):
        get_task(str(tmp_path / "bad.yaml"))
    from unipetl.evaluators.tasks import Task

    with pytest.raises(UnipetlError, match="`languages` must be"):
        Task(name="t", kind="seq2seq", text_fields=("a",), target_field="b", metrics=("rouge",), main_metric="rouge2", languages="en")  # type: ignore[arg-type]
    assert Task(name="t", kind="seq2seq", text_fields=("a",), target_field="b", metrics=("rouge",), main_metric="rouge2", languages=["en", "ro"]).languages == ("en", "ro")  # type: ignore[arg-type]
    (tmp_path / "cls.yaml").write_text("data_files: {train: t.csv, eval: t.csv}\ntext_fields: [src]\nlabel_field: tgt\nlanguages: [en, ro]\n")
    with pytest.raises(UnipetlError, match="`languages` is for seq2seq tasks"):
        get_task(str(tmp_path / "cls.yaml"))
