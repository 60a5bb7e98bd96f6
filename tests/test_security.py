"""Security: safetensors only, YAML safe loader, no password in any output, escaped HTML.

- Saved variants load without unpickling: torch.load and every pickle entry point are made to
  explode while a variant is saved and loaded; a directory holding only a pickle is refused.
- YAML is read with the safe loader: the unsafe loaders explode, python tags are refused unrun.
- A storage URL's password never reaches stdout, stderr, logs, records, reports or status.
- The HTML report escapes every string that came from a study (name, error, preset).
"""

from __future__ import annotations

import logging
import os
import pickle
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from transformers.models.bert import modeling_bert  # noqa: F401 - imported before torch.load / pickle are patched

from unipetl.search import study as studies
from unipetl.search.cli import main
from unipetl.search.worker import run_worker

optuna.logging.set_verbosity(optuna.logging.WARNING)
SECRET = "s3cret"
PG_HOST = os.environ.get("UNIPETL_TEST_PG_HOST", "127.0.0.1:5432")


def _explode(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("unpickling / unsafe loading was attempted")


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "load", _explode)
    monkeypatch.setattr(pickle, "load", _explode)
    monkeypatch.setattr(pickle, "loads", _explode)


def test_saved_variants_load_from_safetensors_only(tmp_path: Path, no_pickle: None) -> None:
    from unipetl.spaces.io import load_variant, save_variant
    from unipetl.spaces.presets import parse_preset
    from unipetl.spaces.realize import apply_variant, variant_state_dict
    from unipetl.spaces.testing import tiny_model

    torch.manual_seed(0)
    realized = apply_variant(tiny_model("bert", "cls"), parse_preset("mam:l=4,r=4"))
    with torch.no_grad():
        for p in realized.model.parameters():
            if p.requires_grad:
                p.add_(0.01)
    save_variant(realized, tmp_path / "v", base_model_id="tiny-bert")
    assert sorted(os.listdir(tmp_path / "v")) == ["adapter.safetensors", "unipetl.json", "variant.json"]
    torch.manual_seed(0)
    loaded = load_variant(tiny_model("bert", "cls"), tmp_path / "v")
    want, got = variant_state_dict(realized.model), variant_state_dict(loaded.model)
    assert sorted(want) == sorted(got) and all(torch.equal(want[k], got[k]) for k in want)

    # a directory with only a pickled checkpoint is refused without touching it
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(Exception) as info:
        load_variant(tiny_model("bert", "cls"), tmp_path / "p")
    assert type(info.value).__name__ == "UnipetlError" and "is not a saved variant" in str(info.value)
    # a safetensors name with pickle bytes inside is refused by the safetensors parser
    (tmp_path / "v" / "adapter.safetensors").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(Exception) as info:
        load_variant(tiny_model("bert", "cls"), tmp_path / "v")
    assert "not a readable safetensors file" in str(info.value)


