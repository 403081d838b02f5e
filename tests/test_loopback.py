"""tune.loopback: a run's own local Ray binds to 127.0.0.1 and its token is private (the listening sockets of a
real run are checked in tests/test_run.py)."""

from __future__ import annotations

import os

import pytest

from tune.loopback import bind_to_loopback, ensure_private_token, requested_address, write_private_token

SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", SWITCH):
        monkeypatch.setenv(name, "")  # recorded, so what the test's code sets is undone after it (delenv of an
        monkeypatch.delenv(name)  # absent variable records nothing)


def test_only_a_local_run_is_bound_to_loopback(monkeypatch):
    bind_to_loopback("10.0.0.5:6379")
    assert SWITCH not in os.environ
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert requested_address(None) == "auto"
    bind_to_loopback(None)
    assert SWITCH not in os.environ
    monkeypatch.delenv("RAY_ADDRESS")
    bind_to_loopback(None)
    assert os.environ[SWITCH] == "0"


def test_a_users_own_switch_is_kept(monkeypatch):
    monkeypatch.setenv(SWITCH, "1")
    bind_to_loopback(None)
    assert os.environ[SWITCH] == "1"


def test_a_new_token_is_readable_by_its_owner_only(tmp_path):
    token = ensure_private_token(tmp_path)
    assert token == tmp_path / ".ray" / "auth_token"
    assert token.stat().st_mode & 0o777 == 0o600 and token.parent.stat().st_mode & 0o077 == 0
    assert len(token.read_text()) == 64 and int(token.read_text(), 16) >= 0


def test_an_existing_token_is_kept_and_an_open_one_noted(tmp_path, capsys):
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("mine")
    token.chmod(0o644)
    assert ensure_private_token(tmp_path) == token
    assert token.read_text() == "mine" and token.stat().st_mode & 0o777 == 0o644
    assert f"chmod 600 {token}" in capsys.readouterr().err


def test_a_token_another_run_wrote_first_is_kept_whole(tmp_path):
    """Two runs started at once on a fresh machine (or two test workers): the one that writes second keeps the
    first one's token and leaves no draft behind."""
    token = write_private_token(tmp_path / ".ray" / "auth_token")
    first = token.read_text()
    assert write_private_token(token) == token and token.read_text() == first
    assert [p.name for p in token.parent.iterdir()] == ["auth_token"]


def test_token_from_the_environment_or_auth_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert ensure_private_token(tmp_path) is None
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "abc")
    assert ensure_private_token(tmp_path) is None
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "elsewhere" / "token"))
    assert ensure_private_token(tmp_path) == tmp_path / "elsewhere" / "token"
    assert not (tmp_path / ".ray").exists()


def test_a_loopback_cluster_s_nodes_never_get_the_single_node_switch(monkeypatch, tmp_path):
    from tune.loopback_cluster import cluster_env

    bind_to_loopback(None)  # what a local run in this process sets
    env = cluster_env(tmp_path)
    assert os.environ[SWITCH] == "0" and SWITCH not in env and env["RAY_AUTH_MODE"] == "token"
