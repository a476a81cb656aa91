"""Who is using the app: OpenID Connect sign-in (st.login / st.user) or, without it, an explicit local mode.

Sign-in is configured by an ``[auth]`` section in ``.streamlit/secrets.toml`` (see the README). Then the
identity for corrections, verdicts, jobs and audit records comes from the verified token (``sub`` as the stable
id), never from a text box or a URL parameter, and :func:`segcore.auth.set_login_required` makes every guarded
library call refuse self-declared names. Roles come from the token claim named in ``[segcore.roles]`` and from
grants an admin makes in the app. ``SEGCORE_REQUIRE_LOGIN=1`` makes a server without ``[auth]`` refuse to run.
"""

from __future__ import annotations

import os
import time

import streamlit as st

from segcore.auth import Identity, PermissionDenied, RoleConfig, identity_from_claims, set_login_required

from . import resources


def auth_configured() -> bool:
    """True when ``.streamlit/secrets.toml`` (or ``--secrets.files``) has an ``[auth]`` section."""
    try:
        return "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets file at all
        return False


def require_login_env() -> bool:
    return os.environ.get("SEGCORE_REQUIRE_LOGIN", "").strip().lower() in ("1", "true", "yes")


def role_config() -> RoleConfig:
    try:
        section = st.secrets.get("segcore", {}).get("roles", {})
    except Exception:  # noqa: BLE001
        section = {}
    return RoleConfig.from_dict(dict(section))


def _claims() -> dict:
    return {k: v for k, v in st.user.to_dict().items() if k not in ("tokens",)}


def signed_in_identity() -> Identity:
    """The identity of the signed-in user (raises PermissionDenied for an expired or subject-less token)."""
    claims = _claims()
    exp = claims.get("exp")
    if isinstance(exp, (int, float)) and exp < time.time():
        raise PermissionDenied("Your sign-in has expired. Sign in again.", "sign_in", None)
    sub = str(claims.get("sub") or "")
    granted = resources.review_store().roles_of(sub) if sub else set()
    return identity_from_claims(claims, role_config(), granted)


def gate() -> Identity | None:
    """Decide who is using the app, or stop the page with what to do. Call once per run, from app.py."""
    if not auth_configured():
        if require_login_env():
            st.error("This server requires sign-in (SEGCORE_REQUIRE_LOGIN=1), but no `[auth]` section is configured "
                     "in `.streamlit/secrets.toml`. An administrator must configure the OpenID Connect provider; "
                     "the app does not fall back to self-declared names.")
            st.stop()
        set_login_required(False)
        return _local_identity()
    set_login_required(True)
    if not st.user.is_logged_in:
        _sign_in_page()
        st.stop()
    try:
        who = signed_in_identity()
    except PermissionDenied as exc:
        st.error(str(exc))
        st.button("Sign in again", on_click=st.logout, key="sc_relogin", type="primary")
        st.stop()
    st.session_state["sc_identity"] = who
    return who


def _sign_in_page() -> None:
    st.title("segcore")
    st.markdown("Sign in with your organisation's account to segment, correct and review scans. Your name and "
                "role come from your sign-in and are recorded with everything you save.")
    st.button("Sign in", type="primary", on_click=st.login, key="sc_login")


def _local_identity() -> Identity | None:
    name = (st.session_state.get("sc_reviewer") or "").strip()
    return Identity.local(name) if name else None


def sidebar(identity: Identity | None) -> None:
    """Who is signed in (and a sign-out button), or the local-mode banner and the name box."""
    if auth_configured():
        st.markdown(f"Signed in as **{identity.name}**  \n`{identity.subject}` · role: **{identity.role or 'none'}**")
        st.button("Sign out", on_click=st.logout, key="sc_logout")
        return
    st.warning("**Local mode**: no sign-in is configured. Names are self-declared and every record says so "
               "(authenticated: false). See the README to connect an identity provider.", icon=":material/info:")
    st.text_input("Your name (recorded with corrections)", key="sc_reviewer", placeholder="e.g. Dr. A. Rivera")
    if st.session_state.get("sc_reviewer"):
        st.query_params["reviewer"] = st.session_state["sc_reviewer"]


def needs(identity: Identity | None, action: str) -> str | None:
    """Why ``identity`` may not perform ``action`` (a sentence for the page), or None when it may."""
    if identity is None:
        return "Enter your name in the sidebar first." if not auth_configured() else "Sign in first."
    try:
        from segcore.auth import require

        require(identity, action)
    except PermissionDenied as exc:
        return str(exc)
    return None
