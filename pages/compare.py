"""Compare: one chest X-ray, every chosen model's probability and call per label, side by side."""
import datetime as dt
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cxrcore import compare, html_table, report
from cxrcore.calibration import ECE_TARGET
from cxrcore.compare import ENSEMBLE
from cxrcore.task import kind_of
from pages import _common as ui
from pages import _viewer


def probability_chart(comp: compare.Comparison, comparable: bool) -> go.Figure:
    """Each label a row; each model a dot (filled when it calls positive); the grey bar spans the models' range."""
    labels = list(comp.probs.index)[::-1]
    probs, calls = comp.scores(comparable).loc[labels], comp.calls.loc[labels]
    fig, palette = go.Figure(), ui.colors(list(comp.probs.columns))
    fig.add_trace(go.Bar(y=labels, x=probs[comp.models].max(axis=1) - probs[comp.models].min(axis=1),
                         base=probs[comp.models].min(axis=1), orientation="h", marker_color="rgba(150,150,150,0.25)",
                         name="range of models", hoverinfo="skip"))
    for col in comp.probs.columns:
        is_ens = col == ENSEMBLE
        fig.add_trace(go.Scatter(
            x=probs[col], y=labels, mode="markers", name=comp.label(col),
            marker=dict(size=15 if is_ens else 10, symbol="diamond" if is_ens else "circle",
                        color=palette[col], opacity=[1.0 if c else 0.35 for c in calls[col]]),
            customdata=comp.thresholds.loc[labels, col],
            hovertemplate=f"{comp.label(col)}<br>%{{y}}: %{{x:.3f}} (threshold %{{customdata:.3f}})<extra></extra>"))
    legend_rows = -(-(len(comp.probs.columns) + 1) // 2)  # in the half-width column it wraps two entries a row
    fig.update_layout(height=120 + 26 * len(labels) + 20 * legend_rows, xaxis=dict(range=[0, 1], title="comparable score (threshold "
                      "at 0.5)" if comparable else "calibrated probability"),
                      legend=dict(orientation="h", y=1.02, yanchor="bottom"), margin=dict(l=10, r=10, t=40, b=10),
                      barmode="overlay")
    return fig


def build_report(case: compare.Case, sel: ui.Selection, comp: compare.Comparison, name: str, source: str,
                 warning: str | None, status) -> bytes:
    """The PDF case report, with a Grad-CAM of each model's most likely label (progress shown in ``status``)."""
    square, panels = ui.display_square(case, sel), []
    bar = st.progress(0.0)
    for k, model_id in enumerate(comp.models):
        label = compare.top_label(comp.probs[model_id], sel.label_names)
        status.update(label=f"Grad-CAM: {model_id}, {label}")
        heat = ui.cam(case, sel, model_id, label, "GradCAM")
        panels.append((compare.cam_caption(f"{model_id}, {label}: {comp.call_text(label, model_id)}", heat,
                                           case.boxes),
                       compare.cam_panel(square, heat, boxes=case.boxes)))
        bar.progress((k + 1) / len(comp.models))
    data = compare.case_report(comp, case.image.pixels, name, [sel.checkpoint(i).card for i in comp.models], source,
                               panels, warning, dt.datetime.now().isoformat(timespec="seconds"),
                               ui.overrides(sel.dataset), ui.calibration_checks(str(sel.root), sel.dataset))
    return report.case_report_pdf(data)


sel = ui.selection()
ui.header("Compare", "Upload a chest X-ray to see how each model reads it: probability per label, the call at each "
          "model's operating threshold, and where the models disagree.", sel)
ui.need_models(sel)

banner = st.container()  # the out-of-distribution warning goes here: above the results, never below the fold
left, right = st.columns([5, 6], gap="large")
with left:
    ui.image_input(sel)
case = ui.case()
if case is None:
    with right:
        st.info("Upload an image to start. It is read in memory and never stored.", icon=":material/upload:")
    st.stop()

with left:
    image = case.image
    _viewer.show(case, "compare", sel.square)
    sizes = sorted({sel.checkpoint(i).card.dataset.size for i in sel.ids})
    st.caption(ui.plain(f"{case.name}: {image.format}, {image.pixels.shape[1]} x {image.pixels.shape[0]} px, "
                        f"{image.bit_depth}-bit {image.original_mode}"))
    seen = ("only the dashed centre square (the whole film when it is square)" if sel.square == "crop" else
            "the whole film, padded with black to a square")
    st.caption(f"Wheel: zoom; drag: pan; right- or shift-drag: window/level. The models see {seen}, resized to "
               f"{' / '.join(map(str, sizes))} px exactly as in training.")
    if case.truth is not None:
        st.caption(f"Dataset labels ({case.source}): **{', '.join(case.truth) or 'No finding'}**")
    show_ids = bool(image.identifiers) and st.checkbox(
        "Show patient identifiers", help="DICOM identifiers stay hidden, and out of the downloads, unless ticked.")
    if show_ids:
        st.table(pd.Series({k: ui.plain(v) for k, v in image.identifiers.items()}, name="value"))
    if image.metadata:
        with st.expander("DICOM header (non-identifying)"):
            st.table(pd.Series({k: ui.plain(v) for k, v in image.metadata.items()}, name="value"))
warning = ui.ood(case, sel)
if warning:
    banner.warning(f"**Out-of-distribution warning.** {warning} The results below are greyed out.",
                   icon=":material/warning:")

comp = ui.comparison(case, sel)
agree = comp.agreement()
lead = ENSEMBLE if ENSEMBLE in comp.probs else comp.models[0]
source = compare.threshold_source({})
user_set = pd.DataFrame([{"Model": comp.label(c), "Label": label, "Threshold": "no call" if v != v else f"{v:.3f}"}
                         for c, per in ui.overrides(sel.dataset).items() if c in comp.probs for label, v in per.items()])

with right:
    comparable = st.toggle("Comparable score (each model's threshold at 0.5)", key="comparable",
                           help="Rescales each cell piecewise linearly so its model's operating threshold sits at 0.5 "
                                "(as torchxrayvision's op_norm): the same number and colour mean the same call in "
                                "every cell. Off: calibrated probabilities.")
    scores = comp.scores(comparable)
    a, b, c = st.columns([2, 4, 4])  # wide enough for the labels, which were cut off at 1600 px
    a.metric("Models", len(comp.models), border=True)
    false_calls = ui.false_calls(sel, lead, comp.thresholds[lead])
    b.metric("False calls per normal film", ui.fmt(false_calls, 2), border=True,
             help=f"Of {comp.label(lead)}, expected at these thresholds, whatever this film shows: the mean number of "
                  "positive calls on the held-out films without any finding. Read each call with its PPV below.")
    c.metric("Labels where models split", int(agree["split"].sum()), border=True,
             help="At least one model calls the label positive and at least one negative (no call counts neither).")
    multiclass = kind_of(sel.task) == "multi-class"
    if multiclass:
        predicted = compare.predicted_classes(comp)
        st.markdown(f"**Predicted class ({comp.label(lead)}): {predicted[lead]}** "
                    f"(p={comp.probs.at[predicted[lead], lead]:.2f}); each model's probabilities over the "
                    f"{len(comp.probs)} classes sum to 1.")
    st.markdown("**Scores by label**")  # beside the film: where the models agree and split, at a glance
    st.caption("Opaque markers: positive call; faded: negative or no call. The grey bar spans the models' scores, so "
               "a long bar means the models disagree.")
    st.plotly_chart(probability_chart(comp, comparable), config={"displayModeBar": False})
positives = comp.positive_calls()
if len(positives):  # full width: every column of the evidence in view, none behind a horizontal scroll
    st.markdown("**Each positive call and the evidence behind its threshold** (on the held-out images it was "
                "chosen on: out-of-fold where the model was cross-validated, else validation)")
    num = st.column_config.NumberColumn
    st.dataframe(positives, hide_index=True, width="stretch", height=min(38 + 35 * len(positives), 360),
                 column_config={
                     "column": st.column_config.TextColumn("Model", pinned=True), "label": "Label",
                     "probability": num("Calibrated p", format="%.2f"),
                     "threshold": num("Threshold", format="%.3f"),
                     "sensitivity": num("Sensitivity", format="%.2f"),
                     "specificity": num("Specificity", format="%.2f"),
                     "ppv": num("PPV", format="%.2f", help="Share of held-out calls at this threshold that were right"),
                     "positives": num("Held-out positives", help="Positives the threshold and these rates rest on"),
                     "auc_ci": st.column_config.TextColumn(
                         "Label AUC 95 % CI", help="The label's held-out AUC interval (bootstrap over patients); no "
                                                   "threshold is set where it includes 0.5")})
else:
    st.caption("No model calls any label positive on this film at its thresholds.")

st.subheader("Probability per label and model")
table = pd.DataFrame(index=comp.probs.index)  # what to read first, then one column per model
if case.truth is not None:
    table["Truth"] = ["✓" if label in case.truth else "" for label in table.index]
if multiclass:  # one of several classes per image: each model's prediction is its most probable class
    table["Predicted by"] = compare.predicted_by(comp)
if ENSEMBLE in comp.probs:
    table[ENSEMBLE] = scores[ENSEMBLE]
if len(comp.models) > 1:
    table["Votes +"] = [f"{p}/{p + n}" if p + n else "no call" for p, n in
                        zip(agree["n_positive"], agree["n_negative"])]
    table["Split"] = agree["split"].map({True: "⚠ split", False: ""})
    table["SD"] = agree["sd"]
table = table.join(scores[comp.models])
if warning:
    st.caption("**Greyed out: this image failed the out-of-distribution checks above**, so no cell is coloured "
               "as a call; the numbers are shown for reference only.")
st.html(html_table.render(ui.call_style(comp, table, greyed=bool(warning)), headers={ENSEMBLE: comp.label(ENSEMBLE)}))
meaning = ("comparable score: 0.5 is the model's threshold" if comparable else
           "calibrated probability (fitted on held-out predictions, so it holds where findings are as common as in the "
           "training data, see Benchmarks › Label prevalence; where they are rarer or commoner it shifts with them. "
           "Raw scores overstated every finding)")
mean_note = (f" {comp.label(ENSEMBLE)}: the live mean of the chosen models ({', '.join(comp.members)}), not the "
             "stored ensemble of the Benchmarks page. SD: spread of the models' probabilities. Votes +: models "
             "calling the label positive, of those making a call." if ENSEMBLE in comp.probs else "")
st.caption(f"Cells: {meaning}. **Red, bold: positive call** (at or above the model's threshold); green: negative; "
           f"grey italics: no call (no threshold with enough evidence). Hover a cell for its value to 4 decimals."
           f"{mean_note} Thresholds: {source}"
           + (f"; {len(user_set)} set by the user on the ROC page, listed below." if len(user_set) else "."))
if not comparable:
    checks = ui.calibration_checks(str(sel.root), sel.dataset)
    missed = [checks[m].describe() for m in comp.models if m in checks and checks[m].verdict == "missed"]
    if missed:
        st.caption(f"**Calibration did not hold on the test split** (95 % CI wholly above the "
                   f"{ECE_TARGET:g} target) for {'; '.join(missed)}: read their cells as ranking scores, "
                   "not as observed rates (Benchmarks › Calibration).")
if len(user_set):
    st.markdown("**Thresholds set by the user** (the ROC page resets them)")
    st.dataframe(user_set, hide_index=True, height=min(38 + 35 * len(user_set), 320))
no_call = comp.not_estimable()
if no_call:
    st.markdown("**No call (score shown only)**\n" + "\n".join(f"- **{label}**: {why}" for label, why in
                                                                    no_call.items()))


st.subheader("Downloads")
stem = Path(case.name).stem or "image"
csv = comp.flat()
if show_ids:
    csv = csv.assign(**image.identifiers)
d1, d2, d3 = st.columns([1, 1, 3], vertical_alignment="center")
d1.download_button("Table (CSV)", csv.to_csv(index=False), file_name=f"{stem}_cxr_compare.csv", mime="text/csv",
                   icon=":material/download:", on_click="ignore")
report_key = (image.sha256, tuple(comp.probs.columns), comp.thresholds.to_numpy().tobytes(), show_ids)
build = d2.button("Build PDF report", icon=":material/picture_as_pdf:",
                  help="Adds a Grad-CAM of each model's most likely label; takes a few seconds.")
with d3:
    if build:
        with st.status("Building the case report…", expanded=False) as status:
            name = case.name + ("  |  " + ", ".join(f"{k}: {v}" for k, v in image.identifiers.items())
                                if show_ids else "")
            st.session_state["report_pdf"] = (report_key, build_report(case, sel, comp, name,
                                                                           compare.threshold_source({}), warning,
                                                                           status))
            status.update(label="Case report ready", state="complete")
    built = st.session_state.get("report_pdf")
    if built and built[0] == report_key:
        st.download_button("Case report (PDF)", built[1], file_name=f"{stem}_cxr_report.pdf", mime="application/pdf",
                           icon=":material/download:", type="primary", on_click="ignore")
