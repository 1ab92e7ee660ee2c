"""Benchmarks: every trained model of the task in the papers' Table 1 layout, per-label metrics, training curves,
label prevalence and calibration; the published reference numbers apart, marked as such."""
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from cxrcore import benchmarks, cards, localisation, published
from cxrcore.curves import curves_root
from cxrcore.runs import pretrain_root, seed_roots
from cxrcore.task import kind_of
from pages import _common as ui



def auc_axis(*lows: float) -> list[float]:
    """An AUC axis from chance (0.5) to 1, lower only to show a value or interval that falls below chance."""
    return [min([0.5, *(float(v) - 0.02 for v in lows if v is not None and v < 0.5)]), 1.0]


sel = ui.selection()
ui.header("Benchmarks", "Measured in this project, from the model cards and stored predictions: the test split "
          "was never used for training or for choosing thresholds.", sel)
cks = sel.cards
if not cks:
    st.warning(f"No model cards under {sel.root}.", icon=":material/warning:")
    st.stop()

st.subheader("Table 1: this project's models")
multiclass = kind_of(sel.task) == "multi-class"
table = pd.DataFrame(benchmarks.table1(cks)).reindex(columns=benchmarks.table1_columns(sel.task)).set_index("model")
num = st.column_config.NumberColumn
st.dataframe(table, column_config={
    "init": "Init", "params_M": num("Params (M)", format="%.2f"), "train_loss": num("Train loss", format="%.3f"),
    "val_loss": num("Val loss", format="%.3f"), "test_acc": num("Test acc", format="%.3f"),
    "test_sensitivity": num("Test sens", format="%.3f"), "test_specificity": num("Test spec", format="%.3f"),
    "test_precision_macro": num("Test precision (macro)", format="%.3f"),
    "test_recall_macro": num("Test recall (macro)", format="%.3f"), "test_f1_macro": num("Test F1 (macro)", format="%.3f"),
    "val_auc": num("Val AUC", format="%.3f"), "held_out": "Ranked by",
    "held_out_auc": num("Held-out AUC", format="%.3f", help="Out-of-fold over every train + val image where "
                        "cross-validated, else validation: what the model is ranked and chosen by (never test)"),
    "test_auc": num("Test AUC", format="%.3f"),
    "test_auc_ci": "Test AUC 95% CI", "epochs": "Epochs", "best_epoch": "Best", "train_minutes": num(
        "Train (min)", format="%.1f"), "converged": "Converged",
    "weights_shipped": st.column_config.CheckboxColumn("Weights shipped")})
not_learned = benchmarks.convergence_notes(cks)
if not_learned:
    st.warning(benchmarks.CONVERGENCE_NOTE + "\n\n" + "\n".join(f"- {n}" for n in not_learned),
               icon=":material/block:")
unit = cks[0].card.metrics.test.ci_unit if cks[0].card.metrics.test else "image"
if multiclass:
    st.caption("One class per image, called by the highest probability. AUC: one-vs-rest ROC AUC averaged over classes "
               f"(MedMNIST's getAUC), 95 % bootstrap CI over test {unit}s; accuracy, macro precision, recall and F1 of "
               "the argmax calls.")
else:
    st.caption(f"AUC: mean of per-label ROC AUCs (MedMNIST's getAUC), 95 % bootstrap CI over test {unit}s. Accuracy at "
               "0.5; sensitivity and specificity at each card's thresholds, chosen on held-out predictions "
               "(out-of-fold where cross-validated, else validation), over the labels with enough held-out positives "
               "to have one.")
stored_ensemble = next((c.card for c in cks if c.card.members), None)
if stored_ensemble:
    st.caption(f"**ensemble**: the stored ensemble, the mean calibrated probability of "
               f"{', '.join(stored_ensemble.members)} "
               f"({stored_ensemble.extra.get('how_chosen', {}).get('members', 'chosen on held-out AUC')}); not the "
               "live mean of the models chosen in the sidebar that Compare shows.")

lo, hi = zip(*(ck.card.metrics.test.auc_macro_ci or (ck.card.metrics.test.auc_macro,) * 2 for ck in cks))
fig = go.Figure(go.Bar(x=table.index, y=table["test_auc"], marker_color=list(ui.colors(list(table.index)).values()),
                       error_y=dict(type="data", symmetric=False, array=list(hi) - table["test_auc"],
                                    arrayminus=table["test_auc"] - list(lo))))