def test_yaml_is_read_with_the_safe_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from unipetl.evaluators.tasks import get_task

    safe_load_impl = yaml.load

    def load(stream: Any, Loader: Any) -> Any:  # noqa: N803 - yaml's own name
        if Loader not in (yaml.SafeLoader, getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            raise AssertionError(f"YAML read with {Loader.__name__}")
        return safe_load_impl(stream, Loader)

    monkeypatch.setattr(yaml, "load", load)
    for name in ("unsafe_load", "full_load", "load_all", "unsafe_load_all", "full_load_all"):
        monkeypatch.setattr(yaml, name, _explode)
    (tmp_path / "s.yaml").write_text("task: sst2\nmodel: tiny-bert\nbudget: 1%\nspace:\n  attention_methods: [lora]\n")
    assert studies.load_study_file(tmp_path / "s.yaml")["space"] == {"attention_methods": ["lora"]}
    (tmp_path / "evil.yaml").write_text(f'task: !!python/object/apply:os.system ["touch {tmp_path}/pwned"]\n')
    with pytest.raises(Exception) as info:
        studies.load_study_file(tmp_path / "evil.yaml")
    assert "is not valid YAML" in str(info.value) and not (tmp_path / "pwned").exists()
    (tmp_path / "task.yaml").write_text(f'name: !!python/name:os.system\nrun: !!python/object/apply:os.system ["touch {tmp_path}/pwned"]\n')
    with pytest.raises(Exception) as info:
        get_task(str(tmp_path / "task.yaml"))
    assert type(info.value).__name__ == "UnipetlError" and not (tmp_path / "pwned").exists()


def _stub(attrs: dict[str, Any], variant: Any, report: Any, preset: str | None) -> dict[str, Any]:
    return {"schema": 1, "status": "ok", "metric": 0.6 + 0.01 * len(variant.modules), "paper_fraction": 0.01, "task": attrs["task"],
            "model": attrs["model"], "variant": variant.to_dict(), "preset": preset, "fidelity": "final"}


def test_password_not_printed_when_the_database_refuses(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """An unreachable PostgreSQL: the driver's error quotes the DSN; the one line we print does not."""
    caplog.set_level(logging.DEBUG)
    url = f"postgresql+psycopg2://alice:{SECRET}@127.0.0.1:1/nodb"
    for argv in (["search", "--task", "sst2", "--model", "tiny-bert", "--budget", "5%", "--trials", "1", "--storage", url, "--study", "x"],
                 ["status", "--storage", url, "--study", "x"], ["resume", "--storage", url, "--study", "x"],
                 ["report", "--storage", url, "--out", "/nonexistent-unipetl-report"]):
        assert main(argv) == 2
        out = capsys.readouterr()
        assert SECRET not in out.out + out.err + caplog.text, argv[0]
        assert len(out.err.strip().splitlines()) == 1 and "alice" in out.err


@pytest.mark.cluster
def test_password_never_in_logs_errors_records_reports_or_status(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A whole search → status → report cycle on PostgreSQL with a password in the URL (trust auth ignores it)."""
    caplog.set_level(logging.DEBUG)
    url = f"postgresql+psycopg2://postgres:{SECRET}@{PG_HOST}/test"
    name = f"sec-{uuid.uuid4().hex[:8]}"
    spec = studies.StudySpec(seeds=1, task="sst2", model="tiny-bert", budget="5%", trials=2, storage=url, study=name, space={"presets": ["lora"]})
    try:
        studies.create_or_check(spec)
        run_worker(url, name, runner=_stub, poll_seconds=0.1)
        assert main(["status", "--storage", url, "--study", name, "--json"]) == 0
        assert main(["status", "--storage", url, "--study", name]) == 0
        assert main(["resume", "--storage", url, "--study", name, "--no-progress"]) == 0
        assert main(["report", "--storage", url, "--study", name, "--out", str(tmp_path / "rep")]) == 0
        assert main(["search", "--task", "rte", "--model", "tiny-bert", "--storage", url, "--study", name]) == 2  # an error path too
        out = capsys.readouterr()
        study = studies.load(url, name)
        texts = [out.out, out.err, caplog.text, repr(study.user_attrs), repr([t.user_attrs for t in study.get_trials()]),
                 repr([t.system_attrs for t in study.get_trials()])]
        texts += [p.read_bytes().decode("latin-1") for p in (tmp_path / "rep").iterdir()]
        for i, text in enumerate(texts):
            assert SECRET not in text, i
        assert "postgres:***@" in out.out  # the masked URL is what the user sees
    finally:
        optuna.delete_study(study_name=name, storage=url)


def test_report_html_escapes_every_string_from_a_study(tmp_path: Path) -> None:
    evil = "<script>alert('x')</script>"
    url = f"sqlite:///{tmp_path}/h.db"
    name = f"study{evil}"
    studies.create_or_check(studies.StudySpec(seeds=1, task="sst2", model="tiny-bert", budget="5%", trials=2, storage=url, study=name,
                                              space={"presets": ["lora"]}, max_failures=1))
    calls = {"n": 0}

    def runner(attrs: dict[str, Any], variant: Any, report: Any, preset: str | None) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError(f"model said {evil}")
        return {**_stub(attrs, variant, report, preset), "preset": f"lora{evil}", "device": evil}

    run_worker(url, name, runner=runner, poll_seconds=0.1)
    assert main(["report", "--storage", url, "--out", str(tmp_path / "rep"), "--quiet"]) == 0
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page  # the study name, the error and the preset, escaped
    assert page.count("&lt;script&gt;") >= 3


def test_local_workers_get_the_storage_url_from_the_environment_not_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """A password in the storage URL must not show in `ps`: the worker command line carries no URL."""
    import argparse

    from unipetl.search.commands import search as search_cmd
    from unipetl.search.worker import main as worker_main

    launched: list[tuple[list[str], dict[str, str]]] = []

    class FakeProc:
        def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
            launched.append((cmd, env))

        def poll(self) -> int:
            return 0

        def wait(self, timeout: float | None = None) -> int:
            return 0

    monkeypatch.setattr(search_cmd.subprocess, "Popen", FakeProc)
    url = "postgresql+psycopg2://user:s3cret@127.0.0.1:5432/test"
    args = argparse.Namespace(workers=2, heartbeat_interval=5, grace_period=None)

    class Bar:
        def __getattr__(self, name: str) -> Any:
            return lambda *a, **k: None

    try:
        search_cmd._local_processes(url, "s", args, Bar())
    except Exception:  # the fake processes end at once; how the driver reacts to that is not this test's subject
        pass
    assert len(launched) == 2
    for cmd, env in launched:
        assert not any("s3cret" in part for part in cmd), cmd
        assert env["UNIPETL_STORAGE"] == url
    # the worker refuses to start without a storage (flag or environment): exit code 2 from argparse
    monkeypatch.delenv("UNIPETL_STORAGE", raising=False)
    with pytest.raises(SystemExit) as err:
        worker_main(["--study", "x"])
    assert err.value.code == 2
