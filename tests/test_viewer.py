"""The film viewer's pure parts: the film goes to the browser losslessly at full resolution, window/level maps the
window's edges to black and white, the RGBA overlay at an opacity composes to exactly the app's CAM overlay, and
outlines land on the film's pixels."""
from __future__ import annotations

import base64
import html
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from cxrcore import explain, viewer
from cxrcore.data import Box
from cxrcore.imaging import model_region


def decode_uri(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_the_film_is_sent_losslessly_at_native_size():
    film = np.random.default_rng(0).integers(0, 256, (300, 240), dtype=np.uint8)
    shown, scale = viewer.display_film(film)
    assert scale == 1.0 and np.array_equal(decode_uri(viewer.png_uri(shown)), film)
    assert viewer.native_note(film.shape, scale) == "native 240 x 300 px"


def test_a_film_over_the_cap_is_downsampled_and_says_so():
    shown, scale = viewer.display_film(np.zeros((100, 400), np.uint8), max_side=200)
    assert shown.shape == (50, 200) and scale == 0.5
    assert viewer.native_note((100, 400), scale) == "native 400 x 100 px, shown downsampled to 200 px wide"


def test_window_level_sends_the_window_edges_to_black_and_white():
    v = np.array([0, 64, 100, 128, 156, 200, 255], np.uint8)
    assert np.array_equal(viewer.window_level(v, 255, 127.5), v)  # full range: unchanged
    out = viewer.window_level(v, 56, 128)  # window 100..156
    assert out[0] == out[1] == out[2] == 0 and out[4] == out[5] == out[6] == 255 and 120 < out[3] < 135
    inverted = viewer.window_level(v, 255, 127.5, invert=True)
    assert np.array_equal(inverted, 255 - v)
    slope, intercept = viewer.transfer(56, 128)
    assert slope == pytest.approx(255 / 56) and slope * 100 / 255 + intercept == pytest.approx(0, abs=1e-9)


def test_the_rgba_overlay_at_an_opacity_is_the_apps_overlay():
    """What the browser composes (the RGBA layer at CSS opacity a over the film) equals explain.overlay at alpha a,
    so moving the opacity in the browser shows what a server-side redraw would."""
    rng = np.random.default_rng(1)
    cam = rng.random((8, 8)).astype(np.float32)
    film = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    rgba = viewer.overlay_rgba(cam, side=64)
    for a in (0.0, 0.3, 0.8):
        drawn = viewer.composite(film, rgba, a)
        assert np.abs(drawn.astype(int) - explain.overlay(film, cam, a).astype(int)).max() <= 2
    top = viewer.overlay_rgba(cam, side=64, top=0.1)
    assert 0 < (top[..., 3] > 0).mean() <= 0.12  # only the top 10 % of the map is drawn at all


def test_outlines_put_the_region_and_boxes_on_film_pixels():
    region = model_region((400, 600))  # a landscape film: centre 400 px square from x = 100
    r, boxes = viewer.outlines(region, [Box("Mass", 0.25, 0.5, 0.1, 0.2)], scale=0.5)
    assert (r.x, r.y, r.w, r.h) == (50, 0, 200, 200)
    assert (boxes[0].label, boxes[0].x, boxes[0].y, boxes[0].w, boxes[0].h) == ("Mass", 100, 100, 20, 40)


def test_the_page_is_offline_and_quotes_user_text():
    film = np.zeros((64, 64), np.uint8)
    region, boxes = viewer.outlines(model_region(film.shape), [])
    layer = viewer.Layer("Mass · m1", "m1 <b>caption</b>", viewer.png_uri(viewer.overlay_rgba(np.eye(8), 16)))
    page = viewer.page(viewer.png_uri(film), film.shape, 1.0, region, boxes, [layer], 0.4, key="k",
                       title='<script>alert("x")</script>.png')
    assert "<script src" not in page and not re.search(r"""(src|href)=["']?(https?:)?//|@import|fetch\(""", page)
    assert page.count("<script>") == 1 and "alert(" not in page.split("<script>")[1].split("</script>")[0]
    config = json.loads(html.unescape(re.search(r'data-config="([^"]*)"', page).group(1)))
    assert config["title"] == '<script>alert("x")</script>.png' and config["opacity"] == 0.4
    assert config["layers"] == [{"name": "Mass · m1", "caption": "m1 <b>caption</b>", "informative": True}]
    assert config["note"] == "native 64 x 64 px" and page.count('class="cam"') == 1
