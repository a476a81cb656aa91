"""Who is acting, and what they may do: identities, roles and the checks every guarded action makes.

Roles are cumulative: an ``admin`` may do everything a ``reviewer`` may, and a reviewer everything an
``annotator`` may.

============================  ==========  ========================================================
action                        role        where it is checked
============================  ==========  ========================================================
``save_correction``           annotator   :meth:`segcore.store.Workspace.save_correction`
``create_session``            reviewer    :meth:`segcore.review.ReviewStore.create_session`
``add_case``                  reviewer    :meth:`segcore.review.ReviewStore.add_case`
``record_verdict``            reviewer    :meth:`segcore.review.ReviewStore.record_verdict`
``view_verdicts``             reviewer    :meth:`segcore.review.ReviewStore.visible_verdicts` (own only)
``view_agreement``            reviewer    :meth:`segcore.review.ReviewStore.agreement` (reviewers of the session)
``export_session``            reviewer    :func:`segcore.export.export_session` (own verdicts; admin: all)
``view_all_verdicts``         admin       :meth:`segcore.review.ReviewStore.visible_verdicts`
``start_finetune``            admin       :meth:`segcore.store.Workspace.add_version`, fine-tune jobs
``promote`` / ``activate``    admin       :meth:`segcore.store.Workspace.promote` / ``activate``
``delete_correction``         admin       :meth:`segcore.store.Workspace.delete_correction`
``manage_roles``              admin       :meth:`segcore.review.ReviewStore.grant_role` / ``revoke_role``
============================  ==========  ========================================================

Identities come from a verified OpenID Connect token when sign-in is configured (``sub`` is the stable id), or are
self-declared in local mode (:meth:`Identity.local`: every role, ``authenticated=False``, and said so in every
audit record). When sign-in is required (:func:`set_login_required`, or ``SEGCORE_REQUIRE_LOGIN=1``), every guarded
action refuses unauthenticated identities, so a self-declared name cannot act at all.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Mapping

__all__ = ["ROLES", "ACTIONS", "Identity", "PermissionDenied", "RoleConfig", "require", "as_identity",
           "login_required", "set_login_required", "identity_from_claims", "role_rank"]

ROLES = ("annotator", "reviewer", "admin")
ACTIONS: dict[str, str] = {
    "save_correction": "annotator",
    "create_session": "reviewer",
    "add_case": "reviewer",
    "record_verdict": "reviewer",
    "view_verdicts": "reviewer",
    "view_agreement": "reviewer",
    "export_session": "reviewer",
    "view_all_verdicts": "admin",
    "start_finetune": "admin",
    "promote": "admin",
    "activate": "admin",
    "delete_correction": "admin",
    "manage_roles": "admin",
}
_DESCRIPTIONS = {
    "save_correction": "save a correction", "create_session": "start a review session",
    "add_case": "add cases to a review session", "record_verdict": "record a verdict",
    "view_verdicts": "see review verdicts", "view_agreement": "see other reviewers' masks",
    "export_session": "export a review session", "view_all_verdicts": "see every reviewer's verdicts",
    "start_finetune": "fine-tune a model", "promote": "promote a model version",
    "activate": "activate or roll back a model version", "delete_correction": "delete a correction",
    "manage_roles": "manage roles",
}

_login_required_flag = {"value": False}


def role_rank(role: str) -> int:
    """Position of ``role`` in :data:`ROLES` (higher may do more)."""
    if role not in ROLES:
        raise ValueError(f"Unknown role '{role}'. Roles: {list(ROLES)}.")
    return ROLES.index(role)


def login_required() -> bool:
    """True when unauthenticated identities may not act (set by the app when sign-in is configured)."""
    env = os.environ.get("SEGCORE_REQUIRE_LOGIN", "").strip().lower() in ("1", "true", "yes")
    return env or _login_required_flag["value"]


def set_login_required(flag: bool) -> None:
    """Process-wide: refuse unauthenticated identities in every guarded action (the app sets it with sign-in)."""
    _login_required_flag["value"] = bool(flag)


@dataclasses.dataclass(frozen=True)
class Identity:
    """Someone acting in segcore.

    Attributes
    ----------
    subject : str
        Stable id: the token's ``sub`` (``local:<name>`` in local mode).
    name : str
        Display name (the token's ``name``, else ``email``, else ``sub``).
    email : str
    roles : frozenset of str
        Granted roles (see :data:`ROLES`); the highest counts.
    authenticated : bool
        True only for identities from a verified sign-in.
    """

    subject: str
    name: str
    email: str = ""
    roles: frozenset = frozenset()
    authenticated: bool = False
    issuer: str = ""

    @classmethod
    def local(cls, name: str) -> "Identity":
        """A self-declared name in local mode: every role, never authenticated.

        Examples
        --------
        >>> Identity.local("Dr A").subject, Identity.local("Dr A").authenticated
        ('local:Dr A', False)
        """
        name = (name or "").strip()
        if not name:
            raise ValueError("A name is needed (got an empty name).")
        return cls(subject=f"local:{name}", name=name, roles=frozenset(ROLES), authenticated=False)

    @property
    def role(self) -> str | None:
        """The highest granted role, or None."""
        known = [r for r in self.roles if r in ROLES]
        return max(known, key=role_rank) if known else None

    def may(self, action: str) -> bool:
        """Whether this identity may perform ``action`` (see :data:`ACTIONS`)."""
        try:
            require(self, action)
        except PermissionDenied:
            return False
        return True

    def audit_fields(self) -> dict:
        """What audit records store about who acted."""
        return {"who": self.name, "who_id": self.subject, "authenticated": self.authenticated}


class PermissionDenied(PermissionError):
    """An action was refused; the message names the action, the role it needs and the role held."""

    def __init__(self, message: str, action: str, needed: str | None):
        super().__init__(message)
        self.action, self.needed = action, needed


def as_identity(actor: "Identity | str | None") -> Identity:
    """``actor`` as an Identity: strings are self-declared local names (refused when sign-in is required)."""
    if isinstance(actor, Identity):
        return actor
    if actor is None or not str(actor).strip():
        raise PermissionDenied("No one is signed in or named: this action needs to know who acts.", "unknown", None)
    return Identity.local(str(actor))


def require(actor: "Identity | str | None", action: str) -> Identity:
    """Return the acting identity if it may perform ``action``; raise :class:`PermissionDenied` otherwise.

    Examples
    --------
    >>> bob = Identity("bob", "Bob", roles=frozenset({"reviewer"}), authenticated=True)
    >>> require(bob, "record_verdict").name
    'Bob'
    >>> require(bob, "promote")
    Traceback (most recent call last):
    ...
    segcore.auth.PermissionDenied: Bob may not promote a model version: that needs the admin role (Bob has reviewer).
    """
    if action not in ACTIONS:
        raise ValueError(f"Unknown action '{action}'. Actions: {sorted(ACTIONS)}.")
    who = as_identity(actor)
    needed = ACTIONS[action]
    what = _DESCRIPTIONS.get(action, action)
    if login_required() and not who.authenticated:
        raise PermissionDenied(f"Sign in to {what}: this server requires sign-in, and '{who.name}' is a "
                               "self-declared name.", action, needed)
    held = who.role
    if held is None or role_rank(held) < role_rank(needed):
        raise PermissionDenied(f"{who.name} may not {what}: that needs the {needed} role "
                               f"({who.name} has {held or 'no role'}).", action, needed)
    return who


@dataclasses.dataclass(frozen=True)
class RoleConfig:
    """How token claims map to roles.

    Parameters
    ----------
    claim : str
        The token claim that carries group/role names (e.g. ``groups``, ``roles``, ``realm_access.roles``:
        dots walk into nested objects).
    mapping : dict
        Claim value -> role.
    admins : tuple of str
        Subjects or e-mail addresses that are always admin (the first admin, set by configuration). An e-mail
        address counts only when the token says the provider verified it (``email_verified: true``); where users
        can set their own address, list the subject instead.
    default_role : str or None
        Role of a signed-in user whom no claim or grant gives one (None: no role, can only look).
    """

    claim: str = "groups"
    mapping: Mapping[str, str] = dataclasses.field(default_factory=dict)
    admins: tuple = ()
    default_role: str | None = "annotator"

    def __post_init__(self):
        for value, role in self.mapping.items():
            role_rank(role)
        if self.default_role is not None:
            role_rank(self.default_role)

    @classmethod
    def from_dict(cls, d: Mapping | None) -> "RoleConfig":
        d = dict(d or {})
        default = d.get("default", d.get("default_role", "annotator"))
        return cls(claim=str(d.get("claim", "groups")), mapping=dict(d.get("map", d.get("mapping", {}))),
                   admins=tuple(d.get("admins", ())), default_role=None if default in (None, "", "none") else default)


def _claim(claims: Mapping, path: str):
    value = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def identity_from_claims(claims: Mapping, config: RoleConfig, granted: Iterable[str] = ()) -> Identity:
    """An authenticated Identity from verified ID-token claims, the role mapping and roles granted in the app.

    Examples
    --------
    >>> cfg = RoleConfig(mapping={"radiology": "reviewer"}, admins=("root@example.org",))
    >>> identity_from_claims({"sub": "u1", "name": "Ann", "groups": ["radiology"]}, cfg).role
    'reviewer'
    >>> identity_from_claims({"sub": "u2", "email": "root@example.org", "email_verified": True}, cfg).role
    'admin'
    >>> identity_from_claims({"sub": "u3", "email": "root@example.org"}, cfg).role  # unverified: default role
    'annotator'
    """
    sub = str(claims.get("sub") or "").strip()
    if not sub:
        raise PermissionDenied("The sign-in token has no subject ('sub'): refused.", "sign_in", None)
    email = str(claims.get("email") or "")
    name = str(claims.get("name") or email or sub)
    roles = set(granted)
    values = _claim(claims, config.claim)
    if isinstance(values, str):
        values = [values]
    for v in values or []:
        if str(v) in config.mapping:
            roles.add(config.mapping[str(v)])
    verified = claims.get("email_verified") in (True, "true", "True")
    if sub in config.admins or (email and verified and email in config.admins):
        roles.add("admin")
    if not roles and config.default_role:
        roles.add(config.default_role)
    return Identity(subject=sub, name=name, email=email, roles=frozenset(roles), authenticated=True,
                    issuer=str(claims.get("iss") or ""))
