"""ROC & thresholds: how each model trades sensitivity for specificity on the stored test predictions, and the
operating thresholds the Compare page calls with for the rest of the session."""
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cxrcore import benchmarks, compare, metrics
from cxrcore.compare import ENSEMBLE
from cxrcore.task import is_multilabel, kind_of
from pages import _common as ui

sel = ui.selection()
ui.header("ROC & thresholds", "Per label: the chosen models' ROC curves on their stored test predictions, with 95 % "
          "bootstrap bands. Move a model's threshold to see its operating point change; the Compare page then calls "
          "with these thresholds for the rest of the session.", sel)
ui.need_models(sel)

names = sel.label_names
c1, c2 = st.columns([2, 3])
label = c1.selectbox("Label", names, index=0 if is_multilabel(sel.task) else len(names) - 1, key="roc_label")
fit_on = c2.radio("Presets chosen on", ["val", "test"], horizontal=True, key="roc_fit",
                  format_func={"val": "validation split (honest)", "test": "test split (optimistic)"}.get,
                  help="The statistics below are always measured on the test split.")
j = names.index(label)
if kind_of(sel.task) == "multi-class":
    st.caption(f"One-vs-rest: **{label}** against the other {len(names) - 1} classes, scored by its probability. "
               "The threshold here calls the class on its own; the Compare page also shows each model's most probable "
               "class, which is what the card's accuracy and confusion matrix count.")
columns = sel.stored_columns
if len(columns) < len(sel.columns):
    st.info("Left out (no stored predictions, see **Models**): " + ", ".join(c for c in sel.columns if c not in columns),
            icon=":material/info:")
if not columns:
    st.stop()
palette = ui.colors(columns)
changed = ui.overrides(sel.dataset)
default_points = {c: ui.default_points(sel, c)[j] for c in columns}
defaults = {c: p.value for c, p in default_points.items()}
in_force = {c: pts[j] for c, pts in ui.points(sel).items() if c in columns}
active = {c: p.value for c, p in in_force.items()}
test = {c: tuple(a[:, j] for a in benchmarks.split_arrays(ui.stored(sel, c), "test", sel.task)) for c in columns}
fit = {c: tuple(a[:, j] for a in benchmarks.split_arrays(ui.stored(sel, c), fit_on, sel.task)) for c in columns}
presets = {c: compare.preset_points(*fit[c], default_points[c]) for c in columns}
val_scores = {c: benchmarks.split_arrays(ui.stored(sel, c), "val", sel.task)[1][:, j] for c in columns}
stats = {c: metrics.binary_stats(*test[c], active[c]) for c in columns}
at_default = {c: metrics.binary_stats(*test[c], defaults[c]) for c in columns}


def slider_key(column: str) -> str:
    return f"thr::{sel.dataset}::{column}::{label}"


def store(column: str) -> None:
    changed.setdefault(column, {})[label] = float(st.session_state[slider_key(column)])


def apply(preset: str) -> None:
    """Set every model's threshold to the preset; where the preset has none, the model makes no call (NaN)."""
    for c in columns:
        point = presets[c][preset]
        changed.setdefault(c, {})[label] = point.value
        if point.threshold is not None:
            st.session_state[slider_key(c)] = point.threshold


def preset_cell(point: metrics.OperatingPoint) -> str:
    """A preset in words: its threshold and the positives behind it, or why it has none."""
    if point.threshold is None:
        return f"no call: {point.reason}"
    return f"{point.threshold:.3f} (n={point.positives} positives)"


st.markdown(f"**Apply a preset to every model for {label}:**")
for col, preset in zip(st.columns(len(compare.PRESETS)), compare.PRESETS):
    col.button(preset, key=f"preset::{preset}", on_click=apply, args=(preset,), width="stretch")
split_name = {"val": "validation", "test": "test"}[fit_on]
st.dataframe(pd.DataFrame({p: {c: preset_cell(presets[c][p]) for c in columns} for p in compare.PRESETS}),
             width="stretch")
st.caption(f"Each preset as chosen on the {split_name} split, with the positives it rests on. A threshold needs at "
           f"least {metrics.MIN_POSITIVES} positives; one at 0, 1 or outside the observed scores is refused; a target "
           "that no usable threshold meets is reported. Where a preset has none, applying it makes no call.")


def roc_figure() -> go.Figure:
    fig = go.Figure()
    for c, color in palette.items():
        band = ui.roc_band(sel, c, j)
        auc = metrics.auc_per_label(test[c][0][:, None], test[c][1][:, None])[0]
        if bands:
            fig.add_trace(go.Scatter(x=band["grid"] + band["grid"][::-1], y=band["tpr_hi"] + band["tpr_lo"][::-1],
                                     fill="toself", fillcolor=ui.translucent(color), line=dict(width=0),
                                     hoverinfo="skip", showlegend=False, legendgroup=c))
        fig.add_trace(go.Scatter(x=band["fpr"], y=band["tpr"], name=f"{c} (AUC {auc:.3f})", legendgroup=c,
                                 line=dict(color=color, width=3 if c == ENSEMBLE else 2,
                                           dash="dash" if c == ENSEMBLE else "solid"),
                                 customdata=band["thresholds"],
                                 hovertemplate="FPR %{x:.2f}, TPR %{y:.2f}, "
                                               "threshold %{customdata:.3f}<extra></extra>"))
        s = stats[c]
        fig.add_trace(go.Scatter(x=[1 - s["specificity"]], y=[s["sensitivity"]], mode="markers", legendgroup=c,
                                 marker=dict(color=color, size=13, symbol="x", line=dict(width=1, color="white")),
                                 showlegend=False, hovertemplate=f"{c} at {active[c]:.3f}<extra></extra>"))
    fig.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line=dict(dash="dot", color="grey"))
    fig.update_layout(xaxis_title="1 - specificity (false-positive rate)", yaxis_title="sensitivity",
                      height=480, margin=dict(l=10, r=10, t=30, b=10), xaxis=dict(range=[0, 1]),
                      yaxis=dict(range=[0, 1.02]))
    return fig


