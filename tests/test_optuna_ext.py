"""What unipetl needs beyond Optuna's public API (unipetl.search.optuna_ext), pinned.

Two kinds of test:
- Optuna's behaviour that optuna_ext relies on (private names, storage semantics of a claim,
  FixedTrial replay). An Optuna release that changes any of it fails here first, by name.
- The claim itself: processes claiming tickets of one study at the same moment never claim the
  same ticket twice (SQLite through the file lock, PostgreSQL through its row lock).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from unipetl.search import optuna_ext

optuna.logging.set_verbosity(optuna.logging.WARNING)
PG = os.environ.get("UNIPETL_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


def _study(url: str, name: str, tickets: int) -> optuna.Study:
    study = optuna.create_study(storage=url, study_name=name)
    for i in range(tickets):
        study.enqueue_trial({}, user_attrs={"ticket": i})
    return study


# --- Optuna's behaviour, pinned ---------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_private_names_unipetl_reads_still_exist_and_mean_the_same(tmp_path: Path) -> None:
    study = _study(f"sqlite:///{tmp_path}/s.db", "s", 2)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert optuna_ext.database_url(study) == f"sqlite:///{tmp_path}/s.db"  # the claim lock is found through it
    assert optuna_ext._lock_path(study) == Path(os.path.realpath(f"{tmp_path}/s.db")).with_name("s.db.claim.lock")
    assert optuna_ext.database_url(optuna.create_study()) is None
    tid = optuna_ext.trial_id(waiting[1])
    assert isinstance(tid, int) and optuna_ext.storage_of(study).get_trial(tid).number == waiting[1].number == 1
    assert [t.number for t in optuna_ext.storage_of(study).get_all_trials(optuna_ext.storage_of(study).get_study_id_from_name("s"))] == [0, 1]
    live = optuna_ext.live(study, tid)
    assert optuna_ext.trial_id(live) == tid and live.number == 1
    optuna_ext.set_user_attr(study, tid, "k", [1, 2])
    optuna_ext.set_param(study, tid, "lr", 0.5, FloatDistribution(0.1, 1.0, log=True))
    optuna_ext.set_intermediate(study, tid, 7, 0.25)
    got = optuna_ext.frozen(study, live)
    assert got.user_attrs["k"] == [1, 2] and got.params["lr"] == 0.5 and got.intermediate_values == {7: 0.25}
    interval, beat = optuna_ext.heartbeat(optuna.load_study(study_name="s", storage=optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path}/s.db", heartbeat_interval=3)))
    assert interval == 3 and callable(beat)


def test_storage_state_change_is_the_claim_primitive(tmp_path: Path) -> None:
    """RUNNING is granted from WAITING only; a second claim of a RUNNING trial answers False and a
    finished trial raises — the two answers `claim_waiting` uses to skip taken tickets."""
    study = _study(f"sqlite:///{tmp_path}/c.db", "c", 2)
    storage = optuna_ext.storage_of(study)
    first, second = (optuna_ext.trial_id(t) for t in study.get_trials(deepcopy=False))
    assert storage.set_trial_state_values(first, state=TrialState.RUNNING) is True
    assert storage.set_trial_state_values(first, state=TrialState.RUNNING) is False
    study.tell(optuna_ext.live(study, first), state=TrialState.FAIL)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_state_values(first, state=TrialState.RUNNING)
    assert optuna_ext.claim_waiting(study) == second and optuna_ext.claim_waiting(study) is None


def test_fixed_trial_replays_parameters_with_their_distributions() -> None:
    trial = optuna.trial.FixedTrial({"kind": "lora", "s": 2.0})
    assert trial.suggest_categorical("kind", ["lora", "adapter"]) == "lora" and trial.suggest_float("s", 0.5, 4.0, log=True) == 2.0
    assert trial.distributions == {"kind": CategoricalDistribution(["lora", "adapter"]), "s": FloatDistribution(0.5, 4.0, log=True)}
    with pytest.raises(ValueError, match=r"parameter 'r' is not found"):
        trial.suggest_float("r", 1, 8)


def test_claim_order_and_hook(tmp_path: Path) -> None:
    study = _study(f"sqlite:///{tmp_path}/o.db", "o", 3)
    seen: list[int] = []
    tid = optuna_ext.claim_waiting(study, order=lambda ts: sorted(ts, key=lambda t: -t.number), before=seen.append)
    assert optuna_ext.frozen(study, optuna_ext.live(study, tid)).number == 2 and seen == [tid]
    assert optuna_ext.frozen(study, optuna_ext.live(study, tid)).state == TrialState.RUNNING


def test_in_memory_sqlite_claims_once_per_ticket() -> None:
    study = _study("sqlite://", "m", 3)
    assert [optuna_ext.claim_waiting(study) for _ in range(4)].count(None) == 1


# --- concurrent claims -----------------------------------------------------------------------


def _claimer(url: str, name: str, start: float, out: str) -> None:
    study = optuna.load_study(study_name=name, storage=optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}
                                                                                    if url.startswith("sqlite") else {}))
    time.sleep(max(0.0, start - time.time()))
    claimed = []
    while (tid := optuna_ext.claim_waiting(study)) is not None:
        claimed.append(tid)
    Path(out).write_text("\n".join(map(str, claimed)))


def _race(url: str, name: str, tmp_path: Path, tickets: int = 120, procs: int = 4, spellings: tuple[str, ...] = ()) -> list[int]:
    """Claims of `procs` processes racing for `tickets` tickets; process i opens the storage as
    (url, *spellings)[i % (1 + len(spellings))]."""
    _study(url, name, tickets)
    urls = (url, *spellings)
    ctx = mp.get_context("spawn")
    start = time.time() + 8.0  # every process loaded and waiting before the first claim
    outs = [str(tmp_path / f"claims{i}.txt") for i in range(procs)]
    ps = [ctx.Process(target=_claimer, args=(urls[i % len(urls)], name, start, out)) for i, out in enumerate(outs)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(120)
        assert p.exitcode == 0
    return [int(x) for out in outs for x in Path(out).read_text().split()]


def test_concurrent_claims_on_sqlite_never_share_a_ticket(tmp_path: Path) -> None:
    """4 processes race for 120 tickets of one SQLite study, two of them through a symlink to the
    database file: each ticket claimed exactly once. Without the claim lock this fails (two
    processes read WAITING before either writes); with a lock named after the spelling, the two
    spellings claim under two locks."""
    os.symlink(tmp_path / "race.db", tmp_path / "link.db")
    claims = _race(f"sqlite:///{tmp_path}/race.db", "race", tmp_path, spellings=(f"sqlite:///{tmp_path}/link.db",))
    assert len(claims) == 120 and len(set(claims)) == 120


def test_every_spelling_of_one_sqlite_file_claims_under_one_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _study(f"sqlite:///{tmp_path}/s.db", "s", 1)
    os.symlink(tmp_path / "s.db", tmp_path / "link.db")
    real = Path(os.path.realpath(tmp_path / "s.db.claim.lock"))
    for url in (f"sqlite:///{tmp_path}/s.db", "sqlite:///./s.db", f"sqlite:///{tmp_path}/link.db", "sqlite:///link.db"):
        assert optuna_ext._lock_path(optuna.load_study(study_name="s", storage=url)) == real, url
    assert optuna_ext._lock_path(optuna.create_study(storage="sqlite:///:memory:")) == Path()


@pytest.mark.cluster
def test_concurrent_claims_on_postgresql_never_share_a_ticket(tmp_path: Path) -> None:
    claims = _race(PG, f"race-{uuid.uuid4().hex[:8]}", tmp_path)
    assert len(claims) == 120 and len(set(claims)) == 120


def _mo_study_with_pruned(n_complete: int, n_pruned: int) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(n_complete + n_pruned):
        t = study.ask()
        x = t.suggest_float("x", 0.0, 1.0)
        t.suggest_categorical("kind", ["a", "b"])
        if i < n_complete:
            study.tell(t, [x, 1 - x])
        else:
            optuna_ext.set_intermediate(study, optuna_ext.trial_id(t), 10, 0.5)  # as MO-ASHA stores a rung (Trial.report refuses MO)
            study.tell(t, state=TrialState.PRUNED)
    return study


def test_plain_tpe_still_fails_on_a_multi_objective_study_with_pruned_trials() -> None:
    """Pins the Optuna behaviour `CompleteOnlyTPE` works around: TPE scores PRUNED trials through
    `study.direction`, which raises for several objectives. If this starts passing, Optuna reads
    them itself and the view can go."""
    study = _mo_study_with_pruned(4, 3)
    study.sampler = optuna.samplers.TPESampler(n_startup_trials=2, seed=0)
    with pytest.raises(RuntimeError, match="multi-objective"):
        study.ask().suggest_float("x", 0.0, 1.0)


def test_complete_only_tpe_sees_pruned_trials_as_running() -> None:
    study = _mo_study_with_pruned(4, 3)
    view = optuna_ext._PrunedAsRunning(study)
    # TPE's startup count (COMPLETE, PRUNED): the completed trials only
    assert [t.number for t in view._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))] == [0, 1, 2, 3]
    # constant liar's read (COMPLETE, PRUNED, RUNNING): the pruned ones too, as RUNNING
    seen = view._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    assert [(t.number, t.state) for t in seen][4:] == [(i, TrialState.RUNNING) for i in (4, 5, 6)]
    assert len(view.get_trials()) == 7 and view.directions == study.directions
    assert [t.state for t in study.get_trials()][4:] == [TrialState.PRUNED] * 3  # the study itself is unchanged
    study.sampler = optuna_ext.CompleteOnlyTPE(n_startup_trials=2, seed=0)
    for _ in range(5):
        t = study.ask()
        x = t.suggest_float("x", 0.0, 1.0)
        assert t.suggest_categorical("kind", ["a", "b"]) in ("a", "b") and 0.0 <= x <= 1.0
        study.tell(t, [x, 1 - x])
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 9
    # the same seed, the same history: the same proposals (deterministic)
    again = _mo_study_with_pruned(4, 3)
    again.sampler = optuna_ext.CompleteOnlyTPE(n_startup_trials=2, seed=0)
    assert again.ask().suggest_float("x", 0.0, 1.0) == study.trials[7].params["x"]


def test_complete_only_tpe_steers_away_from_pruned_designs() -> None:
    """Pins what the view relies on: TPE (constant liar) counts RUNNING trials among the worse
    ones. Eight completed designs at x in [0.3, 1] (all on one front) and, in one study, twelve
    pruned designs at x < 0.15: TPE then proposes x < 0.15 less often than in the study without them."""
    def low_proposals(with_pruned: bool) -> int:
        study = optuna.create_study(directions=["maximize", "minimize"])
        done = [0.3 + 0.1 * i for i in range(8)]
        pruned = [0.01 * (i + 1) for i in range(12)] if with_pruned else []
        for x in done + pruned:
            study.enqueue_trial({"x": x})
            t = study.ask()
            t.suggest_float("x", 0.0, 1.0)
            if x in pruned:
                study.tell(t, state=TrialState.PRUNED)
            else:
                study.tell(t, [x, x])
        study.sampler = optuna_ext.CompleteOnlyTPE(n_startup_trials=2, seed=1)
        low = 0
        for _ in range(30):
            t = study.ask()
            low += t.suggest_float("x", 0.0, 1.0) < 0.15
            study.tell(t, state=TrialState.FAIL)
        return low

    shown, blind = low_proposals(True), low_proposals(False)
    assert shown < blind, (shown, blind)
