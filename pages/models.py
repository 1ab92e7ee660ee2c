"""Models: every model card of the task, readable: what it is, what it learnt from, how it was trained, how well it
did, and its limits. Models without shipped weights show their card and the command that builds them; checkpoint
folders that cannot be used are listed first, each with its reason."""
import pandas as pd
import streamlit as st

from cxrcore import benchmarks, cards, compare
from pages import _common as ui

sel = ui.selection()
ui.header("Models", "One card per trained model. Numbers are from this project's held-out test split.", sel)
for b in sel.broken:
    with st.container(border=True):
        st.error(f"Not usable: {b.path.name} (left out of every page)", icon=":material/error:")
        st.text(b.reason)  # plain text: the reason quotes file contents
if not sel.cards:
    st.warning(f"No model cards under {sel.root}.", icon=":material/warning:")
    st.stop()


def key_values(rows: list[tuple[str, str]]) -> None:
    st.markdown("\n".join(f"- **{k}:** {v}" for k, v in rows if v not in ("", None)))


for k, ck in enumerate(sel.cards):
    test = ck.card.metrics.test
    shipped = ck.has_weights or ck.id == compare.ENSEMBLE
    title = f"**{ck.id}**: {ck.card.arch} · test AUC {ui.fmt(test.auc_macro)}"
    with st.expander(title + ("" if shipped else " · weights not shipped"), expanded=k == 0,
                     icon=":material/description:"):
        if not shipped:
            st.warning("Weights are not shipped with the app, so this model cannot read uploads. Its card and stored "
                       "predictions are shown; this command rebuilds it:", icon=":material/cloud_off:")
            st.code(ck.card.rebuild, language="bash")
        if ck.id in sel.problems and ck.has_weights:
            st.error(sel.problems[ck.id], icon=":material/error:")
        sections = cards.card_sections(ck, ui.calibration_checks(str(sel.root), sel.dataset).get(ck.id))
        left, right = st.columns(2, gap="large")
        for i, (name, rows) in enumerate(sections.items()):
            with (left if i % 2 == 0 else right):
                st.markdown(f"##### {name}")
                key_values(rows)
        st.markdown("##### Limits")
        st.markdown("\n".join(f"- {line}" for line in cards.card_limits(ck)))
        hp = cards.hparam_rows(ck.card)
        if hp:
            st.markdown("##### Hyperparameters")
            st.dataframe(pd.DataFrame(hp, columns=["hyperparameter", "value"]).set_index("hyperparameter").T,
                         width="stretch")
        per_label = benchmarks.per_label_rows(ck.card)
        if per_label:
            st.markdown("##### Per-label test metrics (at the card's thresholds)")
            st.dataframe(pd.DataFrame(per_label).set_index("label").astype(float), width="stretch", column_config={
                c: st.column_config.NumberColumn(format="%.3f") for c in
                ("auc", "sensitivity", "specificity", "ppv", "npv", "f1", "threshold")})