def pr_figure() -> go.Figure:
    fig = go.Figure()
    for c, color in palette.items():
        curve = metrics.pr_curve(*test[c])
        fig.add_trace(go.Scatter(x=curve["recall"], y=curve["precision"], name=c, line=dict(color=color, width=2)))
        s = stats[c]
        fig.add_trace(go.Scatter(x=[s["sensitivity"]], y=[s["ppv"]], mode="markers", showlegend=False,
                                 marker=dict(color=color, size=13, symbol="x", line=dict(width=1, color="white"))))
    prevalence = float(np.mean(test[columns[0]][0]))
    fig.add_hline(y=prevalence, line=dict(dash="dot", color="grey"), annotation_text=f"prevalence {prevalence:.2f}")
    fig.update_layout(xaxis_title="recall (sensitivity)", yaxis_title="precision (PPV)", height=480,
                      margin=dict(l=10, r=10, t=30, b=10), xaxis=dict(range=[0, 1]), yaxis=dict(range=[0, 1.02]))
    return fig


roc_tab, pr_tab = st.tabs(["ROC", "Precision-recall"])
bands = roc_tab.toggle("95 % bootstrap bands", value=len(columns) <= 3, key="roc_bands",
                       help="Shaded: where the curve falls in 95 % of resamples of the test images.")
roc_tab.plotly_chart(roc_figure(), key="roc_chart")
pr_tab.plotly_chart(pr_figure(), key="pr_chart")
n_pos = int(test[columns[0]][0].sum())
st.caption(f"Test split: {len(test[columns[0]][0])} images, {n_pos} with {label}. Crosses: operating points at the "
           "thresholds in force.")

st.subheader("Operating points")
summary = pd.DataFrame({c: {k: stats[c][k] for k in ui.STAT_NAMES} for c in columns}).T.rename(columns=ui.STAT_NAMES)
st.dataframe(summary, column_config={v: st.column_config.NumberColumn(format="%.3f") for v in ui.STAT_NAMES.values()})

for tab, c in zip(st.tabs(columns), columns):
    with tab:
        key = slider_key(c)
        if key not in st.session_state:
            st.session_state[key] = active[c] if np.isfinite(active[c]) else 0.5
        if not np.isfinite(active[c]):
            st.warning(f"No call for {label}: {in_force[c].reason}. The Compare page shows the score and makes no "
                       "call unless you set a threshold here.", icon=":material/block:")
        elif (refusal := metrics.threshold_refusal(active[c], val_scores[c])) is not None:
            st.warning(f"Set by hand, and outside what validation supports: {refusal}.", icon=":material/warning:")
        else:
            p = in_force[c]
            st.caption(f"On validation at this threshold: sensitivity {ui.fmt(p.sensitivity, 2)}, specificity "
                       f"{ui.fmt(p.specificity, 2)}, PPV {ui.fmt(p.ppv, 2)}, from {p.positives} positives.")
        st.slider(f"Threshold of {c} for {label}", 0.0, 1.0, step=0.001, format="%.3f", key=key,
                  on_change=store, args=(c,), help=f"Card / validation default: {ui.fmt(defaults[c])}")
        left, right = st.columns([3, 2])
        with left:
            cells = st.columns(3)
            for k, name in enumerate(ui.STAT_NAMES):
                if name == "threshold":
                    continue
                delta = stats[c][name] - at_default[c][name]
                cells[(k - 1) % 3].metric(ui.STAT_NAMES[name], ui.fmt(stats[c][name]),
                                          delta=None if abs(delta) < 1e-9 or np.isnan(delta) else f"{delta:+.3f}",
                                          help="Change: against the card's default threshold")
        with right:
            s = stats[c]
            if not np.isfinite(active[c]):
                continue
            fig = go.Figure(go.Heatmap(z=[[s["tp"], s["fn"]], [s["fp"], s["tn"]]], x=["called +", "called -"],
                                       y=[f"{label}", "no " + label], text=[[int(s["tp"]), int(s["fn"])],
                                                                           [int(s["fp"]), int(s["tn"])]],
                                       texttemplate="%{text}", colorscale="Blues", showscale=False))
            fig.update_layout(height=220, margin=dict(l=10, r=10, t=10, b=10), yaxis=dict(autorange="reversed"))
            st.plotly_chart(fig, key=f"cm::{c}", config={"displayModeBar": False})
