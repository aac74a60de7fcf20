"""Who may change the registry from the page, and the session / CSRF machinery that keeps it so.

Passwords are stored only as scrypt hashes (stdlib ``hashlib.scrypt``, a random salt per user) in a users file,
one ``name:scrypt:N:r:p:salt:hash`` line each, written by ``productgen web add-user NAME``; ``$PRODUCTGEN_WEB_USERS``
(the same lines, separated by newlines or spaces) configures them without a file (the team env file). With
``web.auth: mlflow`` the team tracking server's own users sign in: their credentials are checked against the
server, and registry changes are made with them, so MLflow's permissions apply.

Sessions live in server memory (a restart signs everyone out); the cookie holds only a random id. Every visitor
gets a session, so every form (uploads too) carries a CSRF token bound to it, checked on every POST.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from productgen.common.errors import UserError

USERS_ENV = "PRODUCTGEN_WEB_USERS"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
# scrypt cost: N=2**14, r=8, p=1 (about 16 MiB and tens of ms per check): the stdlib's recommended interactive level.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MAX_SESSIONS = 10_000  # anonymous sessions are cheap but not free: the oldest are forgotten beyond this


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt:N:r:p:<salt hex>:<hash hex>`` for ``password`` with a fresh random salt."""
    if not password:
        raise UserError("the password is empty; choose one")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)
    return f"scrypt:{n}:{r}:{p}:{salt.hex()}:{digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a ``scrypt:...`` hash (constant-time compare; malformed hashes never match)."""
    try:
        kind, n, r, p, salt, digest = stored.split(":")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(),
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=64 * 1024 * 1024,
            dklen=len(bytes.fromhex(digest)),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, bytes.fromhex(digest))


def parse_users(text: str, where: str) -> dict[str, str]:
    """``name:scrypt:...`` lines (blank lines and ``#`` comments ignored) -> name -> hash."""
    users: dict[str, str] = {}
    entries = [e for line in text.splitlines() if not line.strip().startswith("#") for e in line.split()]
    for i, line in enumerate(entries, 1):
        name, _, stored = line.partition(":")
        if not NAME_RE.fullmatch(name) or not stored.startswith("scrypt:") or stored.count(":") != 5:
            raise UserError(
                f"{where}: entry {i} is not 'name:scrypt:N:r:p:salt:hash'; "
                "write entries with: productgen web add-user NAME"
            )
        users[name] = stored
    return users


def load_users(users_file: str | Path) -> dict[str, str]:
    """The configured users: ``$PRODUCTGEN_WEB_USERS`` when set, else the users file (none: nobody may sign in)."""
    env = os.environ.get(USERS_ENV)
    if env:
        return parse_users(env, f"${USERS_ENV}")
    path = Path(users_file)
    if not path.is_file():
        return {}
    return parse_users(path.read_text(encoding="utf-8"), str(path))


def add_user(users_file: str | Path, name: str, password: str) -> bool:
    """Add or replace ``name`` in the users file (written atomically, mode 600); True when it replaced one."""
    from productgen.common import atomic

    if not NAME_RE.fullmatch(name):
        raise UserError(f"user name {name!r}: use letters, digits, '_', '.', '@' and '-' (up to 64)")
    path = Path(users_file)
    users = parse_users(path.read_text(encoding="utf-8"), str(path)) if path.is_file() else {}
    replaced = name in users
    users[name] = hash_password(password)
    text = "# productgen web users: name:scrypt:N:r:p:salt:hash (productgen web add-user NAME)\n"
    text += "".join(f"{k}:{v}\n" for k, v in users.items())
    atomic.write_text(path, text)
    os.chmod(path, 0o600)
    return replaced


@dataclass
class Session:
    sid: str
    csrf: str
    created: float
    user: str | None = None
    # mlflow auth only: the signed-in user's credentials, kept in server memory for this session's registry changes
    credentials: tuple[str, str] | None = field(default=None, repr=False)
    flash: str | None = None  # a one-time message for the next page (after a redirect)


class Sessions:
    """Server-side sessions keyed by a random cookie value; bounded, expiring, thread-safe."""

    def __init__(self, lifetime_s: float) -> None:
        self.lifetime_s = lifetime_s
        self._items: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            s = self._items.get(sid)
            if s is None:
                return None
            if time.time() - s.created > self.lifetime_s:
                del self._items[sid]
                return None
            self._items.move_to_end(sid)
            return s

    def new(self, user: str | None = None, credentials: tuple[str, str] | None = None) -> Session:
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), time.time(), user, credentials)
        with self._lock:
            self._items[s.sid] = s
            while len(self._items) > MAX_SESSIONS:
                self._items.popitem(last=False)
        return s

    def drop(self, sid: str) -> None:
        with self._lock:
            self._items.pop(sid, None)


def csrf_ok(session: Session | None, token: str | None) -> bool:
    return bool(session is not None and token and hmac.compare_digest(session.csrf, token))


def check_mlflow_user(tracking_uri: str, name: str, password: str, timeout_s: float = 10.0) -> bool:
    """Whether the team tracking server accepts ``name`` / ``password`` (HTTP basic auth, its own user store)."""
    import base64
    import urllib.error
    import urllib.request

    if not tracking_uri.startswith(("http://", "https://")):
        raise UserError(
            f"web.auth is mlflow, but MLFLOW_TRACKING_URI ({tracking_uri}) is not a tracking server; "
            "set it to the team server or use web.auth: users-file"
        )
    url = tracking_uri.rstrip("/") + "/api/2.0/mlflow/registered-models/search?max_results=1"
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    req = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    try:
        with urllib.request.build_opener().open(req, timeout=timeout_s) as resp:  # noqa: S310 (the configured server)
            return resp.status == 200
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            return False
        raise UserError(f"the tracking server answered {err.code} to a sign-in check; try again") from None
    except OSError as err:
        raise UserError(f"cannot reach the tracking server {tracking_uri} ({err}); try again") from None
