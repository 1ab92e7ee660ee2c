"""The compact results table: vertical headings, a pinned label column, two decimals shown with the full value kept,
the caller's cell styles, and user text escaped."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from cxrcore import html_table


def test_headings_are_vertical_labels_pinned_and_values_kept_in_full():
    frame = pd.DataFrame({"ensemble": [0.123456, np.nan], "vanilla_cnn": [0.5, 0.25], "Votes +": ["1/2", "no call"]},
                         index=["Atelectasis", "Mass"])
    out = html_table.render(frame.style.apply(lambda c: ["color: red"] * len(c)), headers={"ensemble": "mean of 2"})
    assert re.findall(r'<div class="vh">(.*?)</div>', out) == ["mean of 2", "vanilla_cnn", "Votes +"]
    assert ">Label</th>" in out and "position:sticky;left:0" in out
    assert '<span title="0.1235" data-value="0.123456">0.12</span>' in out and "nan" not in out.lower()
    assert "color: red" in out and ">no call</td>" in out


def test_each_table_has_its_own_rules_and_text_is_escaped():
    frame = pd.DataFrame({"<b>m</b>": [0.1]}, index=["<i>x</i>"])
    a, b = (html_table.render(frame.style) for _ in range(2))
    assert re.search(r'class="(cxrt\w+)"', a).group(1) != re.search(r'class="(cxrt\w+)"', b).group(1)
    assert "&lt;b&gt;m&lt;/b&gt;" in a and "<b>m</b>" not in a
