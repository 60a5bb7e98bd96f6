"""The driver lock (`search/locks.py`): one driver at a time changes a study's tickets."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from unipetl.search.locks import lock_key, sqlite_place, study_lock


def test_lock_key_is_a_stable_signed_64_bit_key() -> None:
    # pinned: drivers of two unipetl versions on one cluster must lock the same key
    assert lock_key("d") == -765278448151564532
    assert lock_key("sst2-minilm-frontier-1pct") == 7699906355822280842
    assert lock_key("d") != lock_key("e")


def _in_thread(fn: object) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)  # daemon: a lock regression hangs the test, not pytest
    t.start()
    return t


def _second_waits(url: str, name: str, other_url: str, other_name: str) -> bool:
    """Whether a second thread asking for `study_lock(other_url, other_name)` while this thread
    holds `study_lock(url, name)` got it only after this thread let go."""
    held = threading.Event()
    times: dict[str, float] = {}

    def second() -> None:
        held.wait()
        with study_lock(other_url, other_name):
            times["in"] = time.monotonic()

    t = _in_thread(second)
    with study_lock(url, name):
        held.set()
        time.sleep(0.3)
        times["out"] = time.monotonic()
    t.join(30)
    assert not t.is_alive()
    return times["in"] >= times["out"]


def _reenters(*locks: tuple[str | None, str]) -> bool:
    """Whether one thread takes all `locks` nested (no self-deadlock) within 10 s."""
    done = threading.Event()

    def nested(i: int = 0) -> None:
        if i == len(locks):
            done.set()
            return
        with study_lock(*locks[i]):
            nested(i + 1)

    _in_thread(nested).join(10)
    return done.is_set()


@pytest.mark.parametrize("memory", [False, True])
def test_a_second_driver_waits_for_the_lock_and_the_holder_can_reenter(tmp_path: Path, memory: bool) -> None:
    url = "sqlite:///:memory:" if memory else f"sqlite:///{tmp_path}/s.db"
    assert _second_waits(url, "s", url, "s")
    assert _reenters((url, "s"), (url, "s"))  # create_or_check tops up under it
    assert _second_waits(url, "s", url, "s")  # and releases it fully after the nested hold


def test_two_spellings_of_one_sqlite_file_are_one_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    absolute, relative = f"sqlite:///{tmp_path}/s.db", "sqlite:///./s.db"
    assert _second_waits(absolute, "s", relative, "s")
    assert _reenters((absolute, "s"), (relative, "s"))
    assert os.path.exists(f"{tmp_path}/s.db.driver.lock")


def test_one_sqlite_file_is_one_lock_for_all_its_studies(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    assert _second_waits(url, "a", url, "b")
    assert _reenters((url, "a"), (url, "b"))


def test_the_lock_is_released_when_the_body_raises(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    with pytest.raises(KeyError), study_lock(url, "s"), study_lock(url, "s"):
        raise KeyError("x")
    assert _second_waits(url, "s", url, "s") and _reenters((url, "s"))


def test_no_database_no_lock() -> None:
    assert _reenters((None, "s"), (None, "s"))


def test_sqlite_place_is_the_same_for_every_spelling_of_one_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.db").touch()
    os.symlink(tmp_path / "s.db", tmp_path / "link.db")
    real = ("file", os.path.realpath(tmp_path / "s.db"))
    for url in (f"sqlite:///{tmp_path}/s.db", "sqlite:///./s.db", "sqlite:///link.db", f"sqlite+pysqlite:///{tmp_path}/link.db"):
        assert sqlite_place(url) == real, url
    assert _second_waits(f"sqlite:///{tmp_path}/s.db", "s", "sqlite:///link.db", "s")
    assert sqlite_place("sqlite:///:memory:") == ("memory", "sqlite:///:memory:")
    assert sqlite_place("postgresql://u@127.0.0.1:5432/test") is None
