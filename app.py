"""CXR Compare: how several deep networks read one chest X-ray. Run with ``streamlit run app.py``.

This script sets up the page, the sidebar (task, film, models) and the navigation; each page lives in ``pages/``.
"""
import streamlit as st
from streamlit import config

from pages import _common as ui

st.set_page_config(page_title="CXR Compare", page_icon=":material/radiology:", layout="wide")
st.set_option("client.toolbarMode", "minimal")  # no "Deploy" button, wherever the server was started from
# No forced full garbage collection after each run (config.toml says why), wherever the server was started from;
# st.set_option takes client options only, so this is Streamlit's own (internal) setter, used once per server.
if config.get_option("runner.postScriptGC"):
    config.set_option("runner.postScriptGC", False)
if st.get_option("browser.gatherUsageStats"):  # the project's config.toml was not read (started from another folder)
    st.sidebar.caption(":material/info: Started without the project's settings (usage statistics are on). "
                       "Start with `scripts/serve.sh` to apply them from any folder.")

navigation = st.navigation([
    st.Page("pages/compare.py", title="Compare", icon=":material/compare:", default=True),
    st.Page("pages/explain.py", title="Explain", icon=":material/visibility:"),
    st.Page("pages/roc.py", title="ROC & thresholds", icon=":material/show_chart:"),
    st.Page("pages/benchmarks.py", title="Benchmarks", icon=":material/leaderboard:"),
    st.Page("pages/models.py", title="Models", icon=":material/description:"),
])
ui.sidebar()
navigation.run()
