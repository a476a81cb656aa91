"""Users & roles: an admin grants or revokes roles by sign-in subject (every change is in the audit trail)."""

import streamlit as st

from segcore.auth import ROLES
from ui import auth, resources, state

st.title("Users & roles")
who = state.identity()
refusal = auth.needs(who, "manage_roles")
if refusal:
    st.warning(refusal)
    st.stop()
store = resources.review_store()
cfg = auth.role_config()
st.caption(f"Roles come from the token claim `{cfg.claim}` (mapping: "
           + (", ".join(f"{k} → {v}" for k, v in cfg.mapping.items()) or "none") + "), from the configured admins "
           f"({', '.join(cfg.admins) or 'none'}) and from the grants below. Signed-in users without any role get "
           f"**{cfg.default_role or 'no role'}**.")
with st.form("sc_roles"):
    cols = st.columns([3, 2, 1])
    subject = cols[0].text_input("User (sign-in subject, the token's `sub`)", key="sc_role_subject")
    role = cols[1].selectbox("Role", ROLES, key="sc_role_role")
    grant = cols[2].radio("Action", ["grant", "revoke"], key="sc_role_action")
    if st.form_submit_button("Apply", type="primary"):
        try:
            store.set_role(subject, role, grant == "grant", who)
        except (ValueError, PermissionError) as exc:
            st.error(str(exc))
        else:
            st.success(f"{'Granted' if grant == 'grant' else 'Revoked'} {role} for {subject}.")
grants = store.role_grants()
if grants:
    st.dataframe([{"user": g["subject"], "role": g["role"], "change": "grant" if g["granted"] else "revoke",
                   "by": g["by_id"], "at": g["created_at"]} for g in grants], hide_index=True, width="stretch")
else:
    st.info("No roles granted in the app yet.")
