"""Sign in and sign out: the users file (scrypt hashes) or, with ``web.auth: mlflow``, the team server's users.

Both backends go through the same :class:`productgen.web.auth.SignInLimiter`: failures are counted per user name
and per client address; a locked name or address is answered 429 with ``Retry-After`` before any password check."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from productgen.common.errors import UserError
from productgen.web import auth
from productgen.web.shared import COOKIE, State, state_of

router = APIRouter()
# Checked against when the user does not exist, so a wrong name costs as long as a wrong password.
_DUMMY = auth.hash_password("not-a-user-" + secrets.token_hex(8))


def check_password(state: State, name: str, password: str) -> tuple[str, str] | None:
    """The credentials to keep for the session when ``name`` / ``password`` are right, else None."""
    if state.web.auth == "mlflow":
        from productgen.tracking.runs import tracking_uri

        return (name, password) if auth.check_mlflow_user(tracking_uri(), name, password) else None
    users = auth.load_users(state.users_file)
    if not users:
        raise UserError(
            f"no users are configured: add one with 'productgen web add-user NAME' "
            f"(writes {state.users_file}) or set ${auth.USERS_ENV}"
        )
    stored = users.get(name)
    ok = auth.verify_password(password, stored) if stored else auth.verify_password(password, _DUMMY)
    return (name, "") if ok and stored else None


@router.get("/signin", response_class=HTMLResponse)
def signin_get(request: Request) -> Response:
    state = state_of(request)
    return state.render(request, "signin.html", auth_mode=state.web.auth)


def locked_page(state: State, request: Request, err: auth.SignInLocked) -> Response:
    response = state.render(
        request,
        "signin.html",
        429,
        auth_mode=state.web.auth,
        message=f"Too many failed sign-ins for this user name or from this address. Try again in {err.retry_after} s.",
    )
    response.headers["Retry-After"] = str(err.retry_after)
    return response


@router.post("/signin", response_class=HTMLResponse)
async def signin_post(request: Request) -> Response:
    state = state_of(request)
    form, s = await state.posted_small(request)
    name = (form.get("username") or "").strip()
    password = form.get("password") or ""
    address = request.client.host if request.client else None  # the proxy's X-Forwarded-For when it is trusted
    try:  # refused before any password check (and before taking a slot of the gate)
        state.limiter.refuse_if_locked(name, address)
    except auth.SignInLocked as err:
        return locked_page(state, request, err)
    state.gate.enter()  # a password check costs tens of ms of CPU (scrypt): bounded like model work
    try:
        creds = await state.gate.run(state.limiter.check, name, address, lambda: check_password(state, name, password))
    except auth.SignInLocked as err:  # locked meanwhile by a parallel attempt
        return locked_page(state, request, err)
    finally:
        state.gate.leave()
    if creds is None:
        return state.render(
            request, "signin.html", 401, auth_mode=state.web.auth, message="Wrong user name or password."
        )
    state.sessions.drop(s.sid)  # a new session id at sign-in: a planted cookie cannot be promoted to a user
    new = state.sessions.new(name, creds if state.web.auth == "mlflow" else None)
    new.flash = f"Signed in as {name}."
    response = RedirectResponse("/models", status_code=303)
    state.set_cookie(response, request, new)
    return response


@router.post("/signout")
async def signout_post(request: Request) -> Response:
    state = state_of(request)
    _, s = await state.posted_small(request)
    state.sessions.drop(s.sid)
    response = RedirectResponse("/generate", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
