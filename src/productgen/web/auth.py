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
import logging
import math
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from productgen.common.errors import UserError

log = logging.getLogger("productgen.web")
T = TypeVar("T")
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


class SignInLocked(Exception):
    """Too many failed sign-ins for this user name or client address (HTTP 429 with ``Retry-After``)."""

    def __init__(self, retry_after: int, key: str) -> None:
        super().__init__(f"too many failed sign-ins ({key}); try again in {retry_after} s")
        self.retry_after = retry_after
        self.key = key


@dataclass
class _Failures:
    times: list[float] = field(default_factory=list)  # monotonic times of the failures inside the window
    locked_until: float = 0.0


class SignInLimiter:
    """Failed sign-ins counted per user name and per client address over a sliding window.

    After ``max_failures`` failures inside ``window_s`` the name (or address) is locked for ``base_delay_s``;
    each further failure once that lock has passed doubles it (capped at ``max_delay_s``). While locked, every
    attempt for that name or from that address is refused before any password is checked (so a correct password
    does not get through either); other names from other addresses are not affected. A successful sign-in clears
    the name's failures, not the address's (a valid account must not buy an address more guesses at others).

    Both backends of sign-in (the users file and the team server's MLflow users) go through :meth:`check`.
    Thread-safe; bounded (the entries with nothing left in the window are forgotten first).
    """

    MAX_KEYS = 100_000

    def __init__(
        self,
        window_s: float,
        max_failures: int,
        base_delay_s: float,
        max_delay_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.max_failures = max_failures
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self._clock = clock
        self._items: OrderedDict[str, _Failures] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def keys(name: str, address: str | None) -> list[str]:
        return [f"user {name.lower()}", f"address {address or 'unknown'}"]

    def _entry(self, key: str, now: float) -> _Failures:
        entry = self._items.get(key)
        if entry is None:
            self._prune(now)
            entry = self._items[key] = _Failures()
        entry.times = [t for t in entry.times if now - t < self.window_s]
        return entry

    def _prune(self, now: float) -> None:
        """Over ``MAX_KEYS``: forget what has nothing left in the window and no lock, then the oldest, down to 90 %
        (so a flood of new names costs one scan per tenth of the table, not one per name)."""
        if len(self._items) <= self.MAX_KEYS:
            return
        for key in [
            k
            for k, e in self._items.items()
            if e.locked_until <= now and not any(now - t < self.window_s for t in e.times)
        ]:
            del self._items[key]
        while len(self._items) > self.MAX_KEYS * 9 // 10:
            self._items.popitem(last=False)

    def retry_after(self, name: str, address: str | None) -> tuple[int, str] | None:
        """(seconds, key) when this name or address is locked now, else None."""
        now = self._clock()
        with self._lock:
            waits = [(self._items[k].locked_until - now, k) for k in self.keys(name, address) if k in self._items]
        wait, key = max(waits, default=(0.0, ""))
        return (max(1, math.ceil(wait)), key) if wait > 0 else None

    def failed(self, name: str, address: str | None) -> list[tuple[int, str]]:
        """Record a failure against the name and the address; the (lock seconds, key) of each it locks."""
        now = self._clock()
        locks: list[tuple[int, str]] = []
        with self._lock:
            for key in self.keys(name, address):
                entry = self._entry(key, now)
                entry.times.append(now)
                self._items.move_to_end(key)
                extra = len(entry.times) - self.max_failures
                if extra >= 0:
                    delay = min(self.max_delay_s, self.base_delay_s * 2 ** min(extra, 32))
                    entry.locked_until = max(entry.locked_until, now + delay)
                    locks.append((max(1, math.ceil(entry.locked_until - now)), key))
        return locks

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._items.pop(self.keys(name, None)[0], None)

    def refuse_if_locked(self, name: str, address: str | None) -> None:
        """:class:`SignInLocked` (logged) while this name or address is locked."""
        locked = self.retry_after(name, address)
        if locked is not None:
            log.warning("sign-in refused for %r from %s: locked for %d s more (%s)", name, address, *locked)
            raise SignInLocked(*locked)

    def check(self, name: str, address: str | None, verify: Callable[[], T]) -> T | None:
        """``verify()`` (the password check of either backend; its result, None meaning wrong) under the limit:
        :class:`SignInLocked` without calling it while the name or address is locked; failures are counted and
        logged (logger ``productgen.web``) with each lock they cause; the attempt that locks still answers as a
        wrong password (None), the next ones get :class:`SignInLocked`."""
        self.refuse_if_locked(name, address)
        result = verify()
        if result is not None:
            self.succeeded(name)
            return result
        log.warning("failed sign-in for %r from %s", name, address)
        for seconds, key in self.failed(name, address):
            log.warning(
                "sign-in locked for %d s (%s) after %d or more failures in %g s",
                seconds,
                key,
                self.max_failures,
                self.window_s,
            )
        return None
