"""Saving and loading a trained variant: one small directory per task, safetensors only.

A saved variant is a directory with three files:

- `adapter.safetensors`: the tensors that trained, and nothing else — the variant's inserted
  modules (names contain `petl`), BitFit's bias vectors, and the task head. The head is needed
  to reuse a classifier; `unipetl.json` lists the head's tensor names so the two are told apart
  (and the safetensors header repeats that list).
- `variant.json`: `Variant.to_dict()`, the spec to re-insert the modules with.
- `unipetl.json`: the identity of the base model (id / path, model type, head class,
  num_labels, the shape facts accounting uses, a hash of the architecture config, a fingerprint
  of the frozen weights, the full config to rebuild a skeleton for `unipetl export`), the
  counts, and the versions that wrote it.

Prefix reparametrization (`reparam`, Li & Liang's MLP): by default the file holds what
*trained* — the MLP and its embedding — so the number of stored elements equals the realized
trainable count (task head included) and training can resume. `materialize_prefixes=True`
stores instead what the paper counts: the prefixes P_k, P_v the MLP produces, with the variant
rewritten to `reparam=False`; outputs are the same, the file shrinks to 2·l·kv_dim per layer.

Loading never unpickles: tensors come from `safetensors.torch.load_file`, the rest is JSON.
Before anything is applied, the identity is compared with the model's and the file's tensor
names / shapes with those a dry run of the variant on a meta-device skeleton of the model
expects, so a mismatch is one `UnipetlError` line and the model is left untouched.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from unipetl.spaces.accounting import count
from unipetl.spaces.kinds import get_kind
from unipetl.spaces.realize import Realized, _backbone_params, _head_params, apply_variant, load_variant_state_dict, variant_state_dict
from unipetl.spaces.registry import UnipetlError
from unipetl.spaces.shapes import shape_from_config
from unipetl.spaces.variant import Variant

logger = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.safetensors"
VARIANT_FILE = "variant.json"
META_FILE = "unipetl.json"
FORMAT_VERSION = 1
# `unipetl run` directories written before save_variant existed: record.json + variant.safetensors
RUN_RECORD, RUN_WEIGHTS = "record.json", "variant.safetensors"
_MAX_JSON = 16_000_000
# config keys that say nothing about the architecture (paths, versions, labels, runtime switches)
_VOLATILE = {"_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype", "_attn_implementation",
             "_attn_implementation_internal", "id2label", "label2id", "use_cache", "output_attentions", "output_hidden_states",
             "return_dict", "problem_type", "_commit_hash", "num_labels", "finetuning_task", "tokenizer_class"}


@dataclass(frozen=True)
class SavedVariant:
    """A saved variant as read from disk (nothing applied yet)."""

    directory: Path
    variant: Variant
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def head_names(self) -> set[str]:
        return set(self.meta.get("head", {}).get("tensors", []))

    @property
    def base_model_id(self) -> str | None:
        return self.meta.get("base_model", {}).get("id")


# --- identity --------------------------------------------------------------------------------


def _config_dict(model: nn.Module) -> dict[str, Any]:
    return json.loads(model.config.to_json_string(use_diff=False))


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the architecture part of a config (paths, versions, labels and switches left out)."""
    arch = {k: v for k, v in config.items() if k not in _VOLATILE}
    return hashlib.sha256(json.dumps(arch, sort_keys=True, default=str).encode()).hexdigest()