fig.add_hline(y=0.5, line=dict(dash="dot", color="grey"), annotation_text="chance (0.5)", annotation_position="bottom left")
fig.update_layout(yaxis=dict(title="test AUC", range=auc_axis(*lo)), height=320, margin=dict(l=10, r=10, t=20, b=10))
st.plotly_chart(fig, key="auc_bars")
auc3 = {"format": "%.3f"}
SEED_HEADERS = {"seeds": "Seeds", "test_auc_mean": num("Test AUC mean", **auc3), "test_auc_sd": num("sd", **auc3),
                "test_auc_min": num("min", **auc3), "test_auc_max": num("max", **auc3),
                "val_auc_seed0": num("Val AUC seed 0", **auc3), "val_auc_others": num("Val AUC others", **auc3),
                "oof_auc_mean": num("OOF AUC mean", **auc3), "oof_auc_sd": num("OOF sd", **auc3),
                "commits": "Code versions"}
CLAIM_HEADERS = {"a": "Model", "b": "Next", "seeds": "Seeds", "diff": num("Test AUC diff", **auc3),
                 "diff_ci": "Diff 95 % CI", "resampled": "Resampled",
                 "seeds_separate": st.column_config.CheckboxColumn("Every seed beats every seed"),
                 "bootstrap_separates": st.column_config.CheckboxColumn("Bootstrap CI excludes 0"),
                 "winner": "Ranks higher", "claim": "Claim"}
PRETRAIN_HEADERS = {"recipe": "Recipe", "base": "Base", "init_main": "Baseline init", "recipe_change": "Recipe change",
                    "held_out_auc_main": num("Held-out AUC baseline", **auc3),
                    "held_out_auc_pretrained": num("Held-out AUC pretrained", **auc3),
                    "held_out_gain": num("Held-out gain", format="%+.3f"),
                    "test_auc_main": num("Test AUC baseline", **auc3),
                    "test_auc_pretrained": num("Test AUC pretrained", **auc3),
                    "test_gain": num("Test gain", format="%+.3f")}
noted = False  # the note explains every seeds table: shown under the first
for recipe, root in seed_roots().items():
    seed_rows, seed_claims = benchmarks.seed_report(cks, root, sel.dataset)
    if seed_rows:
        st.subheader(f"Seeds ({recipe}): test AUC mean +- sd, and the rankings they allow")
        if not noted:
            st.caption(benchmarks.SEED_NOTE)
            noted = True
        st.dataframe(pd.DataFrame(seed_rows).set_index("model"), column_config=SEED_HEADERS)
        if seed_claims:  # one model alone in a recipe has no neighbour to rank against
            st.dataframe(pd.DataFrame(seed_claims), hide_index=True, column_config=CLAIM_HEADERS)
pretrained = benchmarks.pretraining_rows(benchmarks.recipe_baselines(cks, seed_roots().values(), sel.dataset),
                                          pretrain_root(), sel.dataset)
if pretrained:
    st.subheader("Chest X-ray pretraining against random init")
    st.caption(benchmarks.PRETRAIN_NOTE)
    st.dataframe(pd.DataFrame(pretrained, columns=benchmarks.PRETRAIN_COLUMNS).set_index("model"),
                 column_config=PRETRAIN_HEADERS)

per_label, curves, prevalence, calibration, confusion, learning = st.tabs(
    ["Per-label metrics", "Training curves", "Label prevalence", "Calibration", "Confusion matrices",
     "Learning curve"])
with per_label:
    metric = st.radio("Metric", ["auc", "sensitivity", "specificity"], horizontal=True, key="bench_metric",
                      format_func={"auc": "AUC", "sensitivity": "Sensitivity", "specificity": "Specificity"}.get)
    matrix = pd.DataFrame(benchmarks.per_label_table(cks, metric)).set_index("label").T.astype(float)
    fig = px.imshow(matrix, text_auto=".2f", zmin=0.5 if metric == "auc" else 0, zmax=1,  # AUC: red at chance
                    color_continuous_scale="RdYlGn", aspect="auto")
    fig.update_layout(height=120 + 32 * len(matrix), margin=dict(l=10, r=10, t=10, b=10))
    st.plotly_chart(fig, key="per_label_heatmap")
    st.caption("Test split. Sensitivity and specificity at each card's held-out-chosen threshold (out-of-fold or "
               "validation); blank: undefined.")
