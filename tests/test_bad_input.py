"""Bad input across the CLI: one clear error line, exit code 2, nothing stored changed.

Every case runs against a storage that already holds a study; the SQLite file's bytes and the
study's trials are compared before and after. Hostile files (huge, binary, YAML with python
tags, deeply nested JSON / YAML) must be refused without executing, hanging or crashing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import optuna
import pytest

from unipetl.search import study as studies
from unipetl.search.cli import main

optuna.logging.set_verbosity(optuna.logging.WARNING)
BASE = ["search", "--task", "sst2", "--model", "tiny-bert", "--budget", "5%", "--trials", "2", "--storage", "{db}", "--study", "u", "--no-progress"]


def _search(*extra: str) -> list[str]:
    return [*BASE, *extra]  # argparse: the last value of a repeated flag wins


CASES: list[tuple[str, list[str], str]] = [
    ("budget 0", _search("--budget", "0"), "budget"),
    ("budget -1", _search("--budget", "-1"), "budget"),
    ("budget 150%", _search("--budget", "150%"), "budget"),
    ("budget abc", _search("--budget", "abc"), "budget"),
    ("budget too small", _search("--budget", "0.00001%"), "smaller than any non-empty variant"),
    ("trials 0", _search("--trials", "0"), "`trials` should be a positive integer, got 0"),
    ("rung examples 0", _search("--mode", "frontier", "--pruner", "mo-asha", "--eval-every", "5", "--rung-examples", "0"),
     "`rung_examples` (dev examples a MO-ASHA rung's loss is measured on) should be a positive integer, got 0"),
    ("rung order", _search("--mode", "frontier", "--pruner", "mo-asha", "--eval-every", "5", "--rung-order", "nsga2"),
     "`rung_order` should be one of hv, eps-net, crowding, got 'nsga2'"),
    ("trials -1", _search("--trials", "-1"), "`trials` should be a positive integer, got -1"),
    ("workers 0", _search("--workers", "0"), "`workers` should be a positive integer, got 0"),
    ("unknown task", _search("--task", "sst3"), "Unknown task 'sst3'"),
    ("unknown model", _search("--model", "tiny-bertt"), "tiny-bert"),
    ("unknown storage scheme", _search("--storage", "mongodb://localhost/x"), "scheme 'mongodb' is not supported"),
    ("storage not a URL", _search("--storage", "just some words"), "`storage` must be a database URL"),
    ("bad lr", _search("--lr", "-1"), "`lr`"),
    ("other task, same study", _search("--task", "rte"), "exists with task='sst2'"),
    ("study file missing", _search("--study-file", "{tmp}/nope.yaml"), "cannot read study file"),
    ("study file binary", _search("--study-file", "{tmp}/binary.yaml"), "is not a UTF-8 text file"),
    ("study file huge", _search("--study-file", "{tmp}/huge.yaml"), "is larger than"),
    ("study file python tag", _search("--study-file", "{tmp}/python.yaml"), "is not valid YAML"),
    ("study file deeply nested", _search("--study-file", "{tmp}/nested.yaml"), "nested too deeply"),
    ("study file a list", _search("--study-file", "{tmp}/list.yaml"), "must hold a mapping, got list"),
    ("study file unknown key", _search("--study-file", "{tmp}/unknown.yaml"), "Unknown key 'budgett'"),
    ("study file bad space", _search("--study-file", "{tmp}/space.yaml"), "space `attention_methods` holds unknown value 'adapterz'"),
    ("task file python tag", _search("--task", "{tmp}/task.yaml"), "{tmp}/task.yaml"),
    ("resume missing study", ["resume", "--storage", "{db}", "--study", "uu", "--no-progress"], "Did you mean: u"),
    ("resume trials 0", ["resume", "--storage", "{db}", "--study", "u", "--trials", "0"], "`trials` should be a positive integer"),
    ("status missing study", ["status", "--storage", "{db}", "--study", "nope"], "does not exist"),
    ("status corrupted sqlite", ["status", "--storage", "sqlite:///{tmp}/corrupt.db", "--study", "u"], "is not a readable SQLite database"),
    ("search corrupted sqlite", _search("--storage", "sqlite:///{tmp}/corrupt.db"), "is not a readable SQLite database"),
    ("status sqlite is a directory", ["status", "--storage", "sqlite:///{tmp}/adir", "--study", "u"], "is not a readable SQLite database"),
    ("report corrupted sqlite", ["report", "--storage", "sqlite:///{tmp}/corrupt.db", "--out", "{tmp}/rep"], "corrupt.db"),
    ("run variant deeply nested", ["run", "--task", "sst2", "--model", "tiny-bert", "--variant", "{tmp}/nested.json", "--out", "{tmp}/r"], "nested too deeply"),
    ("run variant binary", ["run", "--task", "sst2", "--model", "tiny-bert", "--variant", "{tmp}/binary.yaml", "--out", "{tmp}/r"], "binary.yaml"),
    ("count unknown preset", ["count", "--model", "tiny-bert", "--preset", "lorra"], "Did you mean: lora"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    (d / "binary.yaml").write_bytes(bytes(range(256)) * 64)
    (d / "huge.yaml").write_text("task: sst2\n" + "# padding\n" * 220_000)
    (d / "python.yaml").write_text(f'task: !!python/object/apply:os.system ["touch {d}/pwned"]\nmodel: tiny-bert\n')
    (d / "nested.yaml").write_text("space: " + "[" * 20_000 + "]" * 20_000 + "\n")
    (d / "list.yaml").write_text("- task\n- model\n")
    (d / "unknown.yaml").write_text("task: sst2\nmodel: tiny-bert\nbudgett: 1%\n")
    (d / "space.yaml").write_text("space:\n  attention_methods: [lora, adapterz]\n")
    (d / "task.yaml").write_text(f'name: !!python/object/apply:os.system ["touch {d}/pwned"]\n')
    (d / "nested.json").write_text("[" * 200_000 + "]" * 200_000)
    (d / "corrupt.db").write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 40)
    (d / "adir").mkdir()
    return d


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("db") / "u.db"
    studies.create_or_check(studies.StudySpec(seeds=1, task="sst2", model="tiny-bert", budget="5%", trials=2, storage=f"sqlite:///{path}", study="u",
                                              space={"presets": ["lora"]}))
    return path


@pytest.fixture
def db(tmp_path: Path, template_db: Path) -> str:
    """A fresh copy of a storage holding study "u" (2 tickets), per case."""
    shutil.copy(template_db, tmp_path / "u.db")
    return f"sqlite:///{tmp_path}/u.db"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "-"


@pytest.mark.parametrize("name, argv, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_2_nothing_changed(name: str, argv: list[str], message: str, files: Path, db: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    db_file = Path(db.split("///", 1)[1])
    args = [a.replace("{db}", db).replace("{tmp}", str(files)) for a in argv]
    watched = [db_file, files / "corrupt.db"]
    before = [_digest(p) for p in watched]
    trials_before = [(t.number, t.state, t.user_attrs) for t in studies.load(db, "u").get_trials()]
    capsys.readouterr()
    assert main(args) == 2
    out = capsys.readouterr()
    err = out.err.strip()
    assert len(err.splitlines()) == 1, err
    assert message.replace("{tmp}", str(files)) in err, err
    assert err.startswith(f"unipetl {args[0]}: error: ") and "Traceback" not in out.out + out.err
    assert [_digest(p) for p in watched] == before
    assert [(t.number, t.state, t.user_attrs) for t in studies.load(db, "u").get_trials()] == trials_before
    assert not (files / "pwned").exists()  # the python tag was never executed
    assert not (files / "rep").exists() and not (files / "r").exists()


def test_at_least_twenty_cases() -> None:
    assert len(CASES) >= 20 and len({c[0] for c in CASES}) == len(CASES)


def test_variant_directory_whose_weights_do_not_match_the_model(tmp_path: Path) -> None:
    """unipetl.spaces.io.load_variant refuses weights of another shape / another variant, model untouched."""
    import torch

    from unipetl.spaces.io import load_variant, save_variant
    from unipetl.spaces.presets import parse_preset
    from unipetl.spaces.realize import apply_variant
    from unipetl.spaces.testing import tiny_model

    torch.manual_seed(0)
    save_variant(apply_variant(tiny_model("bert", "cls"), parse_preset("lora:r=4")), tmp_path / "v", base_model_id="tiny-bert")
    (tmp_path / "w").mkdir()
    for f in ("variant.json", "unipetl.json", "adapter.safetensors"):
        shutil.copy(tmp_path / "v" / f, tmp_path / "w" / f)
    # the same files with a variant that wants r=8: the stored r=4 tensors no longer fit
    (tmp_path / "w" / "variant.json").write_text(json.dumps(parse_preset("lora:r=8").to_dict()))
    torch.manual_seed(0)
    model = tiny_model("bert", "cls")
    names = sorted(n for n, _ in model.named_parameters())
    with pytest.raises(Exception) as info:
        load_variant(model, tmp_path / "w")
    assert type(info.value).__name__ == "UnipetlError" and "shape" in str(info.value) and len(str(info.value).splitlines()) == 1
    assert sorted(n for n, _ in model.named_parameters()) == names  # nothing was inserted
    # truncated weights file
    data = (tmp_path / "v" / "adapter.safetensors").read_bytes()
    (tmp_path / "v" / "adapter.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception) as info:
        load_variant(model, tmp_path / "v")
    assert type(info.value).__name__ == "UnipetlError" and "not a readable safetensors file" in str(info.value)
    assert sorted(n for n, _ in model.named_parameters()) == names
