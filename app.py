"""segcore: segment, refine, correct, review and fine-tune, in the browser.

Run with ``./scripts/run.sh`` (or ``streamlit run app.py``) and open http://localhost:8501.
"""

from pathlib import Path

import streamlit as st

from ui import auth, resources, state

st.set_page_config(page_title="segcore", page_icon=str(Path(__file__).parent / "ui" / "icon.png"), layout="wide")
if not auth.auth_configured():  # local mode: a reload keeps the self-declared name
    st.session_state.setdefault("sc_reviewer", st.query_params.get("reviewer", ""))
identity = auth.gate()
state.set_identity(identity)

pages = [
    st.Page("app_pages/segment.py", title="Segment & compare", icon=":material/biotech:", default=True),
    st.Page("app_pages/correct.py", title="Correct", icon=":material/edit:"),
    st.Page("app_pages/instances.py", title="Instances", icon=":material/scatter_plot:"),
    st.Page("app_pages/review.py", title="Review", icon=":material/fact_check:"),
    st.Page("app_pages/finetune.py", title="Fine-tune", icon=":material/model_training:"),
]
if identity is not None and identity.may("manage_roles") and auth.auth_configured():
    pages.append(st.Page("app_pages/admin.py", title="Users & roles", icon=":material/admin_panel_settings:"))
pg = st.navigation(pages)

with st.sidebar:
    st.markdown("### segcore")
    auth.sidebar(identity)
    ws = resources.workspace()
    st.caption(f"Active model: **{ws.active_version()}** · data in `{ws.root}`")
    open_scan = st.empty()  # filled after the page ran: it may open another scan

try:
    pg.run()
finally:
    if state.current() is not None:
        open_scan.caption(f"Open scan: {state.current().describe()}")
