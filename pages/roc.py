"""ROC & thresholds: how each model trades sensitivity for specificity on the stored test predictions, and the
operating thresholds the Compare page calls with for the rest of the session.

The label, split, presets and curve choice rerun the page; a threshold slider reruns one fragment alone (the curves'
crosses, the chosen model's statistics, the tables of operating points and of the user's thresholds), on curves
cached per column and label."""
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cxrcore import compare, metrics
from cxrcore.compare import ENSEMBLE
from cxrcore.task import is_multilabel, kind_of
from pages import _common as ui

sel = ui.selection()
ui.header("ROC & thresholds", "Per label: the chosen models' ROC curves on their stored test predictions, with 95 % "
          "bootstrap bands. Move a model's threshold to see its operating point change; the Compare page then calls "
          "with these thresholds for the rest of the session.", sel)
ui.need_models(sel)

names = sel.label_names
columns = sel.stored_columns
if len(columns) < len(sel.columns):
    st.info("Left out (no stored predictions, see **Models**): "
            + ", ".join(c for c in sel.columns if c not in columns), icon=":material/info:")
if not columns:
    st.stop()
marked = {label for c in columns for label in ui.overrides(sel.dataset).get(c, {})}
c1, c2 = st.columns([2, 3])
label = c1.selectbox("Label", names, format_func=lambda n: f"{n}  ✎ your thresholds" if n in marked else n,
                     help="✎: a label where you set a threshold (listed, with a reset, under Your thresholds).",
                     **ui.persist("roc.label", names[0] if is_multilabel(sel.task) else names[-1], names))
fit_on = c2.radio("Presets chosen on", [ui.HELD_OUT, "test"], horizontal=True,
                  format_func={ui.HELD_OUT: "held-out images (honest)", "test": "test split (optimistic)"}.get,
                  help="Held-out: where the cards' thresholds were chosen, out of fold (every train + val image) "
                       "for cross-validated models, else the validation split. The statistics below are always "
                       "measured on the test split.",
                  **ui.persist("roc.fit", ui.HELD_OUT, [ui.HELD_OUT, "test"]))
j = names.index(label)
if kind_of(sel.task) == "multi-class":
    st.caption(f"One-vs-rest: **{label}** against the other {len(names) - 1} classes, scored by its probability. "
               "The threshold here calls the class on its own; the Compare page also shows each model's most probable "
               "class, which is what the card's accuracy and confusion matrix count.")
palette = ui.colors(columns)
shown = {c: f"mean of {len(sel.ids)} selected" if c == ENSEMBLE else c for c in columns}  # as on the Compare page
curves = {c: ui.label_curves(sel, c, j, fit_on) for c in columns}
defaults = {c: ui.default_points(sel, c)[j].value for c in columns}


def slider_key(column: str) -> str:
    return f"thr::{sel.dataset}::{column}::{label}"


def store(column: str) -> None:
    ui.overrides(sel.dataset).setdefault(column, {})[label] = float(st.session_state[slider_key(column)])
    ui.thresholds_changed()


def apply(preset: str) -> None:
    """Set every model's threshold to the preset; where the preset has none, the model makes no call (NaN)."""
    for c in columns:
        point = curves[c].presets[preset]
        ui.overrides(sel.dataset).setdefault(c, {})[label] = point.value
        if point.threshold is not None:
            st.session_state[slider_key(c)] = point.threshold
    ui.thresholds_changed()


def preset_cell(point: metrics.OperatingPoint) -> str:
    """A preset in words: its threshold and the positives behind it, or why it has none."""
    if point.threshold is None:
        return f"no call: {point.reason}"
    return f"{point.threshold:.3f} (n={point.positives} positives)"


def markers(xs: list[float], ys: list[float], active: dict[str, float]) -> go.Scatter:
    """Every model's operating point as one trace (one per model made each threshold move redraw 11 more)."""
    return go.Scatter(x=xs, y=ys, mode="markers", showlegend=False, text=[f"{shown[c]} at {active[c]:.3f}" for c in palette],
                      hovertemplate="%{text}<extra></extra>",
                      marker=dict(color=list(palette.values()), size=13, symbol="x", line=dict(width=1, color="white")))


