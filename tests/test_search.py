"""Studies, tickets, workers and the search / resume / status CLI on SQLite with a tiny BERT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import drivers_together, lone_driver_presets, open_together, search_args

from unipetl.search import study as studies
from unipetl.search.cli import main
from unipetl.search.worker import run_worker
from unipetl.spaces.search_space import DEFAULT_PRESETS, budget_params, size_preset

optuna.logging.set_verbosity(optuna.logging.WARNING)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def cli(*argv: str) -> int:
    return main(list(argv))


def load(url: str, name: str) -> optuna.Study:
    return studies.load(url, name)


def test_budget_study_end_to_end(tmp_path: Path, data_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    assert cli(*search_args(url, "b", data_dir, trials=4)) == 0
    study = load(url, "b")
    c = studies.state_counts(study)
    assert c["COMPLETE"] + c["PRUNED"] == 4 and c["RUNNING"] == c["WAITING"] == 0
    b = budget_params(study.user_attrs["budget_fraction"], studies.model_shape("tiny-bert"))
    trials = study.get_trials(deepcopy=False)
    presets = [t.user_attrs.get("preset") for t in trials]
    shape = studies.model_shape("tiny-bert")
    assert presets == [size_preset(n, shape, 0.05).name for n in DEFAULT_PRESETS[:4]]  # enqueued first, sized to 5 %
    assert presets[0] == "mam:l=7,r=3,s=4.0,mlp=0"  # tiny BERT: d=32, 2 layers, 143,xxx params → l halved from 30
    for t in trials:
        rec = t.user_attrs["record"]
        assert rec["schema"] == 1 and rec["status"] in ("ok", "pruned") and rec["task"] == "sst2"
        assert 0 < rec["paper_params"] <= b and rec["paper_params"] == t.user_attrs["paper_params"]
        assert rec["preset"] == t.user_attrs["preset"]
        if t.state.name == "COMPLETE":
            assert t.values == [rec["metric"]]
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE]
    capsys.readouterr()
    assert cli("status", "--storage", url, "--study", "b", "--json") == 0
    s = json.loads(capsys.readouterr().out)
    assert s["states"]["COMPLETE"] + s["states"]["PRUNED"] == 4 and s["states"]["FAIL"] == 0
    # status shows the report's design points: tiny 2-step models may all sit at chance, and then
    # there is no best and no front (not a point ranked for being cheapest)
    assert (s["best"] is None and s["pareto"] == []) or s["best"]["metric"] == max(p["metric"] for p in s["pareto"])


def test_frontier_study_end_to_end_with_search_samples(tmp_path: Path, data_dir: str) -> None:
    url = f"sqlite:///{tmp_path}/f.db"
    (tmp_path / "f.yaml").write_text("space:\n  presets: [prefix]\n  attention_methods: [lora, pa]\n  ffn_methods: [none, pa]\n")
    assert cli(*search_args(url, "f", data_dir, "--mode", "frontier", "--study-file", str(tmp_path / "f.yaml"), trials=3)) == 0
    study = load(url, "f")
    assert len(study.directions) == 2 and study.directions[1] == optuna.study.StudyDirection.MINIMIZE
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 3
    assert done[0].user_attrs["preset"].startswith("prefix:")
    b = budget_params(study.user_attrs["budget_fraction"], studies.model_shape("tiny-bert"))
    for t in done:
        assert t.values[1] == pytest.approx(t.user_attrs["record"]["paper_fraction"]) and t.user_attrs["record"]["paper_params"] <= b
    for t in done[1:]:  # sampled from the restricted space
        assert t.params["attn.method"] in ("lora", "pa")


def test_frontier_mode_spreads_the_named_methods_over_the_budget_range(tmp_path: Path) -> None:
    """Budget mode sizes every named method to the budget; frontier mode to a geometric ladder over
    `budget_use` ([2 %, 100 %] of the budget), falling back to the next larger share when a method
    has no size that small (Houlsby r=1 needs 0.04 %, more than its 0.01 % share)."""
    url = f"sqlite:///{tmp_path}/s.db"
    shares = [1.0, 0.02 ** 0.2, 0.02 ** 0.4, 0.02 ** 0.6, 0.02 ** 0.8, 0.02]
    got = {}
    for mode in ("budget", "frontier"):
        spec = studies.StudySpec(seeds=1, task="sst2", model="minilm", budget="0.5%", mode=mode, trials=24, storage=url, study=mode, pruner="none")
        attrs = studies.study_attrs(spec)
        assert studies.preset_shares(attrs, 6) == (pytest.approx(shares) if mode == "frontier" else [1.0] * 6)
        study = optuna.create_study(storage=url, study_name=mode, directions=studies.directions(attrs))
        got[mode] = studies.enqueue_presets(study, attrs)
        assert [t.user_attrs["preset"] for t in study.get_trials(deepcopy=False)] == got[mode]
    assert list(DEFAULT_PRESETS) == ["mam", "lora", "pa-ffn", "scaled-pa", "prefix", "houlsby"]
    assert got["budget"] == ["mam:l=15,r=9,s=4.0,mlp=0", "lora:r=12,s=2.0", "pa-ffn:r=24", "scaled-pa:r=24,s=4.0", "prefix:l=24,mlp=0", "houlsby:r=12"]
    assert got["frontier"] == ["mam:l=15,r=9,s=4.0,mlp=0", "lora:r=5,s=2.0", "pa-ffn:r=5", "scaled-pa:r=2,s=4.0", "prefix:l=1,mlp=0", "houlsby:r=1"]


def _stub_runner(fail_every: int = 0) -> Any:
    calls = {"n": 0}

    def run(attrs: dict[str, Any], variant: Any, report: Any, preset: str | None) -> dict[str, Any]:
        calls["n"] += 1
        if fail_every and calls["n"] % fail_every == 0:
            raise RuntimeError("boom")
        report(1, 0.5)
        return {"schema": 1, "status": "ok", "metric": 0.5 + 0.01 * len(variant.modules), "paper_fraction": 0.01, "preset": preset}

    return run


def test_failed_trials_are_replaced_so_the_budget_is_exact(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    spec = studies.StudySpec(seeds=1, task="sst2", model="tiny-bert", budget="5%", trials=5, storage=url, study="x", space={"presets": ["lora"]}, pruner="none")
    studies.create_or_check(spec)
    ran = run_worker(url, "x", runner=_stub_runner(fail_every=3), poll_seconds=0.1)
    study = load(url, "x")
    c = studies.state_counts(study)
    assert c == {"COMPLETE": 5, "FAIL": 2, "PRUNED": 0, "RUNNING": 0, "WAITING": 0} and ran == 7
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert all(t.user_attrs["record"]["error"].startswith("RuntimeError: boom") for t in failed)


def test_same_study_name_continues_and_raises_trials(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    spec = studies.StudySpec(seeds=1, task="sst2", model="tiny-bert", budget="5%", trials=2, storage=url, study="c", space={"presets": []})
    studies.create_or_check(spec)
    assert studies.state_counts(load(url, "c"))["WAITING"] == 2
    spec.trials = 4
    studies.create_or_check(spec)
    assert studies.state_counts(load(url, "c"))["WAITING"] == 4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--budget", "0"], "budget"), (["--budget", "-1"], "budget"), (["--budget", "150%"], "budget"), (["--budget", "abc"], "budget"),
        (["--budget", "0.00001%"], "smaller than any non-empty variant"),
        (["--storage", "mongodb://localhost/x"], "scheme 'mongodb' is not supported"),
        (["--task", "sst3"], "Unknown task 'sst3'"),
        (["--lr", "-1"], "`lr`"),
    ],
)
def test_bad_input_exits_2_and_leaves_the_study_untouched(tmp_path: Path, data_dir: str, capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    url = f"sqlite:///{tmp_path}/u.db"
    studies.create_or_check(studies.StudySpec(seeds=1, task="sst2", model="tiny-bert", trials=2, storage=url, study="u", space={"presets": ["lora"]}))
    before = [(t.number, t.state, t.user_attrs) for t in load(url, "u").get_trials()]
    args = search_args(url, "u", data_dir, *extra)  # argparse: the last value of a repeated flag wins
    capsys.readouterr()
    assert cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert [(t.number, t.state, t.user_attrs) for t in load(url, "u").get_trials()] == before


def test_existing_study_with_other_task_or_space_is_refused(tmp_path: Path, data_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/e.db"
    studies.create_or_check(studies.StudySpec(seeds=1, task="sst2", model="tiny-bert", budget="5%", trials=2, storage=url, study="e"))
    attrs = dict(load(url, "e").user_attrs)
    assert cli("search", "--task", "rte", "--model", "tiny-bert", "--budget", "5%", "--storage", url, "--study", "e") == 2
    assert "exists with task='sst2'" in capsys.readouterr().err
    (tmp_path / "s.yaml").write_text("space:\n  attention_methods: [prefix]\n")
    assert cli(*search_args(url, "e", data_dir, "--study-file", str(tmp_path / "s.yaml"), trials=2)) == 2
    assert "exists with space=" in capsys.readouterr().err
    assert load(url, "e").user_attrs == attrs and len(load(url, "e").get_trials()) == len(attrs["space"]["presets"][:2])


def test_continuing_a_study_with_other_run_settings_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A continued study runs its trials with its stored settings; a different training setting,
    pruner, sampler or MO-ASHA rung setting asked for was silently ignored — now one error line,
    exit 2, study unchanged. The same command continues it."""
    url = f"sqlite:///{tmp_path}/k.db"
    studies.create_or_check(studies.StudySpec(seeds=1, task="sst2", model="tiny-bert", budget="5%", mode="frontier", trials=2, storage=url, study="m",
                                              pruner="mo-asha", train={"eval_every": 5}))
    before = (dict(load(url, "m").user_attrs), len(load(url, "m").get_trials()))
    base = ["search", "--task", "sst2", "--model", "tiny-bert", "--budget", "5%", "--mode", "frontier", "--trials", "2", "--seeds", "1",
            "--storage", url, "--study", "m", "--no-progress"]
    for extra, message in [(["--pruner", "mo-asha", "--eval-every", "7"], "exists with train={'eval_every': 5}, not {'eval_every': 7}"),
                           (["--pruner", "none", "--eval-every", "5"], "exists with pruner='mo-asha', not 'none'"),
                           (["--pruner", "mo-asha", "--eval-every", "5", "--sampler", "random"], "exists with sampler='tpe', not 'random'"),
                           (["--pruner", "mo-asha", "--eval-every", "5", "--reduction-factor", "2"], "exists with reduction_factor=3, not 2"),
                           (["--pruner", "mo-asha", "--eval-every", "5", "--rung-examples", "64"], "exists with rung_examples=256, not 64"),
                           (["--pruner", "mo-asha", "--eval-every", "5", "--rung-order", "crowding"], "exists with rung_order='hv', not 'crowding'")]:
        capsys.readouterr()
        assert cli(*base, *extra, "--trials", "3") == 2, extra
        err = capsys.readouterr().err.strip()
        assert message in err and "unipetl resume" in err and len(err.splitlines()) == 1, err
        assert (dict(load(url, "m").user_attrs), len(load(url, "m").get_trials())) == before
    spec = studies.StudySpec(seeds=1, task="sst2", model="tiny-bert", budget="5%", mode="frontier", trials=3, storage=url, study="m",
                             pruner="mo-asha", train={"eval_every": 5})
    assert len(studies.create_or_check(spec).get_trials()) == 3  # the same settings continue it (and raise the trials)