with curves:
    history = pd.DataFrame(benchmarks.history_rows(cks))
    series = [c for c in history.columns if c not in ("model", "epoch", "lr", "epoch_seconds")]
    if series:
        shown = st.radio("Series", series, horizontal=True, key="bench_series")
        fig = px.line(history, x="epoch", y=shown, color="model", markers=True,
                      color_discrete_map=ui.colors(list(table.index)))
        fig.update_layout(height=420, margin=dict(l=10, r=10, t=10, b=10))
        st.plotly_chart(fig, key="history_chart")
    else:
        st.info("No training history stored.")
    unreadable = [f"{ck.id} ({note})" for ck in cks for note in ck.notes if note.startswith("no training curve")]
    if unreadable:
        st.caption("No curve for: " + "; ".join(unreadable))
with prevalence:
    frame = pd.DataFrame(benchmarks.prevalence_rows(cks[0].card))
    fig = px.bar(frame, x="label", y="share", color="split", barmode="group", hover_data=["positives"],
                 labels={"share": "share of the split's images"})
    fig.update_layout(height=400, margin=dict(l=10, r=10, t=10, b=10), yaxis_tickformat=".0%")
    st.plotly_chart(fig, key="prevalence_chart")
    st.caption(cards.training_data(cks[0].card))
with calibration:
    chosen = st.multiselect("Models", list(table.index), default=list(table.index)[:4], key="bench_calibration")
    fig = go.Figure()
    fig.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line=dict(dash="dot", color="grey"))
    palette = ui.colors(list(table.index))
    for ck in (c for c in cks if c.id in chosen and c.has_predictions):
        for raw in (True, False):
            rel = benchmarks.reliability_of(ui.card_predictions(ck.path), sel.task, raw=raw)
            fig.add_trace(go.Scatter(
                x=rel["confidence"], y=rel["frequency"], mode="lines+markers",
                name=f"{ck.id} {'raw' if raw else 'calibrated'} (ECE {rel['ece']:.3f})",
                line=dict(color=palette[ck.id], dash="dot" if raw else "solid"), opacity=0.5 if raw else 1.0,
                customdata=rel["count"], hovertemplate="confidence %{x:.2f}, observed %{y:.2f}, "
                                                       "%{customdata} predictions<extra></extra>"))
    fig.update_layout(xaxis=dict(title="mean predicted probability", range=[0, 1]),
                      yaxis=dict(title="observed frequency", range=[0, 1]), height=460,
                      margin=dict(l=10, r=10, t=10, b=10))
    st.plotly_chart(fig, key="reliability_chart")
    st.caption("Reliability diagram on the test split, all labels pooled, 10 equal-width bins; the diagonal is "
               "perfect calibration. Dotted: the networks' raw outputs; solid: the calibrated probabilities the app "
               "serves (fitted on held-out predictions: out-of-fold or validation, see fitted_on). ECE: expected "
               "calibration error; its CI: a bootstrap over test patients (else images). "
               + benchmarks.AT_TEST_MIX_NOTE.replace("test_ece_at_test_mix", "At the test mix"))
    st.dataframe(pd.DataFrame(benchmarks.calibration_rows([c for c in cks if c.has_predictions])).set_index("model"),
                 column_config={"test_ece_raw": num("Test ECE raw", format="%.3f"),
                                "test_ece_calibrated": num("Test ECE calibrated", format="%.3f"),
                                "test_ece_calibrated_ci": "95 % CI",
                                "test_ece_at_test_mix": num("At the test mix", format="%.3f"),
                                "calibration": "Calibration", "fitted_on": "Fitted on"})