def roc_figure(stats: dict[str, dict], active: dict[str, float], bands: bool) -> go.Figure:
    fig = go.Figure()
    for c, color in palette.items():
        roc = curves[c].roc
        if bands:
            band = ui.roc_band(sel, c, j)
            fig.add_trace(go.Scatter(x=band["grid"] + band["grid"][::-1], y=band["tpr_hi"] + band["tpr_lo"][::-1],
                                     fill="toself", fillcolor=ui.translucent(color), line=dict(width=0),
                                     hoverinfo="skip", showlegend=False, legendgroup=c))
        fig.add_trace(go.Scatter(x=roc["fpr"], y=roc["tpr"], name=f"{shown[c]} ({curves[c].auc_text()})", legendgroup=c,
                                 line=dict(color=color, width=3 if c == ENSEMBLE else 2,
                                           dash="dash" if c == ENSEMBLE else "solid"),
                                 customdata=roc["thresholds"],
                                 hovertemplate="FPR %{x:.2f}, TPR %{y:.2f}, "
                                               "threshold %{customdata:.3f}<extra></extra>"))
    fig.add_trace(markers([1 - stats[c]["specificity"] for c in palette], [stats[c]["sensitivity"] for c in palette],
                          active))
    fig.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line=dict(dash="dot", color="grey"))
    fig.update_layout(xaxis_title="1 - specificity (false-positive rate)", yaxis_title="sensitivity",
                      height=480, margin=dict(l=10, r=10, t=30, b=10), xaxis=dict(range=[0, 1]),
                      yaxis=dict(range=[0, 1.02]))
    return fig


def pr_figure(stats: dict[str, dict], active: dict[str, float]) -> go.Figure:
    fig = go.Figure()
    for c, color in palette.items():
        pr = curves[c].pr
        fig.add_trace(go.Scatter(x=pr["recall"], y=pr["precision"], name=shown[c], line=dict(color=color, width=2)))
    fig.add_trace(markers([stats[c]["sensitivity"] for c in palette], [stats[c]["ppv"] for c in palette], active))
    prevalence = float(np.mean(curves[columns[0]].y_test))
    fig.add_hline(y=prevalence, line=dict(dash="dot", color="grey"), annotation_text=f"prevalence {prevalence:.2f}")
    fig.update_layout(xaxis_title="recall (sensitivity)", yaxis_title="precision (PPV)", height=480,
                      margin=dict(l=10, r=10, t=30, b=10), xaxis=dict(range=[0, 1]), yaxis=dict(range=[0, 1.02]))
    return fig


def confusion(s: dict) -> str:
    """The 2 x 2 table at the threshold, as Markdown (drawn for every model on each move, so no chart)."""
    return (f"| test split | called + | called − |\n|---|---:|---:|\n"
            f"| **{label}** | {int(s['tp'])} | {int(s['fn'])} |\n| **no {label}** | {int(s['fp'])} | {int(s['tn'])} |")


def no_call_fmt(value: float) -> str:
    return "no call" if np.isnan(value) else f"{value:.3f}"


def your_thresholds() -> None:
    """The user's thresholds for this task as a table, with a reset for this label and for all."""
    mine = ui.user_thresholds(sel)
    st.subheader("Your thresholds")
    if mine.empty:
        st.caption("None set: every model calls at its card's threshold (held-out Youden J).")
        return
    shown = mine.assign(threshold=mine["threshold"].map(no_call_fmt), default=mine["default"].map(no_call_fmt))
    st.table(shown.rename(columns={"model": "Model", "label": "Label", "threshold": "Your threshold",
                                   "default": "Card's threshold"}), hide_index=True)
    a, b, _ = st.columns([1, 1, 3])
    if a.button(f"Reset {label}", icon=":material/restart_alt:", disabled=label not in set(mine["label"]),
                help=f"Every model back to its card's threshold for {label}"):
        ui.reset_thresholds(sel.dataset, label)
        st.rerun()
    if b.button("Reset all", icon=":material/restart_alt:", help="Every label back to the cards' thresholds"):
        ui.reset_thresholds(sel.dataset)
        st.rerun()