def test_study_file_unknown_keys_and_bundled_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text("task: sst2\nmodel: tiny-bert\nbudgett: 1%\n")
    assert cli("search", "--study-file", str(tmp_path / "bad.yaml"), "--storage", f"sqlite:///{tmp_path}/n.db") == 2
    err = capsys.readouterr().err
    assert "Unknown key 'budgett'" in err and "Did you mean: budget?" in err
    assert not (tmp_path / "n.db").exists() or studies.study_names(studies.make_storage(f"sqlite:///{tmp_path}/n.db")) == []
    for path in sorted((ROOT / "studies").glob("*.yaml")):
        data = studies.load_study_file(path)
        spec = studies.StudySpec(**data)
        spec.validate()
        assert path.read_text().startswith("# unipetl search")
    assert {p.stem for p in (ROOT / "studies").glob("*.yaml")} >= {"xsum-bart-large", "enro-mbart-large", "mnli-roberta-base", "sst2-roberta-base", "sst2-minilm"}


def test_status_of_missing_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    studies.create_or_check(studies.StudySpec(seeds=1, task="sst2", model="tiny-bert", budget="5%", trials=1, storage=url, study="real"))
    assert cli("status", "--storage", url, "--study", "reall") == 2
    assert "Did you mean: real" in capsys.readouterr().err


