"""The film viewer on a page: :mod:`cxrcore.viewer`'s HTML in an iframe, the film encoded once per image."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import streamlit as st

from cxrcore import explain, viewer
from cxrcore.compare import Case
from cxrcore.imaging import model_region

@st.cache_data(max_entries=8, show_spinner=False)
def _film(sha256: str, _pixels: np.ndarray) -> tuple[str, float]:
    shown, scale = viewer.display_film(_pixels)
    return viewer.png_uri(shown), scale


@st.cache_data(max_entries=256, show_spinner=False)
def layer_src(sha256: str, model_id: str, label: str, method: str, top: float | None, _cam: np.ndarray) -> str:
    """A CAM's RGBA overlay as a data URI (cached per image, model, label, method and top-x % cut)."""
    return viewer.png_uri(viewer.overlay_rgba(_cam, top=top))


def show(case: Case, page: str, square: str, layers: Sequence[viewer.Layer] = (), height: int = 520,
         opacity: float = explain.DEFAULT_ALPHA) -> None:
    """The case's film at full resolution with its model region (under the task's ``square`` rule), NIH boxes and
    ``layers``; ``page`` keeps each page's view (zoom, window/level, toggles) apart in the browser."""
    pixels = case.image.pixels
    src, scale = _film(case.image.sha256, pixels)
    region, boxes = viewer.outlines(model_region(pixels.shape, square), case.boxes, scale)
    st.iframe(viewer.page(src, pixels.shape, scale, region, boxes, layers, opacity, key=f"{page}:{case.image.sha256}",
                          height=height, title=case.name), height="content")
