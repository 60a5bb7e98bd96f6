"""`--backend tune`: the space through OptunaSearch, mirroring Tune trials into the Optuna study,
ASHA settings (fast, no Ray started), and real Tune studies on a local Ray (cluster tier)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import FAST
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.stopper import Stopper

from unipetl.search import study as studies
from unipetl.search import tune_backend as tb
from unipetl.search.cli import main
from unipetl.spaces.accounting import count
from unipetl.spaces.presets import parse_preset
from unipetl.spaces.search_space import SpaceConfig, budget_params, suggest_variant

optuna.logging.set_verbosity(optuna.logging.WARNING)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
TRAIN = {"max_train_examples": 48, "max_eval_examples": 24, "max_steps": 2, "batch_size": 8, "eval_every": 1, "max_length": 16}


def _study(tmp_path: Path, name: str = "t", trials: int = 3, presets: tuple[str, ...] = ("lora",), **kw: Any) -> tuple[str, optuna.Study]:
    url = f"sqlite:///{tmp_path}/{name}.db"
    spec = studies.StudySpec(seeds=1, task="sst2", model="tiny-bert", budget="5%", trials=trials, storage=url, study=name, space={"presets": list(presets)},
                             train=dict(TRAIN), **kw)
    study = studies.create_or_check(spec)
    tb.prepare_study(study, url)
    return url, studies.load(url, name)


def _sampled_config(seed: int, attrs: dict[str, Any]) -> dict[str, Any]:
    """What OptunaSearch hands a trainable: the params the space function suggested."""
    space = tb.TuneSpace(studies.model_shape("tiny-bert"), attrs["budget_fraction"], attrs["space"], ())
    ot = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trial = ot.ask()
    assert space(trial) is None
    return dict(trial.params)


def test_space_gives_presets_first_then_samples_within_budget(tmp_path: Path) -> None:
    _, study = _study(tmp_path)
    attrs = study.user_attrs
    shape = studies.model_shape("tiny-bert")
    space = tb.TuneSpace(shape, attrs["budget_fraction"], attrs["space"], ("lora:r=5", "prefix:l=3"))
    ot = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = [space(ot.ask()) for _ in range(5)]
    assert out[:2] == [{"preset": "lora:r=5"}, {"preset": "prefix:l=3"}] and out[2:] == [None] * 3
    b = budget_params(attrs["budget_fraction"], shape)
    for seed in range(8):
        config = _sampled_config(seed, attrs)
        variant, params, dists = tb.variant_of(config, attrs)
        assert variant == suggest_variant(optuna.trial.FixedTrial(config), shape, attrs["budget_fraction"], SpaceConfig.from_dict(attrs["space"]))
        assert params == config and set(dists) == set(config) and 0 < count(variant, shape).paper_params <= b
        # the rate is searched with the design (central rate × lr_scale), as the workers' sampler does
        lo, hi = SpaceConfig.from_dict(attrs["space"]).lr_scale
        assert lo <= config["lr_scale"] <= hi and tb.trial_train(config, attrs)["lr_scale"] == config["lr_scale"]
    assert tb.trial_train({"preset": "lora:r=5"}, attrs)["lr_scale"] == 1.0  # named methods at their central rates
    fixed = {**attrs, "train": {**attrs["train"], "lr": 1e-3}}
    assert "lr_scale" not in tb.trial_train(config, fixed)  # a study's fixed lr: nothing searched
    fixed_space = tb.TuneSpace(shape, attrs["budget_fraction"], attrs["space"], (), search_lr=False)
    t = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    fixed_space(t)
    assert "lr_scale" not in t.params
    with pytest.raises(Exception, match="lacks parameter 'attn.method'"):
        tb.variant_of({"budget_use": 0.7}, attrs)


def test_mirror_fills_tickets_complete_pruned_failed_and_is_idempotent(tmp_path: Path) -> None:
    url, study = _study(tmp_path, trials=3)
    attrs = study.user_attrs
    preset = study.get_trials()[0].user_attrs["preset"]
    rec = {"schema": 1, "status": "ok", "metric": 0.75, "fidelity": "final", "preset": preset}
    assert tb.mirror(study, tune_trial_id="a", config={"preset": preset}, result={"final": True, "record": json.dumps(rec), "value": 0.75}, error=None) \
        == optuna.trial.TrialState.COMPLETE
    assert tb.mirror(study, tune_trial_id="a", config={"preset": preset}, result={}, error=None) is None  # mirrored once
    config = _sampled_config(1, attrs)
    stopped = {"final": False, "step": 1, "value": 0.5, "curve": json.dumps([[1, 0.5]]), "time_total_s": 3.0}
    assert tb.mirror(study, tune_trial_id="b", config=config, result=stopped, error=None) == optuna.trial.TrialState.PRUNED
    assert tb.mirror(study, tune_trial_id="c", config=_sampled_config(2, attrs), result={}, error="RuntimeError: boom") == optuna.trial.TrialState.FAIL
    study = studies.load(url, "t")
    trials = study.get_trials()
    assert len(trials) == 3 and [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "FAIL"]  # the three tickets, no new trial
    done, pruned, failed = trials
    assert done.values == [0.75] and done.user_attrs["record"] == rec and done.user_attrs["tune_trial_id"] == "a" and done.params == {}
    shape = studies.model_shape("tiny-bert")
    variant = suggest_variant(optuna.trial.FixedTrial(config), shape, attrs["budget_fraction"], SpaceConfig.from_dict(attrs["space"]))
    assert pruned.params == pytest.approx(config) and pruned.intermediate_values == {1: 0.5} and pruned.values == [0.5]
    r = pruned.user_attrs["record"]
    assert r["status"] == "pruned" and r["fidelity"] == "partial" and r["metric"] == 0.5 and r["best_step"] == 1
    assert r["paper_params"] == count(variant, shape).paper_params == pruned.user_attrs["paper_params"] and r["variant"] == variant.to_dict()
    assert r["curve"] == [{"step": 1, "loss": None, "metrics": {"accuracy": 0.5}}] and r["schema"] == 1
    assert failed.user_attrs["record"]["status"] == "failed" and failed.user_attrs["record"]["error"] == "RuntimeError: boom"
    # status reads the mirrored study unchanged: only the finished trial is on the front
    from unipetl.search.commands.status import summary

    s = summary(study)
    assert s["states"]["COMPLETE"] == 1 and s["states"]["PRUNED"] == 1 and [p["number"] for p in s["pareto"]] == [0]
    assert s["best"]["metric"] == 0.75 and s["best"]["paper_fraction"] == pytest.approx(count(parse_preset(preset), shape).paper_params / shape.base_params)


def test_schedulers_and_run_dir(tmp_path: Path) -> None:
    _, study = _study(tmp_path)
    asha = tb.make_scheduler(study.user_attrs)
    assert isinstance(asha, ASHAScheduler) and asha.metric == "value" and asha._mode == "max" and asha._time_attr == "step"
    assert asha._max_t == TRAIN["max_steps"] + 1 and asha._brackets[0]._rungs[-1][0] == TRAIN["eval_every"]  # grace period: the first report
    assert type(tb.make_scheduler({**study.user_attrs, "mode": "frontier"})) is FIFOScheduler
    assert type(tb.make_scheduler({**study.user_attrs, "pruner": "none"})) is FIFOScheduler
    assert study.user_attrs["tune_dir"] == str((tmp_path / "tune" / "t.db" / "t").resolve()) and study.user_attrs["backend"] == "tune"
    # a server: one folder per database, so two databases' studies of one name never share (or restore) a Tune run
    a, b = tb.default_tune_dir("postgresql://h/db", "x"), tb.default_tune_dir("postgresql://h/other", "x")
    assert a != b and Path(a).parent.parent == Path("runs/tune").resolve() and Path(a).name == "x"
    assert tb.default_tune_dir("postgresql://u:secret@h/db", "x") == tb.default_tune_dir("postgresql://u:other@h/db", "x")  # passwords do not count


def test_default_tune_dir_is_one_folder_for_every_spelling_of_one_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "s.db").touch()
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "s.db").symlink_to(tmp_path / "real" / "s.db")
    monkeypatch.chdir(tmp_path / "link")
    want = str((tmp_path / "real" / "tune" / "s.db" / "x").resolve())
    spellings = [f"sqlite:///{tmp_path}/real/s.db", f"sqlite:///{tmp_path}/link/s.db", "sqlite:///s.db", "sqlite:///../real/./s.db"]
    assert [tb.default_tune_dir(u, "x") for u in spellings] == [want] * 4
    assert tb.default_tune_dir("sqlite:///:memory:", "x") != tb.default_tune_dir(f"sqlite:///{tmp_path}/real/s.db", "x")


def test_backend_of_an_existing_study_is_kept(tmp_path: Path, data_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    url, study = _study(tmp_path, name="k")
    before = [(t.number, t.state, t.user_attrs) for t in study.get_trials()]
    argv = ["search", "--task", "sst2", "--model", "tiny-bert", "--budget", "5%", "--trials", "3", "--storage", url, "--study", "k", "--data-dir", data_dir]
    assert main(argv) == 2
    assert "exists with backend='tune', not 'optuna'" in capsys.readouterr().err
    assert [(t.number, t.state, t.user_attrs) for t in studies.load(url, "k").get_trials()] == before
    assert main([*argv, "--backend", "tune", "--cpus-per-trial", "0"]) == 2
    assert "`cpus-per-trial` must be > 0" in capsys.readouterr().err
    # Tune's searcher trades the metric and paper params only: another frontier is refused before anything is stored
    other = ["search", "--task", "sst2", "--model", "tiny-bert", "--budget", "5%", "--trials", "3", "--storage", url, "--study", "lat",
             "--mode", "frontier", "--objectives", "accuracy,latency", "--backend", "tune", "--data-dir", data_dir]
    assert main(other) == 2
    assert "`objectives` 'accuracy,latency': --backend tune's searcher trades the metric and paper params only" in capsys.readouterr().err
    assert "lat" not in studies.study_names(studies.make_storage(url))


def test_a_failed_named_method_is_retried_in_a_gap_never_past_the_budget(tmp_path: Path) -> None:
    """After a stop, the driver's top-up fills a failed named method's gap with a blank ticket; the retry then took a
    ticket of its own too, and the study ran one trial more than --trials."""
    url, study = _study(tmp_path, trials=3)
    preset = study.get_trials()[0].user_attrs["preset"]
    assert tb.mirror(study, tune_trial_id="a", config={"preset": preset}, result={}, error="RuntimeError: boom") == optuna.trial.TrialState.FAIL
    studies.top_up(study)  # what run_study does first on resume
    tb._retry_failed_presets(study)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 3 and [t.user_attrs.get("preset") for t in waiting].count(preset) == 1  # the blank became the method's
    tb._retry_failed_presets(study)  # idempotent: the method has a ticket in play
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 3


def test_a_mirrored_ticket_has_a_heartbeat_so_a_dead_driver_leaves_it_stale(tmp_path: Path) -> None:
    """The mirror claimed its ticket without a heartbeat: a driver dying between claim and tell left it RUNNING for ever
    (Optuna fails as stale only a trial that has a heartbeat)."""
    url, study = _study(tmp_path, trials=3)
    tid = tb._claim_ticket(study, study.get_trials()[0].user_attrs["preset"])
    watcher = studies.load(url, "t", heartbeat_interval=1, grace_period=1)
    time.sleep(2.5)  # the driver died: no beat since the claim
    optuna.storages.fail_stale_trials(watcher)
    (claimed,) = [t for t in watcher.get_trials(deepcopy=False) if t.number == 0]
    assert claimed.state == optuna.trial.TrialState.FAIL and tid is not None


# --- real Tune runs (local Ray, 2 CPUs) -------------------------------------------------------


class StopSampledTrials(FIFOScheduler):
    """Stops every sampled (non-preset) trial at its first report: those must end PRUNED."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        return TrialScheduler.CONTINUE if trial.config.get("preset") else TrialScheduler.STOP