with confusion:
    if not multiclass:
        st.info("Confusion matrices are shown for multi-class tasks; here each label has its own threshold (see the "
                "ROC page's operating points).", icon=":material/info:")
    for start in range(0, len(cks), 2):
        for col, ck in zip(st.columns(2), cks[start:start + 2]):
            frame = pd.DataFrame(benchmarks.confusion_frame(ck))
            if frame.empty:
                continue
            matrix = frame.set_index("true")
            fig = px.imshow(matrix, text_auto=True, color_continuous_scale="Blues", aspect="auto",
                            labels=dict(x="predicted", y="true", color="images"))
            fig.update_layout(height=140 + 40 * len(matrix), margin=dict(l=10, r=10, t=30, b=10), title=ck.id,
                              coloraxis_showscale=False)
            col.plotly_chart(fig, key=f"confusion::{ck.id}")
            col.dataframe(pd.DataFrame(benchmarks.per_class_rows(ck)).set_index("class"), column_config={
                k: num(k.capitalize(), format="%.3f") for k in ("sensitivity", "specificity", "precision")})
    if multiclass:
        st.caption("Test split, argmax calls. Rows: true class; columns: predicted class. Sensitivity is the class's "
                   "recall; specificity the share of the other classes' images not called this class.")
with learning:
    rows, commands = benchmarks.learning_curve(curves_root(), sel.dataset)
    if not rows:
        st.info("No learning curve trained for this task yet: `python train/run_all.py --dataset "
                f"{sel.dataset} --models resnet18 --train-sizes 100,250,500,all` trains one.", icon=":material/info:")
    else:
        curve = pd.DataFrame(rows)
        fig, palette = go.Figure(), ui.colors(list(curve["model"].unique()))
        for model_id, part in curve.groupby("model", sort=False):
            fig.add_trace(go.Scatter(
                x=part["train_images"], y=part["test_auc"], mode="lines+markers", name=model_id,
                line=dict(color=palette[model_id]),
                error_y=dict(type="data", symmetric=False, array=part["test_auc_hi"] - part["test_auc"],
                             arrayminus=part["test_auc"] - part["test_auc_lo"])))
        fig.add_hline(y=0.5, line=dict(dash="dot", color="grey"), annotation_text="chance (0.5)", annotation_position="bottom left")
        fig.update_layout(xaxis=dict(title="training images", type="log"), yaxis=dict(title="test AUC",
                          range=auc_axis(*curve["test_auc_lo"])), height=440,
                          margin=dict(l=10, r=10, t=10, b=10))
        st.plotly_chart(fig, key="learning_curve")
        st.dataframe(curve, hide_index=True)
        st.caption("Nested, patient-grouped subsets of the training split; every point validated and tested on the "
                   "same images. Bars: 95 % bootstrap CI over test images. Trained with: "
                   + "; ".join(f"`{c}`" for c in commands))

st.subheader("Grad-CAM localisation against the NIH boxes")
located = benchmarks.localisation_rows(sel.root, sel.dataset, ("test", "held_out", "all"))
if located:
    subset = st.radio("Boxes", ["test", "held_out", "all"], horizontal=True, key="bench_loc_subset",
                      format_func={"test": "test split", "held_out": "validation + test", "all": "all (incl. "
                                   "training split)"}.get)
    st.dataframe(pd.DataFrame([r for r in located if r["subset"] == subset]).drop(columns="subset"), hide_index=True,
                 column_config={"cam_layer": "CAM layer (native grid)", "boxes": "Boxes",
                                "no_localisation": num("No localisation", help="Maps that were empty or constant"),
                                "pointing": num("Pointing game", format="%.2f"),
                                "chance": num("Chance", format="%.3f", help="Boxes' mean share of the image"),
                                **{k: num(k.capitalize() if k != "f1" else "F1", format="%.2f")
                                   for k in ("precision", "recall", "f1")}})
    table_info = localisation.load(sel.root)
    st.caption(benchmarks.LOCALISATION_NOTE.format(level=table_info["region_level"])
               + f" Made with `{table_info['command']}`.")
else:
    st.caption("Not measured for this task: `python benchmarks/localisation.py` scores every shipped model's Grad-CAM "
               "against the NIH boxes on this machine.")

st.divider()
st.subheader("Published reference numbers: not reproduced here")
st.warning("These come from the papers, trained and tested on other (usually full-size) data. They are context, not "
           "a like-for-like comparison with the table above.", icon=":material/menu_book:")
tables = published.tables(sel.dataset)
for pub in tables:
    st.markdown(f"**{pub.title}** (published)")
    st.dataframe(pd.DataFrame(pub.rows), hide_index=True)  # the values as published, not rounded again
    st.caption(f"Source: {pub.source}. {pub.note}".strip())
if not tables:
    st.caption("No published reference numbers for this task yet.")
