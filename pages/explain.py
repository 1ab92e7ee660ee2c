"""Explain: where in the image each model looks for a label (class activation maps), and whether that is in the
NIH box when the image has one."""
import streamlit as st

from cxrcore import compare, explain
from cxrcore.task import is_multilabel
from pages import _common as ui

sel = ui.selection()
ui.header("Explain", "Class activation maps of the chosen models for the chosen labels, drawn on the square the "
          "models see. Red: regions that raise the label's score most.", sel)
ui.need_models(sel)
case = ui.need_case()
comp = ui.comparison(case, sel)
lead = comp.probs.columns[-1]  # the ensemble when there is one

c1, c2, c3, c4, c5 = st.columns([3, 3, 2, 2, 2])
models = c1.multiselect("Models", sel.ids, default=sel.ids[:4], key="cam_models")
default_label = compare.top_label(comp.probs[lead], sel.label_names)
kind = "label" if is_multilabel(sel.task) else "class"  # a single-label task explains a chosen class
labels = c2.multiselect(f"{kind.capitalize()}es" if kind == "class" else "Labels", sel.label_names,
                        default=[default_label], key="cam_labels", help=f"Default: the {kind} {lead} rates most likely.")
method = c3.selectbox("CAM method", list(explain.CAM_METHODS), key="cam_method")
alpha = c4.slider("Opacity", 0.0, 1.0, explain.DEFAULT_ALPHA, 0.05, key="cam_alpha",
                  help="At the map's upper half; it fades to clear where the map is low, so the film stays readable.")
top = c5.select_slider("Show", [100, 50, 30, 20, 10, 5], value=100, key="cam_top",
                       format_func=lambda v: "whole map" if v == 100 else f"top {v} %",
                       help="Draw only the highest part of each map.")
if not models or not labels:
    st.info("Choose at least one model and one label.", icon=":material/tune:")
    st.stop()

pairs = [(label, m) for label in labels for m in models]
progress = st.progress(0.0, text="Computing class activation maps…")
maps = {}
for k, (label, m) in enumerate(pairs):
    maps[label, m] = ui.cam(case, sel, m, label, method)
    progress.progress((k + 1) / len(pairs), text=f"{method}: {m}, {label}")
progress.empty()

square = ui.display_square(case)
st.caption("Colour bar: the map relative to its own peak, not a probability. Each caption gives the layer's native "
           "grid (the map is no finer than that) or says **no localisation** when the map is empty or constant; such "
           "a map is not drawn.")
if case.boxes:
    st.caption("Green boxes: NIH radiologists' bounding boxes for this image ("
               + ", ".join(sorted({b.label for b in case.boxes})) + ").")
per_row = min(len(models), 4)
for label in labels:
    st.subheader(label)
    for start in range(0, len(models), per_row):
        for col, m in zip(st.columns(per_row), models[start:start + per_row]):
            cam = maps[label, m]
            called = "positive" if comp.calls.at[label, m] else "negative"
            title = f"{m}: p={comp.probs.at[label, m]:.2f} ({called})"
            col.image(compare.cam_panel(square, cam, alpha, case.boxes, None if top == 100 else top / 100),
                      width="stretch", caption=compare.cam_caption(title, cam, case.boxes))
