"""segcore: segment, refine, correct and fine-tune, in the browser.

Run with ``./scripts/run.sh`` (or ``streamlit run app.py``) and open http://localhost:8501.
"""

import streamlit as st

import app_state

st.set_page_config(page_title="segcore", page_icon=":material/radiology:", layout="wide")
app_state.init_state()
deeplink = st.session_state.pop("sc_deeplink", None)
if deeplink:  # a deep link that reached a page before the router existed (see app_state.ensure_router)
    for k, v in deeplink[1].items():
        st.query_params[k] = v
if not st.session_state["sc_reviewer"] and st.query_params.get("reviewer"):
    st.session_state["sc_reviewer"] = st.query_params["reviewer"]  # survives a browser reload

pages = [
    st.Page("pages/segment.py", title="Segment & compare", icon=":material/biotech:", default=True),
    st.Page("pages/correct.py", title="Correct", icon=":material/edit:"),
    st.Page("pages/review.py", title="Review", icon=":material/fact_check:"),
    st.Page("pages/finetune.py", title="Fine-tune", icon=":material/model_training:"),
]
pg = st.navigation(pages)

with st.sidebar:
    st.markdown("### segcore")
    st.text_input("Your name (recorded with corrections)", key="sc_reviewer", placeholder="e.g. Dr. A. Rivera")
    if st.session_state["sc_reviewer"]:
        st.query_params["reviewer"] = st.session_state["sc_reviewer"]
    ws = app_state.workspace()
    versions = ws.versions()
    if not versions:
        st.error("No model found. Expected the shipped model in sample_data/models/default.")
    else:
        st.caption(f"Active model: **{ws.active_version()}** · data in `{ws.root}`")

st.session_state["sc_router"] = True
if deeplink:
    st.switch_page(deeplink[0])
pg.run()
