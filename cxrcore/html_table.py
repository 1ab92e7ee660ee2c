"""A wide, styled table as compact HTML: column headings set vertically (so ten or more model columns fit 1600 px
without scrolling sideways), the row labels pinned while the rest scrolls on a narrow screen, every number shown to
two decimals and kept in full in the cell's tooltip and ``data-value``.

Takes a pandas ``Styler`` (the per-cell colours are the caller's), returns one self-contained ``<div>``.
"""
from __future__ import annotations

import html
import math
import uuid
from typing import Mapping

from pandas.io.formats.style import Styler

BACKGROUND = "#171614"  # the app's dark theme (measured in a screenshot): the pinned column must be opaque to hide what scrolls under it

_CSS = """<style>
.{cls}-wrap{{overflow-x:auto;max-width:100%}}
.{cls}{{border-collapse:collapse;font-size:14px;font-variant-numeric:tabular-nums}}
.{cls} td,.{cls} th{{border-bottom:1px solid rgba(250,250,250,0.1);padding:3px 6px}}
.{cls} td{{text-align:right;white-space:nowrap}}
.{cls} thead th{{vertical-align:bottom;font-weight:600;padding:2px 3px}}
.{cls} thead th .vh{{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap;max-height:170px;
overflow:hidden;text-overflow:ellipsis;margin:0 auto}}
.{cls} th.row_heading,.{cls} th.blank{{position:sticky;left:0;background:{bg};text-align:left;white-space:nowrap;
font-weight:600;z-index:1}}
</style>"""


def number(value: object) -> str:
    """A cell: two decimals shown, the full value in the tooltip and ``data-value``; text as it is; NaN blank."""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f'<span title="{value:.4f}" data-value="{value!r}">{value:.2f}</span>'
    return html.escape(str(value))


def render(styler: Styler, label: str = "Label", headers: Mapping[str, str] | None = None) -> str:
    """The styled frame as an HTML table with vertical headings (``headers`` renames some) and a pinned label column
    headed ``label``."""
    cls = f"cxrt{uuid.uuid4().hex[:8]}"  # scoped: two tables on a page keep their own rules
    names = dict(headers or {})

    def vertical(name: object) -> str:
        return f'<div class="vh">{html.escape(str(names.get(name, name)))}</div>'

    styler = (styler.format(number, escape=None).format_index(vertical, axis=1, escape=None)
              .set_table_attributes(f'class="{cls}"').hide(axis="index", names=True))
    body = styler.to_html(doctype_html=False)
    body = body.replace('<th class="blank level0" >&nbsp;</th>', f'<th class="blank level0" >{html.escape(label)}</th>', 1)
    return _CSS.format(cls=cls, bg=BACKGROUND) + f'<div class="{cls}-wrap">{body}</div>'