def weights_fingerprint(model: nn.Module, exclude: set[str]) -> str:
    """sha256 over a strided sample (≤ 4096 values, rounded to bf16) of every frozen backbone tensor.

    Telling "same architecture, other weights" apart needs the weights; a sample is enough and
    cheap. Rounding to bf16 first lets an fp16 / bf16 / fp32 load of the same checkpoint agree.
    Tensors the variant trains (BitFit's biases) are excluded: they differ after training.
    """
    h = hashlib.sha256()
    head = {id(p) for p in _head_params(model)}
    for name, p in sorted(model.named_parameters(), key=lambda item: item[0]):
        if name in exclude or id(p) in head or "petl" in name:
            continue
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)][:4096].to("cpu", torch.bfloat16).view(torch.int16)
        h.update(f"{name}:{tuple(p.shape)}:".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


def _names_of(model: nn.Module, params: list[nn.Parameter]) -> list[str]:
    ids = {id(p) for p in params}
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


def base_identity(model: nn.Module, *, base_model_id: str | None, exclude: set[str]) -> dict[str, Any]:
    """What a saved variant remembers about the model it was trained on."""
    cfg = _config_dict(model)
    backbone = _backbone_params(model)
    shape = shape_from_config(model.config, base_params=sum(p.numel() for _, p in backbone),
                              bias_params=sum(p.numel() for n, p in backbone if n.endswith(".bias")))
    return {
        "id": base_model_id,
        "model_type": model.config.model_type,
        "architecture": type(model).__name__,
        "d_model": shape.d_model,
        "vocab_size": shape.vocab_size,
        "stacks": [asdict(s) for s in shape.stacks],
        "base_params": shape.base_params,
        "config_sha256": config_hash(cfg),
        "weights_sha256": weights_fingerprint(model, exclude),
        "config": cfg,
    }


# --- save ------------------------------------------------------------------------------------


def _realized_of(obj: Realized | nn.Module) -> Realized:
    if isinstance(obj, Realized):
        return obj
    realized = getattr(obj, "_unipetl_realized", None)
    if realized is None:
        raise UnipetlError(f"save_variant: the {type(obj).__name__} has no variant applied; call spaces.realize.apply_variant first.")
    return realized


def _materialize(realized: Realized, tensors: dict[str, torch.Tensor]) -> tuple[Variant, dict[str, torch.Tensor]]:
    """Each kind swaps its training devices for what they produce (`ModuleKind.materialize`:
    a prefix MLP becomes the prefixes, the spec reparam=False)."""
    variant = realized.variant
    out = dict(tensors)
    mods = tuple(get_kind(m.kind).materialize(m, realized.model, out) for m in variant.modules)
    if mods == variant.modules:
        return variant, tensors
    return variant.replace(modules=mods), out


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("unipetl", "torch", "transformers", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover - a source checkout without install
            out[pkg] = "unknown"
    return out


def save_variant(realized_or_model: Realized | nn.Module, directory: str | Path, *, base_model_id: str,
                 materialize_prefixes: bool = False) -> Path:
    """Write adapter.safetensors + variant.json + unipetl.json for a trained variant; returns the directory."""
    realized = _realized_of(realized_or_model)
    model = realized.model
    tensors = {n: t.detach().to("cpu").contiguous().clone() for n, t in variant_state_dict(model).items()}
    head = [n for n in _names_of(model, _head_params(model)) if n in tensors]
    identity = base_identity(model, base_model_id=base_model_id, exclude=set(tensors))
    variant = realized.variant
    if materialize_prefixes:
        variant, tensors = _materialize(realized, tensors)
    counts = count(variant, realized.shape)
    head_params = sum(tensors[n].numel() for n in head)
    num_labels = getattr(model.config, "num_labels", None) if head and "ForSequenceClassification" in type(model).__name__ else None
    meta = {
        "format": FORMAT_VERSION,
        "base_model": identity,
        "head": {"class": type(model).__name__, "num_labels": num_labels, "tensors": head, "params": head_params},
        "tensors": {"count": len(tensors), "variant_params": sum(t.numel() for t in tensors.values()) - head_params, "head_params": head_params},
        "prefixes": "materialized" if materialize_prefixes and variant is not realized.variant else
                    ("reparam-mlp" if any(m.reparam for m in variant.modules) else None),
        "counts": counts.to_dict(),
        "description": variant.describe(),
        "versions": _versions(),
    }
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    header = {"format": "pt", "unipetl_format": str(FORMAT_VERSION), "head_tensors": json.dumps(head)}
    _write_atomic(out / ADAPTER_FILE, lambda p: save_file(tensors, str(p), metadata=header))
    _write_atomic(out / VARIANT_FILE, lambda p: p.write_text(json.dumps(variant.to_dict(), indent=2) + "\n", encoding="utf-8"))
    _write_atomic(out / META_FILE, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8"))
    logger.info("saved %s: %d tensors, %d variant + %d head parameters", out, len(tensors), meta["tensors"]["variant_params"], head_params)
    return out


# --- read / load -----------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read(_MAX_JSON + 1)
    except OSError as err:
        raise UnipetlError(f"cannot read {str(path)!r}: {err.strerror}.") from None
    if len(text) > _MAX_JSON:
        raise UnipetlError(f"{str(path)!r} is larger than {_MAX_JSON} characters; not a variant file.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UnipetlError(f"{str(path)!r} is malformed JSON: {err.msg} at line {err.lineno} column {err.colno}.") from None


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UnipetlError(f"variant directory lacks its weights file {str(path)!r}.")
    try:
        return load_file(str(path))  # safetensors: a JSON header and raw bytes, nothing executable
    except (SafetensorError, OSError, ValueError) as err:
        raise UnipetlError(f"{str(path)!r} is not a readable safetensors file: {str(err).splitlines()[0] if str(err) else type(err).__name__}.") from None


def read_saved(directory: str | Path) -> SavedVariant:
    """Read a saved variant (save_variant's layout, or a `unipetl run` out dir) without applying it."""
    d = Path(directory)
    if not d.is_dir():
        raise UnipetlError(f"variant directory {str(d)!r} does not exist.")
    if (d / META_FILE).is_file() or (d / ADAPTER_FILE).is_file():
        meta = _read_json(d / META_FILE)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
            got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise UnipetlError(f"{str(d / META_FILE)!r}: `format` must be {FORMAT_VERSION}, got {got!r}.")
        variant = Variant.from_dict(_read_json(d / VARIANT_FILE))
        tensors = _read_tensors(d / ADAPTER_FILE)
    elif (d / RUN_RECORD).is_file():
        record = _read_json(d / RUN_RECORD)
        if not isinstance(record, dict) or not isinstance(record.get("variant"), dict):
            raise UnipetlError(f"{str(d / RUN_RECORD)!r} has no `variant` object; not a unipetl run directory.")
        variant = Variant.from_dict(record["variant"])
        tensors = _read_tensors(d / RUN_WEIGHTS)
        meta = {"format": FORMAT_VERSION, "base_model": {"id": record.get("model")}, "head": {}, "legacy_run_dir": True}
    else:
        raise UnipetlError(f"{str(d)!r} is not a saved variant: it has neither {META_FILE} nor {RUN_RECORD}.")
    return SavedVariant(d, variant, meta, tensors)


def _check_identity(model: nn.Module, saved: SavedVariant, check_weights: bool) -> None:
    where = str(saved.directory)
    base = saved.meta.get("base_model", {})
    if "model_type" not in base:  # a legacy run directory: only tensor names / shapes can be checked
        return
    if base["model_type"] != model.config.model_type:
        raise UnipetlError(f"{where}: the variant was trained on a {base['model_type']!r} model ({base.get('id')}), this model is {model.config.model_type!r}.")
    mine = base_identity(model, base_model_id=None, exclude=set(saved.tensors))
    for key in ("d_model", "vocab_size", "stacks", "base_params"):
        if base.get(key) != mine[key]:
            raise UnipetlError(f"{where}: base model `{key}` differs: the variant's model ({base.get('id')}) has {base.get(key)!r}, this model {mine[key]!r}.")
    head = saved.meta.get("head", {})
    if head.get("tensors") and head.get("class") != type(model).__name__:
        raise UnipetlError(f"{where}: the variant carries a {head.get('class')} head, this model is a {type(model).__name__}.")
    if head.get("num_labels") is not None and head["num_labels"] != getattr(model.config, "num_labels", None):
        raise UnipetlError(f"{where}: the variant's head has num_labels {head['num_labels']}, this model {getattr(model.config, 'num_labels', None)}.")
    if base.get("config_sha256") != mine["config_sha256"]:
        diff = sorted(k for k in set(base.get("config", {})) | set(mine["config"])
                      if k not in _VOLATILE and base.get("config", {}).get(k) != mine["config"].get(k))
        logger.warning("%s: base config differs from the one the variant was trained with (keys %s)", where, diff[:5])
    if check_weights and base.get("weights_sha256") != mine["weights_sha256"]:
        raise UnipetlError(f"{where}: this model's frozen weights differ from those of {base.get('id')!r} the variant was trained on "
                           "(weights fingerprint mismatch; pass check_weights=False to load anyway).")


def _expected_tensors(model: nn.Module, variant: Variant) -> dict[str, tuple[int, ...]] | None:
    """Names / shapes of the tensors `variant` trains on this model, from a meta-device dry run."""
    try:
        with torch.device("meta"):
            skeleton = type(model)._from_config(copy.deepcopy(model.config))
    except Exception as err:  # noqa: BLE001 - a model class without _from_config: checked after applying instead
        logger.debug("no meta skeleton for %s (%s); tensors are checked after applying", type(model).__name__, err)
        return None
    with torch.device("meta"):  # the inserted modules must be created on the skeleton's device too
        apply_variant(skeleton, variant)
    return {n: tuple(p.shape) for n, p in skeleton.named_parameters() if p.requires_grad}


def _check_tensors(saved: SavedVariant, expected: dict[str, tuple[int, ...]]) -> None:
    where = str(saved.directory / (ADAPTER_FILE if not saved.meta.get("legacy_run_dir") else RUN_WEIGHTS))
    unexpected = sorted(set(saved.tensors) - set(expected))
    missing = sorted(set(expected) - set(saved.tensors))
    if unexpected:
        raise UnipetlError(f"{where}: tensor {unexpected[0]!r} is not one this model trains under the variant ({len(unexpected)} unexpected in all).")
    if missing:
        raise UnipetlError(f"{where}: lacks the tensor {missing[0]!r} the variant needs on this model ({len(missing)} missing in all).")
    for name, t in saved.tensors.items():
        if tuple(t.shape) != expected[name]:
            raise UnipetlError(f"{where}: tensor {name!r} has shape {tuple(t.shape)}, this model expects {expected[name]}.")


def load_variant(model: nn.Module, directory: str | Path, *, check_weights: bool = True) -> Realized:
    """Check the identity, apply the saved variant to a fresh base model and load its tensors."""
    saved = read_saved(directory)
    if getattr(model, "_unipetl_realized", None) is not None:
        raise UnipetlError("load_variant: the model already has a variant applied; start from a fresh base model.")
    _check_identity(model, saved, check_weights)
    expected = _expected_tensors(model, saved.variant)
    if expected is not None:
        _check_tensors(saved, expected)
    realized = apply_variant(model, saved.variant)
    try:
        load_variant_state_dict(model, saved.tensors)
    except UnipetlError as err:
        raise UnipetlError(f"{saved.directory}: {err}") from None
    logger.info("loaded %s into %s", saved.directory, type(model).__name__)
    return realized
