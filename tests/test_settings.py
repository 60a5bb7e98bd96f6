"""One source of truth for training settings: every TrialConfig setting is a `unipetl run` flag,
a `unipetl search` flag and a study-file `train:` key, and reaches the trial a worker trains."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from unipetl.evaluators.trial import TrialConfig, setting_type, settings
from unipetl.search import study as studies
from unipetl.search.cli import build_parser
from unipetl.search.commands import search as search_cmd
from unipetl.search.commands.run import settings_from_args
from unipetl.spaces.presets import parse_preset
from unipetl.spaces.registry import UnipetlError

# a value for each setting that differs from its default and passes validation
VALUES = {int: 7, float: 0.25, str: None}
STR_VALUES = {"device": "cpu", "scheduler": "cosine"}
CONTEXT = {"task", "model", "variant", "data_dir"}


def _value(f: dataclasses.Field) -> object:
    typ = setting_type(f)
    return STR_VALUES[f.name] if typ is str else VALUES[typ]


def test_settings_are_every_field_but_the_context() -> None:
    names = [f.name for f in settings()]
    assert set(names) == {f.name for f in dataclasses.fields(TrialConfig)} - CONTEXT
    assert "max_new_tokens" in names and "scheduler" in names and "latency_batches" in names and len(names) == 19
    assert studies.TRAIN_KEYS == tuple(names)
    for f in settings():
        assert _value(f) != f.default and f.metadata["help"]
        TrialConfig(task="sst2", model="tiny-bert", variant=parse_preset("lora"), **{f.name: _value(f)})  # valid


@pytest.mark.parametrize("name", [f.name for f in settings()])
def test_every_setting_is_a_run_flag(name: str) -> None:
    f = next(f for f in settings() if f.name == name)
    parser, _ = build_parser()
    args = parser.parse_args(["run", "--task", "sst2", "--model", "tiny-bert", "--preset", "lora", "--out", "x",
                              "--" + name.replace("_", "-"), str(_value(f))])
    given = settings_from_args(args)
    assert given == {name: _value(f)}
    config = TrialConfig(task="sst2", model="tiny-bert", variant=parse_preset("lora"), **given)
    assert getattr(config, name) == _value(f)
    # a flag left out keeps TrialConfig's default (no second default in the parser)
    bare = parser.parse_args(["run", "--task", "sst2", "--model", "tiny-bert", "--preset", "lora", "--out", "x"])
    assert settings_from_args(bare) == {}


@pytest.mark.parametrize("name", [f.name for f in settings()])
def test_every_setting_is_a_search_flag_and_a_study_file_key(name: str, tmp_path: Path) -> None:
    f = next(f for f in settings() if f.name == name)
    value = _value(f)
    parser, _ = build_parser()
    args = parser.parse_args(["search", "--task", "sst2", "--model", "tiny-bert", "--storage", f"sqlite:///{tmp_path}/s.db",
                              "--" + name.replace("_", "-"), str(value)])
    spec = search_cmd.build_spec(args)
    assert spec.train[name] == value
    path = tmp_path / "study.yaml"
    path.write_text(f"task: sst2\nmodel: tiny-bert\ntrain:\n  {name}: {value}\n")
    data = studies.load_study_file(path)
    assert data["train"][name] == value
    attrs = studies.study_attrs(studies.StudySpec(**data, storage=f"sqlite:///{tmp_path}/f.db"))
    config = TrialConfig.for_trial(attrs, parse_preset("lora"))  # what a worker rebuilds
    assert getattr(config, name) == value


def test_a_bad_setting_names_field_and_value(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("task: sst2\nmodel: tiny-bert\ntrain:\n  batch_size: 0\n")
    with pytest.raises(UnipetlError, match=r"`batch_size` should be a positive integer, got 0"):
        studies.study_attrs(studies.StudySpec(**studies.load_study_file(path), storage=f"sqlite:///{tmp_path}/f.db"))
    path.write_text("task: sst2\nmodel: tiny-bert\ntrain:\n  max_new_token: 5\n")
    with pytest.raises(UnipetlError, match=r"Unknown key 'max_new_token' in train.*max_new_tokens"):
        studies.StudySpec(**studies.load_study_file(path)).validate()
