"""The project's users: who may log in, with which role, and how the app knows them.

``auth`` is a project setting (``artminer users auth MODE``):

``none``   (default) one person on their own machine: no login, the name typed in the
           app is the annotator, and that person may do everything (as before).
``local``  users in ``artminer-data/users.json`` with salted scrypt password hashes
           (``artminer users add NAME --role ROLE``); the app asks for name and password.
``oidc``   Streamlit's ``st.login`` with a provider configured in ``.streamlit/secrets.toml``;
           the identity's e-mail (else ``sub``) is looked up in the same users file for
           its role (no password stored), unknown identities get ``oidc_default_role``
           (``viewer`` unless set).

The users file is written atomically with mode 0600. Password hashes are
``hashlib.scrypt`` with a 16-byte random salt per user; the parameters are stored with
each hash so they can be raised later without invalidating old ones.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db import Store
from hitl.roles import ROLES, User

AUTH_MODES = ("none", "local", "oidc")
AUTH_SETTING = "auth"
OIDC_DEFAULT_ROLE_SETTING = "oidc_default_role"
MIN_PASSWORD_LENGTH = 8  # NIST SP 800-63B's floor for user-chosen passwords


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost (OWASP Password Storage Cheat Sheet: N=2^17, r=8, p=1; ~128 MiB, ~0.3 s)."""

    n: int = 2 ** 17
    r: int = 8
    p: int = 1
    dklen: int = 32

    @property
    def maxmem(self) -> int:
        return 128 * self.r * self.n * 2  # scrypt needs 128·r·N bytes; leave headroom


def users_file(project: str | os.PathLike) -> Path:
    """``artminer-data/users.json`` beside the project file."""
    return Path(project).resolve().parent / "artminer-data" / "users.json"


AUTH_ENV = "ARTMINER_AUTH"
"""Set by ``artminer app --auth MODE``: the mode for every project the app opens."""


def app_auth_mode(value: str | None) -> str | None:
    """The app-wide mode from ``ARTMINER_AUTH``; None if unset, ``local`` if garbled."""
    if not value:
        return None
    return value if value in AUTH_MODES else "local"


def auth_mode(store: Store) -> str:
    """The project's auth mode; anything unrecognised counts as ``local`` (fail closed)."""
    mode = store.get_setting(AUTH_SETTING) or "none"
    return mode if mode in AUTH_MODES else "local"


def set_auth_mode(store: Store, mode: str) -> None:
    if mode not in AUTH_MODES:
        raise ValueError(f"auth must be one of {', '.join(AUTH_MODES)}, not {mode!r}")
    store.set_setting(AUTH_SETTING, mode)


# ---------------------------------------------------------------------- the users file


def load_users(path: Path) -> dict[str, dict[str, Any]]:
    """Name -> entry (``role``, and ``salt``/``hash``/``scrypt`` for local passwords)."""
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read users file {path}: {err}") from err
    users = doc.get("users") if isinstance(doc, dict) else None
    if not isinstance(users, dict):
        raise ValueError(f"{path}: not an ArtMiner users file")
    return users


def _save(path: Path, users: Mapping[str, dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"format": "artminer-users", "version": 1, "users": dict(users)}, f, indent=1)
    os.chmod(partial, 0o600)  # an existing .part keeps its mode through O_CREAT
    partial.replace(path)


def add_user(path: Path, name: str, role: str, password: str | None = None,
             params: ScryptParams = ScryptParams(), actor: User | None = None) -> User:
    """Add or update a user; ``password=None`` for an OIDC identity (role only).

    Raises:
        ValueError: bad name, role or too short a password.
        Forbidden: ``actor`` is not an admin.
    """
    from hitl.roles import require

    require(actor, "manage_users")
    user = User(name.strip(), role)
    entry: dict[str, Any] = {"role": role}
    if password is not None:
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ValueError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
        salt = secrets.token_bytes(16)
        entry |= {"salt": salt.hex(), "hash": _hash(password, salt, params).hex(),
                  "scrypt": {"n": params.n, "r": params.r, "p": params.p, "dklen": params.dklen}}
    users = load_users(path)
    users[user.name] = entry
    _save(path, users)
    return user


def remove_user(path: Path, name: str, actor: User | None = None) -> bool:
    from hitl.roles import require

    require(actor, "manage_users")
    users = load_users(path)
    if users.pop(name, None) is None:
        return False
    _save(path, users)
    return True


def list_users(path: Path) -> list[User]:
    return [User(name, e.get("role", "viewer")) for name, e in sorted(load_users(path).items())]


def authenticate(path: Path, name: str, password: str) -> User | None:
    """The user if ``password`` is theirs, else None (same work for unknown names)."""
    entry = load_users(path).get(name)
    if not entry or "hash" not in entry:
        _hash(password, b"\0" * 16, ScryptParams())  # no timing hint that the name is unknown
        return None
    stored = entry["scrypt"]
    params = ScryptParams(stored["n"], stored["r"], stored["p"], stored["dklen"])
    digest = _hash(password, bytes.fromhex(entry["salt"]), params)
    if not hmac.compare_digest(digest, bytes.fromhex(entry["hash"])):
        return None
    return User(name, entry["role"])


def _hash(password: str, salt: bytes, params: ScryptParams) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=params.n, r=params.r,
                          p=params.p, dklen=params.dklen, maxmem=params.maxmem)


# ---------------------------------------------------------------------- OIDC identities


def oidc_user(claims: Mapping[str, Any], path: Path, default_role: str = "viewer") -> User:
    """The `User` for an OIDC identity (``st.user``): e-mail (else ``sub``) and its role.

    The role is the users file's entry for that e-mail, else for ``@domain``, else
    ``default_role``. An identity the provider has not verified gets ``viewer`` at most.

    Raises:
        ValueError: the identity has neither e-mail nor subject.
    """
    email = str(claims.get("email") or "").strip().lower()
    name = email or str(claims.get("sub") or "").strip()
    if not name:
        raise ValueError("the identity provider gave neither an e-mail nor a subject")
    users = {k.lower(): v for k, v in load_users(path).items()}
    domain = "@" + email.rsplit("@", 1)[-1] if "@" in email else None
    entry = users.get(name) or (users.get(domain) if domain else None)
    role = entry.get("role", default_role) if entry else default_role
    if email and claims.get("email_verified") is False:
        role = "viewer"  # an unverified address could be anyone's
    return User(name, role if role in ROLES else "viewer")
