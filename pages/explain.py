"""Explain: where in the image each model looks for a label (class activation maps), and whether that is in the
NIH box when the image has one."""
import pandas as pd
import streamlit as st

from cxrcore import compare, explain, viewer
from cxrcore.task import is_multilabel
from pages import _common as ui
from pages import _viewer

sel = ui.selection()
ui.header("Explain", "Class activation maps of the chosen models for the chosen labels, over the film's model input "
          "square. Red: regions that raise the label's score most. Pick a map and set its opacity in the viewer.", sel)
ui.need_models(sel)
case = ui.need_case()
comp = ui.comparison(case, sel)
lead = comp.probs.columns[-1]  # the ensemble when there is one

c1, c2, c3, c4 = st.columns([4, 3, 2, 2])
# Each setting stays put for the session (ui.persist), across pages and films, until changed here.
models = c1.multiselect("Models", sel.ids, **ui.persist("explain.models", sel.ids[:4], sel.ids))
default_label = compare.top_label(comp.probs[lead], sel.label_names)
kind = "label" if is_multilabel(sel.task) else "class"  # a single-label task explains a chosen class
labels = c2.multiselect(f"{kind.capitalize()}es" if kind == "class" else "Labels", sel.label_names,
                        help=f"First default: the {kind} {lead} rates most likely on the film then read.",
                        **ui.persist("explain.labels", [default_label], sel.label_names))
method = c3.selectbox("CAM method", list(explain.CAM_METHODS),
                      **ui.persist("explain.method", "GradCAM", list(explain.CAM_METHODS)))
TOPS = [100, 50, 30, 20, 10, 5]
top = c4.select_slider("Show", TOPS, format_func=lambda v: "whole map" if v == 100 else f"top {v} %",
                       help="Draw only the highest part of each map.", **ui.persist("explain.top", 100, TOPS))
if not models or not labels:
    st.info("Choose at least one model and one label.", icon=":material/tune:")
    st.stop()

pairs = [(label, m) for label in labels for m in models]
progress = st.progress(0.0, text="Computing class activation maps…")
layers, rows = [], []
cut = None if top == 100 else top / 100
for k, (label, m) in enumerate(pairs):
    cam = ui.cam(case, sel, m, label, method)
    call = comp.call_text(label, m)
    caption = compare.cam_caption(f"{m}, {label}: {call}", cam, case.boxes)
    layers.append(viewer.Layer(f"{label} · {m} ({call})", caption,
                               _viewer.layer_src(case.image.sha256, m, label, method, cut, cam.map), cam.informative))
    rows.append({"label": label, "model": m, "call": call, "map": caption.split(" · ", 1)[1]})
    progress.progress((k + 1) / len(pairs), text=f"{method}: {m}, {label}")
progress.empty()

_viewer.show(case, "explain", sel.square, layers, height=480)
st.caption("Colour bar: blue (low) to red (the map's own peak); the map is relative to its peak, not a probability. "
           "The opacity applies at the map's upper half and fades to clear where the map is low. A map that is empty "
           "or constant has **no localisation** and is not drawn.")
if case.boxes:
    st.caption("Green boxes: NIH radiologists' bounding boxes for this image ("
               + ", ".join(sorted({b.label for b in case.boxes})) + ").")
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config={
    "label": "Label", "model": "Model", "call": "Probability and call",
    "map": st.column_config.TextColumn("Map: layer, native grid, peak vs the NIH boxes", width="large")})
