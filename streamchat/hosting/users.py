"""Password users for hosted deployments: a users file with salted scrypt hashes, and the
`streamchat-users` command that manages it.

One user per line: `name:scrypt$n$r$p$salt_hex$hash_hex`. Lines starting with `#` and blank
lines are ignored. scrypt (from the standard library) is memory-hard, so a stolen file is slow
to attack; every user has a random 16-byte salt; comparisons take constant time. New passwords
must pass a minimum policy (`password_problem`): long enough without counting spaces, not one of
the passwords every guessing list starts with, not the user name.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import hmac
import os
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from streamchat.core.errors import ConfigError
from streamchat.settings import ConfigReader

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_NAME = re.compile(r"^[A-Za-z0-9._@+-]{1,64}$")
MIN_PASSWORD_CHARS = 8
MIN_DISTINCT_CHARS = 4
# The first entries of every password-guessing list, in lower case: refused whatever their length.
COMMON_PASSWORDS = frozenset(
    """password password1 password12 password123 passw0rd p@ssw0rd p@ssword 12345678 123456789
    1234567890 0123456789 87654321 11111111 00000000 12341234 qwertyuiop qwerty123 qwerty1234
    1q2w3e4r 1q2w3e4r5t 1qaz2wsx zaq12wsx asdfghjkl azertyuiop iloveyou iloveyou1 sunshine1
    princess1 football1 baseball1 superman1 letmein1 letmein123 welcome1 welcome123 changeme
    changeme1 trustno1 starwars1 dragon123 monkey123 master123 admin123 administrator
    streamchat chainlit secret123 abcd1234 abc12345 abcdefgh""".split()
)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt_hex, hash_hex = stored.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(
            password.encode(),
            salt=bytes.fromhex(salt_hex),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(bytes.fromhex(hash_hex)),
            maxmem=128 * int(r) * int(n) * 2 + 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest.hex(), hash_hex)


# A fixed hash to verify against when the user does not exist, so a login attempt for an
# unknown name costs the same time as one for a known name (no user enumeration by timing).
_DUMMY_HASH = hash_password("not a real password", salt=b"\0" * 16)


def password_problem(name: str, password: str) -> str | None:
    """Why a new password is refused (a sentence for the person choosing it), or None."""
    meaningful = "".join(password.split())
    if len(meaningful) < MIN_PASSWORD_CHARS:
        return f"Passwords need at least {MIN_PASSWORD_CHARS} characters, not counting spaces."
    if len(set(meaningful.casefold())) < MIN_DISTINCT_CHARS:
        return f"Passwords need at least {MIN_DISTINCT_CHARS} different characters."
    folded = meaningful.casefold()
    if folded in COMMON_PASSWORDS:
        return "That password is on every password-guessing list; choose another."
    if folded == "".join(name.split()).casefold():
        return "A password must not be the user name."
    return None


@dataclass
class UsersFile:
    """The users file. Reads lazily and re-reads when the file changes on disk."""

    path: Path

    def _load(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        users: dict[str, str] = {}
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, stored = line.partition(":")
            if not sep or not _NAME.match(name) or not stored.startswith("scrypt$"):
                raise ConfigError(
                    f"{self.path}, line {number}: expected name:scrypt$..., as written by "
                    "`streamchat-users add NAME`."
                )
            users[name] = stored
        return users

    def names(self) -> list[str]:
        return sorted(self._load())

    def check(self, name: str, password: str) -> bool:
        stored = self._load().get(name)
        ok = verify_password(password, stored or _DUMMY_HASH)
        return ok and stored is not None

    def add(self, name: str, password: str) -> None:
        if not _NAME.match(name):
            raise ConfigError("A user name is 1 to 64 letters, digits or . _ @ + - characters.")
        problem = password_problem(name, password)
        if problem is not None:
            raise ConfigError(problem)
        users = self._load()
        users[name] = hash_password(password)
        self._write(users)

    def remove(self, name: str) -> bool:
        users = self._load()
        if users.pop(name, None) is None:
            return False
        self._write(users)
        return True

    def _write(self, users: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(self.path.suffix + ".tmp")
        body = "# streamchat users: name:scrypt hash. Manage with `streamchat-users`.\n"
        body += "".join(f"{name}:{stored}\n" for name, stored in sorted(users.items()))
        # Written next to the file and renamed over it: a crash never leaves half a file,
        # and the hashes are readable by the owner only.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(body)
        os.replace(temporary, self.path)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """`streamchat-users`. The default file is AUTH_USERS_FILE from the environment or `.env`,
    as the app reads it (`environ`: the process environment over `.env`)."""
    parser = argparse.ArgumentParser(
        prog="streamchat-users", description="Manage password users for streamchat's login."
    )
    parser.add_argument(
        "--file",
        default=ConfigReader(environ).text("AUTH_USERS_FILE") or "users.txt",
        help="users file (default: AUTH_USERS_FILE or users.txt)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="add a user or change a password")
    add.add_argument("name")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    remove = commands.add_parser("remove", help="remove a user")
    remove.add_argument("name")
    commands.add_parser("list", help="list user names")
    args = parser.parse_args(argv)
    users = UsersFile(Path(args.file))
    try:
        if args.command == "add":
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\n")
            else:
                password = getpass.getpass(f"Password for {args.name}: ")
                if password != getpass.getpass("Again: "):
                    print("error: the passwords differ", file=sys.stderr)
                    return 2
            users.add(args.name, password)
            print(f"saved {args.name} in {users.path}")
        elif args.command == "remove":
            if not users.remove(args.name):
                print(f"error: no user {args.name!r} in {users.path}", file=sys.stderr)
                return 1
            print(f"removed {args.name}")
        else:
            for name in users.names():
                print(name)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