def adjust(c: str, stats: dict, at_default: dict, point: metrics.OperatingPoint) -> None:
    """The chosen model's threshold slider, its evidence and the test statistics at it."""
    key = slider_key(c)
    if key not in st.session_state:
        st.session_state[key] = point.value if np.isfinite(point.value) else 0.5
    if not np.isfinite(point.value):
        st.warning(f"No call for {label}: {point.reason}. The Compare page shows the score and makes no call unless "
                   "you set a threshold here.", icon=":material/block:")
    elif (refusal := metrics.threshold_refusal(point.value, curves[c].p_held_out)) is not None:
        st.warning(f"Set by hand, and outside what the held-out images support: {refusal}.",
                   icon=":material/warning:")
    else:
        st.caption(f"On the held-out images at this threshold: sensitivity {ui.fmt(point.sensitivity, 2)}, specificity "
                   f"{ui.fmt(point.specificity, 2)}, PPV {ui.fmt(point.ppv, 2)}, from {point.positives} positives.")
    st.slider(f"Threshold of {shown[c]} for {label}", 0.0, 1.0, step=0.001, format="%.3f", key=key, on_change=store,
              args=(c,), help=f"The card's default (held-out Youden J): {ui.fmt(defaults[c])}")
    cells = st.columns(3)
    for k, name in enumerate(n for n in ui.STAT_NAMES if n != "threshold"):
        delta = stats[c][name] - at_default[c][name]
        cells[k % 3].metric(ui.STAT_NAMES[name], ui.fmt(stats[c][name]),
                            delta=None if abs(delta) < 1e-9 or np.isnan(delta) else f"{delta:+.3f}",
                            help="Change: against the card's default threshold (test split)")
    if np.isfinite(point.value):
        st.markdown(confusion(stats[c]))


# The controls that change no threshold stay out of the fragment (each reruns the page), so a move redraws less.
st.markdown(f"**Apply a preset to every model for {label}:**")
for col, preset in zip(st.columns(len(compare.PRESETS)), compare.PRESETS):
    col.button(preset, key=f"preset::{preset}", on_click=apply, args=(preset,), width="stretch")
controls, _ = st.columns([3, 2], gap="large")
curve = controls.segmented_control("Curve", ["ROC", "Precision-recall"], required=True,
                                   **ui.persist("roc.curve", "ROC", ["ROC", "Precision-recall"]))
bands = curve == "ROC" and controls.toggle("95 % bootstrap bands", help="Shaded: where the curve falls in 95 % of "
                                           "resamples of the test images.",
                                           **ui.persist("roc.bands", len(columns) <= 3))


@st.fragment
def operating_points() -> None:
    """Everything a threshold changes; a slider move reruns only this. One chart and one model's slider are drawn at
    a time: the browser redrew eleven tabs of widgets and two charts on every move (about a second)."""
    in_force = {c: pts[j] for c, pts in ui.points(sel).items() if c in columns}
    active = {c: p.value for c, p in in_force.items()}
    stats = {c: metrics.binary_stats(curves[c].y_test, curves[c].p_test, active[c]) for c in columns}
    at_default = {c: metrics.binary_stats(curves[c].y_test, curves[c].p_test, defaults[c]) for c in columns}

    chart, panel = st.columns([3, 2], gap="large")
    with chart:
        if curve == "ROC":
            st.plotly_chart(roc_figure(stats, active, bands), key="roc_chart")
        else:
            st.plotly_chart(pr_figure(stats, active), key="pr_chart")
        y = curves[columns[0]].y_test
        st.caption(f"Test split: {len(y)} images, {int(y.sum())} with {label}. Crosses: operating points at the "
                   "thresholds in force. AUC CI: 95 % bootstrap over test patients (images where a task names none), "
                   f"given where the label has at least {metrics.MIN_POSITIVES} positives.")
    with panel:
        c = st.selectbox("Model", columns, help="The model whose threshold the slider sets (Your thresholds, below, "
                         "lists the ones you changed).", format_func=shown.get,
                         **ui.persist("roc.model", columns[0], columns))
        adjust(c, stats, at_default, in_force[c])

    st.subheader("Operating points")
    summary = pd.DataFrame({shown[c]: {v: ui.fmt(stats[c][k]) for k, v in ui.STAT_NAMES.items()} for c in columns}).T
    st.table(summary)
    your_thresholds()


operating_points()
split_name = {ui.HELD_OUT: "held-out images", "test": "test split"}[fit_on]
with st.expander(f"Each preset's threshold per model, chosen on the {split_name}, and the positives it rests on"):
    # outside the fragment: presets depend on the label and split only, so a threshold move need not redraw them
    st.table(pd.DataFrame({p: {shown[c]: preset_cell(curves[c].presets[p]) for c in columns} for p in compare.PRESETS}))
    st.caption(f"A threshold needs at least {metrics.MIN_POSITIVES} positives and a score that separates (the "
               "label's AUC 95 % CI excludes 0.5); one at 0, 1 or outside the observed scores is refused; a target "
               "that no usable threshold meets is reported. Where a preset has none, applying it makes no call.")
