"""segcore: segment, refine, correct, review and fine-tune, in the browser.

Run with ``./scripts/run.sh`` (or ``streamlit run app.py``) and open http://localhost:8501.
"""

import streamlit as st

from ui import resources, state

st.set_page_config(page_title="segcore", page_icon=":material/radiology:", layout="wide")
st.session_state.setdefault("sc_reviewer", st.query_params.get("reviewer", ""))  # a reload keeps the name

pages = [
    st.Page("app_pages/segment.py", title="Segment & compare", icon=":material/biotech:", default=True),
    st.Page("app_pages/correct.py", title="Correct", icon=":material/edit:"),
    st.Page("app_pages/review.py", title="Review", icon=":material/fact_check:"),
    st.Page("app_pages/finetune.py", title="Fine-tune", icon=":material/model_training:"),
]
pg = st.navigation(pages)

with st.sidebar:
    st.markdown("### segcore")
    st.text_input("Your name (recorded with corrections)", key="sc_reviewer", placeholder="e.g. Dr. A. Rivera")
    if state.reviewer():
        st.query_params["reviewer"] = state.reviewer()
    ws = resources.workspace()
    st.caption(f"Active model: **{ws.active_version()}** · data in `{ws.root}`")
    cur = state.current()
    if cur is not None:
        st.caption(f"Open scan: {cur.describe()}")

pg.run()
