"""Password users: salted scrypt hashes in a file, checked in constant time, managed by a CLI."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from streamchat.core.errors import ConfigError
from streamchat.hosting.users import UsersFile, hash_password, password_problem, verify_password


def test_hash_is_salted_and_verifies_only_the_right_password():
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first != second, "each hash has its own salt"
    assert verify_password("correct horse", first)
    assert not verify_password("correct hors", first)
    assert not verify_password("anything", "garbage")


def test_users_file_round_trip_and_permissions(tmp_path):
    users = UsersFile(tmp_path / "users.txt")
    users.add("alice", "wonderland1")
    users.add("bob", "builder123")
    assert users.names() == ["alice", "bob"]
    assert users.check("alice", "wonderland1")
    assert not users.check("alice", "builder123")
    assert not users.check("nobody", "wonderland1")
    assert "wonderland1" not in (tmp_path / "users.txt").read_text()
    mode = stat.S_IMODE(os.stat(tmp_path / "users.txt").st_mode)
    assert mode == 0o600
    assert users.remove("bob") and not users.remove("bob")
    assert users.names() == ["alice"]


@pytest.mark.parametrize(("name", "password"), [("bad name", "longenough"), ("ok", "short")])
def test_bad_names_and_short_passwords_are_refused(tmp_path, name, password):
    with pytest.raises(ConfigError):
        UsersFile(tmp_path / "u.txt").add(name, password)


def test_a_corrupt_line_is_reported_with_its_number(tmp_path):
    path = tmp_path / "users.txt"
    path.write_text("# comment\nalice:plaintext\n")
    with pytest.raises(ConfigError, match="line 2"):
        UsersFile(path).check("alice", "x")


def test_cli_adds_lists_and_removes_users(tmp_path):
    path = tmp_path / "users.txt"

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streamchat.hosting.users", "--file", str(path), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
        )

    added = cli("add", "carol", "--password-stdin", stdin="s3cret-pass\n")
    assert added.returncode == 0, added.stderr
    assert UsersFile(path).check("carol", "s3cret-pass")
    assert cli("list").stdout.split() == ["carol"]
    assert cli("add", "dave", "--password-stdin", stdin="short\n").returncode == 2
    assert cli("remove", "carol").returncode == 0
    assert cli("remove", "carol").returncode == 1


def test_cli_takes_the_users_file_from_dot_env_as_the_app_does(tmp_path):
    (tmp_path / ".env").write_text("AUTH_USERS_FILE=team/users.txt\n")
    environ = {k: v for k, v in os.environ.items() if k != "AUTH_USERS_FILE"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, environ.get("PYTHONPATH")]))
    added = subprocess.run(
        [sys.executable, "-m", "streamchat.hosting.users", "add", "erin", "--password-stdin"],
        input="s3cret-pass\n",
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env=environ,
    )
    assert added.returncode == 0, added.stderr
    assert UsersFile(tmp_path / "team" / "users.txt").check("erin", "s3cret-pass")
    assert not (tmp_path / "users.txt").exists()


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("password", "guessing list"),
        ("PassWord123", "guessing list"),
        (" " * 8, "not counting spaces"),
        ("abc    d", "not counting spaces"),
        ("aaaaaaaaaaaa", "different characters"),
        ("Erin.Example", "user name"),
    ],
)
def test_weak_passwords_are_refused_with_the_reason(tmp_path, password, why):
    with pytest.raises(ConfigError, match=why):
        UsersFile(tmp_path / "u.txt").add("erin.example", password)
    assert password_problem("erin.example", "a long passphrase") is None