class InterruptOnce(Stopper):
    """Presses Ctrl-C (SIGINT to this process, caught by Tune, which saves the experiment and
    ends the run) once a first trial is mirrored into the study while others still run or wait;
    the first time only: a marker file survives the pickled stopper that Tuner.restore brings back."""

    def __init__(self, url: str, name: str, marker: str) -> None:
        self.url, self.name, self.marker, self.last = url, name, marker, 0.0

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        if os.path.exists(self.marker) or time.monotonic() - self.last < 0.5:
            return False
        self.last = time.monotonic()
        if any("tune_trial_id" in t.user_attrs for t in studies.load(self.url, self.name).get_trials(deepcopy=False)):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGINT)
        return False


@pytest.fixture(scope="module")
def ray_local() -> Any:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


def _check_records(study: optuna.Study) -> None:
    b = budget_params(study.user_attrs["budget_fraction"], studies.model_shape("tiny-bert"))
    for t in study.get_trials():
        rec = t.user_attrs["record"]
        assert rec["paper_params"] <= b and t.user_attrs["tune_trial_id"]
        if t.state.name == "COMPLETE":
            assert rec["status"] == "ok" and rec["fidelity"] == "final" and t.values == [rec["metric"]] and len(rec["curve"]) == TRAIN["max_steps"]
        else:
            assert t.state.name == "PRUNED" and rec["status"] == "pruned" and rec["fidelity"] == "partial" and 1 <= len(rec["curve"]) <= TRAIN["max_steps"]


