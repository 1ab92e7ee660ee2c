// The film viewer (cxrcore/viewer.py builds the page): zoom, pan, window/level, invert, outline toggles and CAM
// opacity, all in the browser. The view persists per key in sessionStorage, so a Streamlit rerun that rebuilds the
// iframe, or a visit to another page and back, finds it as it was left.
(function () {
  "use strict";
  const root = document.getElementById("viewer");
  const cfg = JSON.parse(root.dataset.config);
  const $ = (id) => document.getElementById(id);
  const stage = $("stage"), world = $("world"), film = $("film"), marks = $("marks");
  const cams = Array.from(document.querySelectorAll("img.cam"));
  const storeKey = "cxr-viewer:" + cfg.key;
  const defaults = {window: 255, level: 128, invert: false, region: true, boxes: true, layer: 0,
                    opacity: cfg.opacity, view: null};
  let state = Object.assign({}, defaults);
  try { Object.assign(state, JSON.parse(sessionStorage.getItem(storeKey) || "{}")); } catch (e) { /* no storage */ }
  if (state.layer >= cfg.layers.length) state.layer = 0;
  let view = {s: 1, x: 0, y: 0};  // screen = film * s + (x, y)

  function save() {
    state.view = view;
    try { sessionStorage.setItem(storeKey, JSON.stringify(state)); } catch (e) { /* storage refused: view not kept */ }
  }

  // The same rule as cxrcore.viewer.transfer: grey values 0-255 -> out = slope * v + intercept on [0, 1].
  function transfer(window, level, invert) {
    const width = Math.max(window, 1) / 255, low = level / 255 - width / 2;
    const slope = 1 / width, intercept = -low / width;
    return invert ? [-slope, 1 - intercept] : [slope, intercept];
  }

  function applyWL() {
    const [slope, intercept] = transfer(state.window, state.level, state.invert);
    for (const id of ["fr", "fg", "fb"]) {
      $(id).setAttribute("slope", slope.toFixed(6));
      $(id).setAttribute("intercept", intercept.toFixed(6));
    }
    $("window").value = state.window; $("level").value = state.level; $("invert").checked = state.invert;
    if (tiles.length) drawTiles();
  }

  function applyView() {
    world.style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.s})`;
    film.classList.toggle("pixelated", view.s >= 2);  // show the pixels as they are, not smoothed, when enlarged
    strokes();
    status();
  }

  function status() {
    const wl = `W ${state.window} / L ${state.level}${state.invert ? ", inverted" : ""}`;
    $("status").textContent = `${cfg.title ? cfg.title + ": " : ""}${cfg.note}; zoom ${Math.round(view.s * 100)} %` +
      ` (${view.s >= 1 ? "1 film px = " + view.s.toFixed(2) + " screen px" : "film reduced to fit"}); ${wl}`;
  }

  function fit() {
    const w = film.naturalWidth, h = film.naturalHeight, sw = stage.clientWidth, sh = stage.clientHeight;
    if (!w || !h || !sw) return;
    const s = Math.min(sw / w, sh / h);
    view = {s: s, x: (sw - w * s) / 2, y: (sh - h * s) / 2};
    applyView(); save();
  }

  function zoomAt(factor, cx, cy) {
    const s = Math.min(Math.max(view.s * factor, 0.05), 64);
    view = {s: s, x: cx - (cx - view.x) * (s / view.s), y: cy - (cy - view.y) * (s / view.s)};
    applyView(); save();
  }

  function native() {
    const sw = stage.clientWidth, sh = stage.clientHeight;
    const cx = (sw / 2 - view.x) / view.s, cy = (sh / 2 - view.y) / view.s;  // keep the centre where it is
    view = {s: 1, x: sw / 2 - cx, y: sh / 2 - cy};
    applyView(); save();
  }

  // Outlines 2 screen px wide at any zoom (the zoom is a CSS transform, which SVG's non-scaling-stroke ignores).
  function strokes() {
    for (const r of marks.querySelectorAll("rect")) {
      r.setAttribute("stroke-width", String(2 / view.s));
      if (r.dataset.dash) r.setAttribute("stroke-dasharray", `${6 / view.s} ${4 / view.s}`);
    }
  }

  function rect(o, color, dash) {
    const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    for (const [k, v] of [["x", o.x], ["y", o.y], ["width", o.w], ["height", o.h]]) r.setAttribute(k, v);
    r.setAttribute("fill", "none"); r.setAttribute("stroke", color);
    if (dash) r.dataset.dash = "1";
    const t = document.createElementNS("http://www.w3.org/2000/svg", "title");
    t.textContent = o.label; r.appendChild(t);
    return r;
  }

  function drawMarks() {
    marks.replaceChildren();
    marks.setAttribute("width", film.naturalWidth); marks.setAttribute("height", film.naturalHeight);
    if (state.region) marks.appendChild(rect(cfg.region, cfg.colors.region, true));
    if (state.boxes) for (const b of cfg.boxes) marks.appendChild(rect(b, cfg.colors.box, false));
    strokes();
    $("showregion").checked = state.region; $("showboxes").checked = state.boxes;
  }

  // Every map side by side under the viewer: the model's square at the film's window/level, the map at the same
  // opacity; a click shows that map in the viewer.
  const tiles = cfg.layers.length > 1 ? cfg.layers.map((layer, k) => {
    const tile = document.createElement("div"), canvas = document.createElement("canvas"), name = document.createElement("div");
    tile.className = "tile"; tile.title = layer.caption; name.textContent = layer.name.split(" (")[0];
    canvas.width = canvas.height = 300;  // drawn at twice the tile's CSS size: sharp on high-density screens
    tile.append(canvas, name); $("tiles").appendChild(tile);
    tile.onclick = () => { state.layer = k; applyLayer(); save(); };
    return canvas;
  }) : [];

  function drawTiles() {
    const r = cfg.region;
    tiles.forEach((canvas, k) => {
      const ctx = canvas.getContext("2d"), n = canvas.width;
      ctx.clearRect(0, 0, n, n);
      ctx.filter = "url(#wl)"; ctx.globalAlpha = 1;
      ctx.drawImage(film, r.x, r.y, r.w, r.h, 0, 0, n, n);
      ctx.filter = "none";
      if (cfg.layers[k].informative && cams[k].complete) { ctx.globalAlpha = state.opacity; ctx.drawImage(cams[k], 0, 0, n, n); }
      canvas.parentElement.classList.toggle("on", k === state.layer);
    });
  }

  cams.forEach((img) => img.addEventListener("load", () => { if (film.complete) drawTiles(); }));

  function applyLayer() {
    const r = cfg.region;
    cams.forEach((img, k) => {
      Object.assign(img.style, {left: r.x + "px", top: r.y + "px", width: r.w + "px", height: r.h + "px",
                                opacity: String(state.opacity),
                                display: k === state.layer && cfg.layers[k].informative ? "block" : "none"});
    });
    const layer = cfg.layers[state.layer];
    $("caption").textContent = layer ? layer.caption : "";
    $("layer").value = String(state.layer);
    $("opacity").value = state.opacity; $("opacityvalue").textContent = Number(state.opacity).toFixed(2);
    drawTiles();
  }

  // ---- controls ----
  $("boxeslabel").style.display = cfg.boxes.length ? "" : "none";
  $("layerlabel").style.display = $("opacitylabel").style.display = cfg.layers.length ? "" : "none";
  cfg.layers.forEach((layer, k) => $("layer").add(new Option(layer.name, String(k))));
  $("fit").onclick = fit;
  $("native").onclick = native;
  $("zoomin").onclick = () => zoomAt(1.25, stage.clientWidth / 2, stage.clientHeight / 2);
  $("zoomout").onclick = () => zoomAt(0.8, stage.clientWidth / 2, stage.clientHeight / 2);
  $("window").oninput = (e) => { state.window = Number(e.target.value); applyWL(); status(); save(); };
  $("level").oninput = (e) => { state.level = Number(e.target.value); applyWL(); status(); save(); };
  $("invert").onchange = (e) => { state.invert = e.target.checked; applyWL(); status(); save(); };
  $("resetwl").onclick = () => { Object.assign(state, {window: 255, level: 128, invert: false}); applyWL(); status(); save(); };
  $("showregion").onchange = (e) => { state.region = e.target.checked; drawMarks(); save(); };
  $("showboxes").onchange = (e) => { state.boxes = e.target.checked; drawMarks(); save(); };
  $("layer").onchange = (e) => { state.layer = Number(e.target.value); applyLayer(); save(); };
  $("opacity").oninput = (e) => { state.opacity = Number(e.target.value); applyLayer(); save(); };

  // ---- mouse: wheel zooms at the cursor, left-drag pans, right- or shift-drag sets window (x) and level (y) ----
  stage.addEventListener("wheel", (e) => {
    e.preventDefault();
    const b = stage.getBoundingClientRect();
    zoomAt(Math.exp(-e.deltaY * 0.0015), e.clientX - b.left, e.clientY - b.top);
  }, {passive: false});
  stage.addEventListener("contextmenu", (e) => e.preventDefault());
  stage.addEventListener("dblclick", fit);
  let drag = null;
  stage.addEventListener("pointerdown", (e) => {
    drag = {x: e.clientX, y: e.clientY, wl: e.button === 2 || e.shiftKey, view: Object.assign({}, view),
            window: state.window, level: state.level};
    stage.setPointerCapture(e.pointerId); stage.classList.add("dragging");
  });
  stage.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (drag.wl) {
      state.window = Math.round(Math.min(255, Math.max(1, drag.window + dx)));
      state.level = Math.round(Math.min(255, Math.max(0, drag.level - dy)));
      applyWL(); status();
    } else {
      view = {s: drag.view.s, x: drag.view.x + dx, y: drag.view.y + dy}; applyView();
    }
  });
  const end = () => { if (drag) { drag = null; stage.classList.remove("dragging"); save(); } };
  stage.addEventListener("pointerup", end); stage.addEventListener("pointercancel", end);

  function start() {
    drawMarks(); applyWL(); applyLayer();
    if (state.view && state.view.s) { view = state.view; applyView(); } else { fit(); }
  }
  if (film.complete && film.naturalWidth) start(); else film.addEventListener("load", start);
  window.cxrViewer = {state: () => Object.assign({view: view}, state), fit: fit, zoomAt: zoomAt, transfer: transfer};
})();
