"""The film viewer's pure parts: what the browser is sent (the film at full resolution, CAM overlays as RGBA, the
model's region and the NIH boxes in film pixels) and the window/level rule it applies, as one self-contained HTML
page with inline JavaScript (no CDN: the app runs offline).

Zoom, pan, window/level, invert, the outline toggles and the overlay opacity all run in the browser, so none of them
costs a Streamlit rerun. The page is plain HTML, so :mod:`pages._viewer` only caches it and puts it in an iframe.
"""
from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from . import explain
from .data import Box
from .imaging import Region

MAX_SIDE = 4096  # px: a longer film is sent downsampled (the status line says so); the browser gets the rest as is
OVERLAY_SIDE = 512  # px a side of a CAM overlay: the map is upsampled here (bilinear, as the app's panels are)
TILE = 150  # px a side of each map's thumbnail under the viewer (every map side by side, at the same opacity)
REGION_COLOR, BOX_COLOR = "#ffc400", "#00ff00"  # the model's input square; NIH radiologists' boxes
_SCRIPT = Path(__file__).with_name("viewer.js")


@dataclass(frozen=True)
class Outline:
    """A rectangle drawn over the film, in film pixels."""

    label: str
    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class Layer:
    """One CAM overlay: drawn over the model's region, its opacity set in the browser."""

    name: str  # how the layer picker lists it
    caption: str  # what it shows: threshold, call, layer and native grid, peak in the boxes
    src: str  # data URI of the RGBA overlay (see :func:`overlay_rgba`)
    informative: bool = True  # False: "no localisation", nothing drawn


def png_uri(array: np.ndarray) -> str:
    """A uint8 (H, W), (H, W, 3) or (H, W, 4) array as a PNG data URI (lossless: the film as decoded)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def display_film(pixels: np.ndarray, max_side: int = MAX_SIDE) -> tuple[np.ndarray, float]:
    """The film as the browser gets it: at native resolution, or scaled so its long side is ``max_side``; and the
    scale applied (1.0 when native), so outlines in film pixels can follow."""
    h, w = pixels.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale == 1.0:
        return pixels, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS)), scale


def transfer(window: float, level: float, invert: bool = False) -> tuple[float, float]:
    """Window/level (grey values 0-255) as the linear map ``out = slope * v + intercept`` on [0, 1] intensities,
    clipped to [0, 1]: the window's lower edge goes to black and its upper edge to white (reversed when inverted).
    The browser applies the same two numbers (an SVG ``feComponentTransfer``), see ``viewer.js``."""
    width = max(float(window), 1.0) / 255.0
    low = float(level) / 255.0 - width / 2
    slope, intercept = 1.0 / width, -low / width
    return (-slope, 1.0 - intercept) if invert else (slope, intercept)


def window_level(pixels: np.ndarray, window: float, level: float, invert: bool = False) -> np.ndarray:
    """The film as the viewer shows it at this window/level: uint8, same shape."""
    slope, intercept = transfer(window, level, invert)
    out = np.clip(slope * (pixels.astype(np.float32) / 255.0) + intercept, 0.0, 1.0)
    return np.round(out * 255.0).astype(np.uint8)


def overlay_rgba(cam: np.ndarray, side: int = OVERLAY_SIDE, top: float | None = None) -> np.ndarray:
    """A CAM as an RGBA image: jet colours, alpha the heatmap's own per-pixel weight at full opacity
    (:func:`explain.opacity` with alpha 1). The browser multiplies it by the chosen opacity, so drawn over the film
    at opacity ``a`` it is exactly :func:`explain.overlay` with alpha ``a``."""
    heat = explain.resize_map(cam, (side, side))
    alpha = explain.opacity(heat, 1.0, top)
    return np.dstack([explain.jet(heat), np.round(alpha * 255).astype(np.uint8)])


def composite(film: np.ndarray, rgba: np.ndarray, opacity: float) -> np.ndarray:
    """What the browser draws: the overlay at ``opacity`` over a grey film of the overlay's size (source-over)."""
    a = opacity * rgba[..., 3:4].astype(np.float32) / 255.0
    grey = np.repeat(film[..., None], 3, -1).astype(np.float32)
    return np.clip((1 - a) * grey + a * rgba[..., :3].astype(np.float32), 0, 255).round().astype(np.uint8)


def outlines(region: Region, boxes: Sequence[Box], scale: float = 1.0) -> tuple[Outline, list[Outline]]:
    """The model's input region and the NIH boxes (fractions of that region's side, as :class:`compare.Case` holds
    them) in the displayed film's pixels."""
    r = Outline("model input", region.left * scale, region.top * scale, region.width * scale, region.height * scale)
    return r, [Outline(b.label, r.x + b.x * r.w, r.y + b.y * r.h, b.w * r.w, b.h * r.h) for b in boxes]


def native_note(shape: tuple[int, ...], scale: float) -> str:
    """The film's size as the status line states it."""
    h, w = shape[:2]
    return f"native {w} x {h} px" + ("" if scale == 1.0 else f", shown downsampled to {round(w * scale)} px wide")