@pytest.mark.cluster
def test_tune_study_mirrors_finished_and_stopped_trials(tmp_path: Path, data_dir: str, ray_local: Any, capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = _study(tmp_path, name="s", trials=3, presets=("lora",), data_dir=data_dir)
    assert tb.run_tune(url, "s", scheduler=StopSampledTrials()) is True
    study = studies.load(url, "s")
    _check_records(study)
    assert studies.state_counts(study) == {"COMPLETE": 1, "FAIL": 0, "PRUNED": 2, "RUNNING": 0, "WAITING": 0}
    (done,) = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert done.user_attrs["preset"] == done.user_attrs["record"]["preset"] and done.number == 0
    assert all(t.params and "attn.method" in t.params for t in study.get_trials(states=(optuna.trial.TrialState.PRUNED,)))
    assert (tmp_path / "tune" / "s.db" / "s" / "round-0").is_dir() and study.user_attrs["tune_rounds"] == [3]
    # the CLI on the finished study: same search, same backend → nothing more runs
    (tmp_path / "s.yaml").write_text("space:\n  presets: [lora]\n")
    assert main(["search", "--task", "sst2", "--model", "tiny-bert", "--budget", "5%", "--trials", "3", "--storage", url, "--study", "s",
                 "--study-file", str(tmp_path / "s.yaml"), "--data-dir", data_dir, "--backend", "tune", "--no-progress", *FAST]) == 0
    assert "s (tune): 1 complete, 2 pruned, 0 failed" in capsys.readouterr().out
    assert len(studies.load(url, "s").get_trials()) == 3 and studies.load(url, "s").user_attrs["tune_rounds"] == [3]


@pytest.mark.cluster
def test_interrupted_tune_study_is_restored_by_resume(tmp_path: Path, data_dir: str, ray_local: Any, capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = _study(tmp_path, name="r", trials=4, presets=("lora", "prefix"), data_dir=data_dir)
    assert tb.run_tune(url, "r", stop=InterruptOnce(url, "r", str(tmp_path / "interrupted"))) is False
    c = studies.state_counts(studies.load(url, "r"))
    assert 1 <= c["COMPLETE"] + c["PRUNED"] < 4 and c["WAITING"] == 4 - c["COMPLETE"] - c["PRUNED"] - c["FAIL"] and c["RUNNING"] == 0
    assert main(["resume", "--storage", url, "--study", "r", "--no-progress"]) == 0  # Tuner.restore of round-0 (default ASHA)
    assert "(tune): " in capsys.readouterr().out
    study = studies.load(url, "r")
    c = studies.state_counts(study)
    assert c["COMPLETE"] + c["PRUNED"] == 4 and c["FAIL"] == c["RUNNING"] == c["WAITING"] == 0 and len(study.get_trials()) == 4
    assert study.user_attrs["tune_rounds"] == [4] and len({t.user_attrs["tune_trial_id"] for t in study.get_trials()}) == 4
    assert {t.user_attrs.get("preset", "").split(":")[0] for t in study.get_trials()} >= {"lora", "prefix"}
    _check_records(study)
