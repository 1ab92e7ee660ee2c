"""pages/_common.py's pure helpers: model colours."""
from __future__ import annotations

from cxrcore.compare import ENSEMBLE
from cxrcore.zoo import list_models
from pages import _common as ui


def test_every_zoo_model_has_its_own_colour():
    palette = ui.colors(list_models())
    assert len(set(palette.values())) == len(list_models())
    assert ui.ENSEMBLE_COLOR not in palette.values()


def test_a_model_keeps_its_colour_whatever_else_is_shown():
    full = ui.colors(list_models() + [ENSEMBLE])
    subset = ui.colors(["vit_scratch", ENSEMBLE, "cnn_small"])
    assert subset["vit_scratch"] == full["vit_scratch"] and subset["cnn_small"] == full["cnn_small"]
    assert subset[ENSEMBLE] == ui.ENSEMBLE_COLOR


def test_up_to_24_models_get_distinct_colours():
    ids = [f"model_{k}" for k in range(24)]
    assert len(set(ui.colors(ids).values())) == 24


def test_plain_shows_user_text_literally_in_markdown():
    """Every Markdown-active character becomes a character reference; URLs and addresses are broken by an invisible
    word joiner so Streamlit does not link them; decoding gives the text back on one line."""
    import html
    import re

    text = "**No finding** :green[normal] [a](http://x.y) www.x.y me@x.y $x$ ~s~ `c` <b> # _i_ \\ x\n2.png"
    out = ui.plain(text)
    assert "\n" not in out and not re.search(r"[!-/:-@\[-`{-~]", re.sub(r"&#\d+;", "", out))
    assert html.unescape(out).replace("\u2060", "") == " ".join(text.split())
    assert "http://" not in html.unescape(out) and "www." not in html.unescape(out)