def page(film_src: str, shape: tuple[int, ...], scale: float, region: Outline, boxes: Sequence[Outline],
         layers: Sequence[Layer] = (), opacity: float = explain.DEFAULT_ALPHA, key: str = "", height: int = 560,
         title: str = "") -> str:
    """The viewer as one HTML document: the film at ``film_src`` (``shape``: its native size; ``scale``: how it was
    sent), the outlines, the CAM layers over the region, and the script. ``key`` names the view (its zoom,
    window/level and toggles persist per key in the browser's session storage)."""
    config = {
        "key": key, "height": height, "note": native_note(shape, scale), "title": title, "opacity": opacity,
        "region": asdict(region), "boxes": [asdict(b) for b in boxes],
        "layers": [{k: v for k, v in asdict(layer).items() if k != "src"} for layer in layers],
        "colors": {"region": REGION_COLOR, "box": BOX_COLOR},
    }
    sources = "".join(f'<img class="cam" data-layer="{k}" src="{layer.src}" alt="">' for k, layer in
                      enumerate(layers))
    return _TEMPLATE.format(
        config=html.escape(json.dumps(config), quote=True), film=film_src, sources=sources, script=_SCRIPT.read_text(),
        region_color=REGION_COLOR, box_color=BOX_COLOR, height=height, tile=TILE)


_TEMPLATE = """<!doctype html><html><head><meta charset="utf-8"><style>
body{{margin:0;font:13px/1.35 "Source Sans Pro",sans-serif;color:#e6e6e6;background:transparent}}
.bar{{display:flex;flex-wrap:wrap;gap:4px 10px;align-items:center;padding:3px 0 5px}}
.bar button{{background:#262730;color:#e6e6e6;border:1px solid #4a4b57;border-radius:5px;padding:1px 8px;cursor:pointer}}
.bar button:hover{{border-color:#ff4b4b}}
.bar label{{display:inline-flex;align-items:center;gap:3px;white-space:nowrap}}
.bar input[type=range]{{width:90px}}
.bar select{{background:#262730;color:#e6e6e6;border:1px solid #4a4b57;border-radius:5px;max-width:280px}}
.stage{{position:relative;overflow:hidden;height:{height}px;background:#000;border-radius:6px;cursor:grab;
touch-action:none;user-select:none}}
.stage.dragging{{cursor:grabbing}}
.world{{position:absolute;left:0;top:0;transform-origin:0 0}}
.world img{{position:absolute;left:0;top:0;display:block}}
.world img.pixelated{{image-rendering:pixelated}}
.world img.cam{{display:none;pointer-events:none}}
.world svg{{position:absolute;left:0;top:0;overflow:visible;pointer-events:none}}
.status{{color:#a3a8b8;font-size:12px;padding-top:3px}}
.caption{{font-size:12px;color:#c8ccd8;padding-top:2px;min-height:1em}}
.tiles{{display:flex;flex-wrap:wrap;gap:6px;padding-top:6px}}
.tile{{width:{tile}px;cursor:pointer;border:2px solid transparent;border-radius:4px;font-size:11px;color:#c8ccd8}}
.tile.on{{border-color:#ff4b4b}}
.tile canvas{{display:block;width:{tile}px;height:{tile}px;background:#000}}
.tile div{{overflow:hidden;max-height:2.7em;padding:1px 2px}}
.jet{{display:inline-block;width:70px;height:9px;margin:0 3px;vertical-align:0;
background:linear-gradient(90deg,#00007f,#00f 12.5%,#0ff 37.5%,#ff0 62.5%,#f00 87.5%,#7f0000)}}  /* explain.jet */
.key{{display:inline-block;width:10px;height:10px;border:2px solid;margin-right:3px;vertical-align:-1px}}
</style></head><body>
<div id="viewer" data-config="{config}">
<div class="bar" id="bar">
 <button id="fit" title="Fit the film to the view (double-click the film)">Fit</button>
 <button id="native" title="One film pixel per screen pixel">1:1</button>
 <button id="zoomout" title="Zoom out (wheel)">&minus;</button><button id="zoomin" title="Zoom in (wheel)">+</button>
 <label title="Window width in grey levels (right-drag or shift-drag left/right)">Window
  <input id="window" type="range" min="1" max="255" step="1" value="255"></label>
 <label title="Window centre in grey levels (right-drag or shift-drag up/down)">Level
  <input id="level" type="range" min="0" max="255" step="1" value="128"></label>
 <label><input id="invert" type="checkbox">Invert</label>
 <button id="resetwl" title="Full range, not inverted">Reset W/L</button>
 <label title="The centre square the models see"><input id="showregion" type="checkbox" checked>
  <span class="key" style="border-color:{region_color}"></span>Model input</label>
 <label id="boxeslabel" title="NIH radiologists' bounding boxes"><input id="showboxes" type="checkbox" checked>
  <span class="key" style="border-color:{box_color}"></span>NIH boxes</label>
 <label id="layerlabel">Map <select id="layer"></select></label>
 <label id="opacitylabel" title="Heatmap opacity at the map's upper half (changed here, without a rerun)">Opacity
  <input id="opacity" type="range" min="0" max="1" step="0.05"><span id="opacityvalue"></span>
  <span title="The map relative to its own peak, not a probability">low<span class="jet"></span>peak</span></label>
</div>
<div class="stage" id="stage"><div class="world" id="world">
 <img id="film" src="{film}" alt="the film" draggable="false" style="filter:url(#wl)">
 {sources}
 <svg id="marks"></svg>
</div></div>
<svg width="0" height="0" style="position:absolute"><filter id="wl" color-interpolation-filters="sRGB">
 <feComponentTransfer><feFuncR id="fr" type="linear" slope="1" intercept="0"/>
 <feFuncG id="fg" type="linear" slope="1" intercept="0"/><feFuncB id="fb" type="linear" slope="1" intercept="0"/>
 </feComponentTransfer></filter></svg>
<div class="caption" id="caption"></div>
<div class="tiles" id="tiles"></div>
<div class="status" id="status"></div>
</div>
<script>{script}</script></body></html>"""