def _worker_cmd(url: str, name: str) -> list[str]:
    return [sys.executable, "-m", "unipetl.search.worker", "--storage", url, "--study", name, "--heartbeat-interval", "1", "--grace-period", "3"]


@pytest.mark.slow
def test_sigkill_worker_mid_trial_then_resume(tmp_path: Path, data_dir: str) -> None:
    url = f"sqlite:///{tmp_path}/k.db"
    spec = studies.StudySpec(seeds=1, task="sst2", model="tiny-bert", budget="5%", trials=3, storage=url, study="k", data_dir=data_dir, space={"presets": ["lora"]},
                             train={"max_train_examples": 48, "max_eval_examples": 24, "max_steps": 400, "batch_size": 8, "max_length": 16, "eval_every": 400})
    studies.create_or_check(spec)
    proc = subprocess.Popen(_worker_cmd(url, "k"), cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 120
    while studies.state_counts(load(url, "k"))["RUNNING"] == 0:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.5)
    time.sleep(2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = load(url, "k").get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert len(killed) == 1
    time.sleep(4)  # past the grace period
    study = load(url, "k")
    study.set_user_attr("train", {**study.user_attrs["train"], "max_steps": 2, "eval_every": 1})  # finish fast
    assert cli("resume", "--storage", url, "--study", "k", "--no-progress", "--heartbeat-interval", "1", "--grace-period", "3") == 0
    c = studies.state_counts(load(url, "k"))
    assert c["COMPLETE"] + c["PRUNED"] == 3 and c["FAIL"] == 1 and c["RUNNING"] == c["WAITING"] == 0
    retried = [t for t in load(url, "k").get_trials() if t.system_attrs.get("failed_trial") == killed[0].number]
    assert len(retried) == 1 and retried[0].user_attrs.get("preset") == killed[0].user_attrs.get("preset") and retried[0].params == killed[0].params


@pytest.mark.slow
def test_two_workers_one_sqlite_study(tmp_path: Path, data_dir: str) -> None:
    url = f"sqlite:///{tmp_path}/w.db"
    assert cli(*search_args(url, "w", data_dir, "--workers", "2", trials=6)) == 0
    study = load(url, "w")
    c = studies.state_counts(study)
    assert c["COMPLETE"] + c["PRUNED"] == 6 and c["FAIL"] == c["RUNNING"] == c["WAITING"] == 0
    assert len(study.get_trials()) == 6  # no duplicate and no lost ticket
    assert all("record" in t.user_attrs for t in study.get_trials())


def test_processes_opening_a_new_database_together_all_succeed(tmp_path: Path) -> None:
    """Regression: four processes opening one new SQLite file at the same instant raced to create
    its tables, and the losers failed with "not a readable SQLite database (table studies already
    exists)" (3 rounds of 3 before the fix). The losers now open it again and find the schema."""
    url = f"sqlite:///{tmp_path}/new.db"
    (tmp_path / "barrier").mkdir()
    open_together(url, 4, tmp_path / "barrier")
    assert studies.study_names(studies.make_storage(url)) == []


def test_drivers_starting_together_on_one_new_study_take_turns(tmp_path: Path) -> None:
    """Regression: three `unipetl search` drivers started together on one new study (the same
    command on every node) both created it (one failed, or deleted the other's half-written study)
    and each raise of `--trials` enqueued the missing tickets once per driver. The driver lock
    makes the result that of one driver alone."""
    drivers_together(f"sqlite:///{tmp_path}/d.db", "d", tmp_path)


def test_the_driver_lock_closes_the_read_then_write_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same race as above, made certain: each driver's read-then-write window is widened by
    0.3 s (between counting the tickets and enqueueing, and between writing the study's attrs and
    enqueueing the named methods), and two drivers start 0.1 s apart. Without the driver lock the
    raise to 6 trials gives 9 tickets, and the second creator tops up the first one's study before
    its named methods exist (empty tickets first)."""
    import dataclasses
    import threading
    import time

    url = f"sqlite:///{tmp_path}/w.db"
    spec = studies.StudySpec(seeds=1, task="sst2", model="tiny-bert", budget="5%", trials=3, storage=url, study="w")
    alone = lone_driver_presets(spec)
    counts, presets = studies.state_counts, studies.enqueue_presets
    monkeypatch.setattr(studies, "state_counts", lambda *a, **k: (counts(*a, **k), time.sleep(0.3))[0])
    monkeypatch.setattr(studies, "enqueue_presets", lambda *a, **k: (time.sleep(0.3), presets(*a, **k))[1])

    def two_drivers(s: studies.StudySpec) -> list[str | None]:
        errors: list[BaseException] = []

        def drive() -> None:
            try:
                studies.create_or_check(s)
            except BaseException as err:  # noqa: BLE001 - reported below
                errors.append(err)

        threads = [threading.Thread(target=drive, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.1)
        for t in threads:
            t.join(60)
        assert not errors and not any(t.is_alive() for t in threads), errors
        return [t.user_attrs.get("preset") for t in load(url, "w").get_trials()]

    assert two_drivers(spec) == alone
    assert two_drivers(dataclasses.replace(spec, trials=6)) == alone + [None] * 3


def test_a_local_model_directory_is_budgeted_on_its_own_config_even_when_named_like_a_card(tmp_path: Path) -> None:
    """A folder named bert-base-uncased holding a small model was budgeted on the 110 M card, while its records
    counted the model trained: trials over the budget entered the frontier."""
    from unipetl.spaces.testing import tiny_config

    d = tmp_path / "bert-base-uncased"
    d.mkdir()
    tiny_config("bert").save_pretrained(d)
    shape = studies.model_shape(str(d))
    assert shape.base_params == studies.model_shape("tiny-bert").base_params < 1_000_000
    assert studies.model_shape("bert-base-uncased").base_params > 100_000_000  # the hub id still means the card


def test_a_trials_seed_must_be_an_integer() -> None:
    from unipetl.evaluators.trial import TrialConfig
    from unipetl.spaces.variant import Variant

    for bad in (2.7, True, "7", -1):
        with pytest.raises(studies.UnipetlError, match=r"`seed` should be an integer in 0..2\*\*32-1, got"):
            TrialConfig(task="sst2", model="tiny-bert", variant=Variant(), seed=bad)  # type: ignore[arg-type]


def test_a_driver_with_a_shorter_heartbeat_does_not_fail_a_slower_workers_live_trial(tmp_path: Path) -> None:
    """Stale means 3 beats of the slowest worker that opened the study: a driver beating every second failed the live
    trial of a worker beating every 4 s as stale, and its training was thrown away."""
    import time

    import optuna

    url = f"sqlite:///{tmp_path}/hb.db"
    studies.create_or_check(studies.StudySpec(seeds=1, task="sst2", model="tiny-bert", budget="5%", trials=1, storage=url, study="h"))
    worker = studies.load(url, "h", heartbeat_interval=4)
    studies.note_heartbeat(worker, 4)  # what run_worker does first
    trial = worker.ask()
    from unipetl.search import optuna_ext

    optuna_ext.heartbeat(worker)[1](optuna_ext.trial_id(trial))  # what the worker's heartbeat thread writes
    driver = studies.load(url, "h", heartbeat_interval=1)
    time.sleep(3.5)  # past the driver's own grace (3 s), within the worker's (12 s)
    optuna.storages.fail_stale_trials(driver)
    assert driver.get_trials(deepcopy=False)[0].state == optuna.trial.TrialState.RUNNING
    assert driver.user_attrs["heartbeat_interval"] == 4
