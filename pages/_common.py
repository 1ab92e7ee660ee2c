"""Streamlit glue shared by the pages: cached models and predictions, the sidebar's task and model choice, the image
being read, the thresholds in force, and the header every page shows.

Everything here caches or lays out; what is computed comes from :mod:`cxrcore`.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pandas as pd
import plotly.colors
import streamlit as st
import torch
from streamlit.runtime.scriptrunner import get_script_run_ctx

from cxrcore import benchmarks, cards, checkpoints, compare, data, datasets, explain, inference, metrics, runs
from cxrcore.calibration import CalibrationCheck
from cxrcore.compare import ENSEMBLE, Case
from cxrcore.imaging import ImageError, Limits
from cxrcore.ood import usable as detector_usable
from cxrcore.zoo import list_models

ROOT = Path(__file__).resolve().parents[1]
CASE, UPLOAD, UPLOAD_ERROR, THRESHOLDS = "case", "upload", "upload_error", "thresholds"
UPLOADS, PICK = "uploads", "pick"  # how many times the uploader was cleared (its key); the test-split pick
STARTED = "started"  # set by the sidebar app.py draws: the session runs through its navigation
SETTINGS = "settings::"  # st.session_state keys of page settings kept all session (see persist)
URL_THRESHOLDS = "thr"  # query parameter: the user's thresholds, so a browser refresh keeps them
NOTICE = "**Research tool, not a medical device.** Not for diagnosis or treatment decisions."
POSITIVE_BG, NEGATIVE_BG = "rgba(230, 80, 60, 0.45)", "rgba(60, 170, 90, 0.18)"
NO_CALL_STYLE = "color: rgba(160, 160, 160, 0.9); font-style: italic"  # a score without a threshold: no call
ENSEMBLE_COLOR = "#f5c518"
STAT_NAMES = {"threshold": "Threshold", "sensitivity": "Sensitivity", "specificity": "Specificity", "ppv": "PPV",
              "npv": "NPV", "f1": "F1", "accuracy": "Accuracy"}
log = logging.getLogger(__name__)

# One image at a time needs no intra-op parallelism, and spinning OpenMP threads that compete with other work on a
# small CPU made the 64 px forward passes 10-50x slower (46 ms instead of 1.6 s for six models with training running).
torch.set_num_threads(int(os.environ.get("CXR_APP_THREADS", "1")))


def checkpoint_root() -> Path:
    """``$CXR_CHECKPOINTS`` (relative paths from the repo root), else the shipped ``checkpoints/``."""
    path = Path(os.environ.get("CXR_CHECKPOINTS", "checkpoints"))
    return path if path.is_absolute() else ROOT / path


# ---- cached resources (once per process, shared by every session) --------------------------------------------------

@st.cache_resource(show_spinner=False)
def _failures(root: str, dataset: str) -> dict[str, str]:
    """Models of the task whose weights are here but would not load in this process, with the reason (filled as
    each is first loaded, shown on the Models page)."""
    return {}


@st.cache_resource(show_spinner=False, max_entries=64)
def _load(root: str, dataset: str, model_id: str) -> inference.LoadedModel:
    return inference.load_model(next(c.path for c in task_checkpoints(root, dataset) if c.id == model_id))


def model(root: str, dataset: str, model_id: str) -> inference.LoadedModel | None:
    """One model, loaded when first needed and then kept for the process (every session shares it); None, with the
    reason recorded, when its weights do not load. Loading only what a page needs keeps the first page at start-up
    time (all ten NIH models took 12 s)."""
    try:
        return _load(root, dataset, model_id)
    except Exception as exc:  # noqa: BLE001 - one checkpoint that cannot load must not stop the others
        log.warning("%s/%s does not load: %s", dataset, model_id, exc)
        _failures(root, dataset)[model_id] = str(exc)
        return None


def loadable(root: str, dataset: str) -> list[str]:
    """The task's models whose weights are here and have not failed to load (none is loaded to say so)."""
    failed = _failures(root, dataset)
    return [c.id for c in task_checkpoints(root, dataset)
            if c.id != ENSEMBLE and c.has_weights and c.id not in failed]


def not_converged(root: str, dataset: str) -> dict[str, str]:
    """The task's models that did not learn (:attr:`Card.not_converged`), with why: selectable, not chosen by
    default, and named as such wherever they are listed."""
    return {c.id: why for c in task_checkpoints(root, dataset) if (why := c.card.not_converged)}


def problems(root: str, dataset: str) -> dict[str, str]:
    """Why each other model of the task cannot read an image: no weights here, or weights that did not load."""
    missing = {c.id: f"no weights file ({checkpoints.WEIGHTS}) in {c.path}; rebuild it with: {c.card.rebuild}"
               for c in task_checkpoints(root, dataset) if c.id != ENSEMBLE and not c.has_weights}
    return {**missing, **_failures(root, dataset)}


class Models(Mapping[str, inference.LoadedModel]):
    """The chosen models by id, each loaded on first access (:func:`model`). One that fails to load is recorded and
    the app reruns without it, so pages only ever meet models that work."""

    def __init__(self, root: str, dataset: str, ids: list[str]) -> None:
        self._root, self._dataset, self._ids = root, dataset, ids

    def __getitem__(self, model_id: str) -> inference.LoadedModel:
        if model_id not in self._ids:
            raise KeyError(model_id)
        m = model(self._root, self._dataset, model_id)
        if m is None:
            st.rerun()
        return m

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


@st.cache_resource(show_spinner=False)
def task_checkpoints(root: str, dataset: str) -> list[checkpoints.Checkpoint]:
    """Every card of the task, weights shipped or not, the stored ensemble included."""
    return [c for c in checkpoints.find(Path(root)) if c.dataset == dataset]


@st.cache_data(show_spinner=False)
def calibration_checks(root: str, dataset: str) -> dict[str, CalibrationCheck]:
    """Each model's test ECE with its CI, by id (models without stored test predictions are absent)."""
    return {c.id: benchmarks.calibration_on_test(c) for c in task_checkpoints(root, dataset) if c.has_predictions}


@st.cache_resource(show_spinner=False)
def broken_checkpoints(root: str, dataset: str) -> list[checkpoints.Broken]:
    """Checkpoint folders of the task (or of no readable task) that cannot be used, with the reason."""
    return [b for b in checkpoints.scan(Path(root)).broken if b.dataset in (dataset, None)]


@st.cache_resource(show_spinner="Opening the test split…", ttl=600)
def test_split(dataset: str, size: int, cache_key: str | None) -> tuple[data.Split | None, str | None]:
    """The task's test split when it is on this machine and decoded (never required): memory-mapped from the cache
    folder the card names, without reading the other splits or decoding anything (minutes for the larger sets);
    else None, with the command that decodes it when the sources are here but not yet decoded. Kept ten minutes, so a
    split decoded meanwhile appears."""
    try:
        return datasets.load_split(dataset, size, "test", cache_key, decode=False), None
    except datasets.SplitNotCached as exc:
        return None, str(exc)
    except (data.DatasetNotFound, ValueError, OSError):
        return None, None


@st.cache_resource(show_spinner=False)
def nih_boxes() -> dict[str, list[data.Box]]:
    """NIH radiologists' boxes by image file name ({} when the box list is not on this machine)."""
    return data.load_boxes()


@st.cache_resource(show_spinner=False)
def _model_lock() -> threading.Lock:
    """The models are shared by every session, and Grad-CAM and the OOD features hook into them (a hook would also
    catch another session's forward pass), so one session at a time runs them; each use takes milliseconds."""
    return threading.Lock()


# ---- the task and models chosen in the sidebar ---------------------------------------------------------------------

@dataclass(frozen=True)
class Selection:
    """What the sidebar chose: the task, its models (loaded, by id) and every card of the task."""

    dataset: str
    root: Path
    models: Models
    loadable: list[str]
    problems: dict[str, str]
    cards: list[checkpoints.Checkpoint]
    broken: list[checkpoints.Broken]

    @property
    def ids(self) -> list[str]:
        return list(self.models)

    @property
    def label_names(self) -> list[str]:
        return self.cards[0].card.label_names if self.cards else []

    @property
    def task(self) -> str:
        return self.cards[0].card.task if self.cards else ""

    @property
    def square(self) -> str:
        """How the task's models make a non-square film square (the dataset entry's rule, from the card)."""
        return self.cards[0].card.dataset.square if self.cards else "crop"

    @property
    def columns(self) -> list[str]:
        """The chosen models, then the ensemble when at least two are chosen, all were tested on the same images and
        all have stored predictions (the ensemble's thresholds come from their stored validation predictions)."""
        splits = {self.checkpoint(i).card.dataset.split_checksum for i in self.ids}
        stored = all(self.checkpoint(i).has_predictions for i in self.ids)
        return [*self.ids, *([ENSEMBLE] if len(self.ids) > 1 and len(splits) == 1 and stored else [])]

    @property
    def stored_columns(self) -> list[str]:
        """The columns with stored val/test predictions (what the ROC page can draw)."""
        return [c for c in self.columns if c == ENSEMBLE or self.checkpoint(c).has_predictions]

    def checkpoint(self, model_id: str) -> checkpoints.Checkpoint:
        return next(c for c in self.cards if c.id == model_id)


def _models_key(dataset: str) -> str:
    return f"models::{dataset}"


def _sidebar_drawn() -> bool:
    """Has app.py drawn the sidebar in this run? (streamlit.testing runs the page alone after its first run.)"""
    ctx = get_script_run_ctx()
    return ctx is not None and "task" in ctx.shared.widget_user_keys_this_run


def selection() -> Selection:
    """The current task and chosen models (the sidebar's widgets). app.py draws the sidebar, so its widgets (the
    uploader's file above all) live across pages; a page run without app.py (streamlit.testing after its first run)
    draws it here."""
    if STARTED not in st.session_state:
        # A deep link (/roc) to a server that has not yet run app.py makes Streamlit run the page file bare, with a
        # sidebar listing the pages/ folder; go through app.py, whose navigation then takes over.
        st.switch_page("app.py")
    dataset = st.session_state["task"] if _sidebar_drawn() else sidebar()
    root = str(checkpoint_root())
    ready = loadable(root, dataset)
    chosen = [i for i in st.session_state.get(_models_key(dataset), ready) if i in ready]
    return Selection(dataset, Path(root), Models(root, dataset, chosen), ready, problems(root, dataset),
                     task_checkpoints(root, dataset), broken_checkpoints(root, dataset))


@st.cache_resource(show_spinner=False)
def tasks(root: str) -> dict[str, str]:
    """Every task with at least one checkpoint under the root, as name -> title: in the registry's order with its
    titles, then any unregistered dataset a card names; the default task when there is no checkpoint at all."""
    present = {c.dataset for c in checkpoints.find(Path(root))} or {data.DEFAULT_DATASET}
    registered = [e.name for e in datasets.entries()]
    names = [n for n in registered if n in present] + sorted(present - set(registered))
    return {n: entry.title if (entry := datasets.find(n)) else n for n in names}


def sidebar() -> str:
    """Task switch (every task with checkpoints; in the URL, so a refresh keeps it), the film being read (on every
    page, so the uploader never forgets it) and model multiselect (default: every loadable model of the task);
    pages read them through :func:`selection`. The user's thresholds are written to the URL too. Returns the task."""
    st.session_state[STARTED] = True
    restore_thresholds()
    with st.sidebar:
        listed = tasks(str(checkpoint_root()))
        if "task" not in st.session_state and st.query_params.get("task") in listed:
            st.session_state["task"] = st.query_params["task"]  # a refresh (a new session) keeps the task
        dataset = st.radio("Task", list(listed), format_func=listed.get, key="task", persist_state="session",
                           index=list(listed).index(st.session_state.get("task", next(iter(listed)))))
        if st.query_params.get("task") != dataset:
            st.query_params["task"] = dataset
        root = str(checkpoint_root())
        ready = loadable(root, dataset)
        film_input(dataset)
        stalled = not_converged(root, dataset)
        st.multiselect("Models", ready, default=[m for m in ready if m not in stalled], key=_models_key(dataset),
                       persist_state="session", format_func=lambda m: f"{m} (did not converge)" if m in stalled else m,
                       help="Models of this task whose weights are shipped. The ensemble is the mean of those chosen. "
                            "A model that did not converge (on held-out figures: see Benchmarks) is not chosen by "
                            "default.")
        if unusable := problems(root, dataset):
            st.caption(f"{len(unusable)} more with a card but no usable weights: see **Models**.")
    return dataset


def header(title: str, intro: str, sel: Selection) -> None:
    """Page title, what the page is for, the research-use notice and the data the models learnt from."""
    st.title(title)
    st.caption(intro)
    trained = "; ".join(dict.fromkeys(cards.training_data(c.card) for c in sel.cards)) or "no model cards found"
    st.markdown(f":material/science: {NOTICE} Models trained on: {trained}.")


# ---- the image being read ------------------------------------------------------------------------------------------

MAX_UPLOAD_MB = 50  # the project's cap, enforced here too: a config file applies only where `streamlit run` is called


def upload_mb() -> int:
    """The upload cap in force: the server's setting, never above the project's."""
    return min(int(st.get_option("server.maxUploadSize")), MAX_UPLOAD_MB)


def upload_limits() -> Limits:
    """The upload size limit, checked again server-side (the browser's check can be bypassed)."""
    return Limits(max_bytes=upload_mb() * 1024 * 1024)


def _set_case(case: Case | None, error: str | None = None) -> None:
    st.session_state[CASE] = case
    st.session_state[UPLOAD_ERROR] = error


def _upload_key() -> str:
    """The uploader's key; a new one empties it (Streamlit cannot clear an uploader otherwise)."""
    n = st.session_state.get(UPLOADS, 0)
    return UPLOAD if n == 0 else f"{UPLOAD}::{n}"


def _on_upload() -> None:
    """Decode a new upload in memory; a refusal keeps no image and leaves a message for the page."""
    file = st.session_state.get(_upload_key())
    st.session_state[PICK] = None
    if file is None:
        _set_case(None)
        return
    try:
        cards = (c.card for c in task_checkpoints(str(checkpoint_root()), st.session_state.get("task", "")))
        _set_case(compare.upload_case(file.getvalue(), file.name, upload_limits(), nih_boxes(),
                                      compare.task_channels(cards)))
    except ImageError as exc:
        _set_case(None, f"{file.name}: {exc}")
    except Exception:  # noqa: BLE001 - whatever a person uploads, the page shows a message, never a traceback
        log.exception("unexpected failure decoding an upload")
        _set_case(None, f"{file.name}: the file could not be read as a chest X-ray image.")


def film_input(dataset: str) -> None:
    """Upload, or (when the dataset is on this machine) pick a test-split image, and the name of the film being
    read. Drawn in the sidebar on every page, so the uploader keeps its file across pages; picking a test-split image
    empties it, so it never names a film that is not the one being read."""
    st.file_uploader(f"Chest X-ray: PNG, JPEG, TIFF, BMP (8/16-bit, grey/RGB/RGBA) or DICOM, up to {upload_mb()} MB",
                     key=_upload_key(), on_change=_on_upload, help="Read in memory only, never written to disk.")
    cks = task_checkpoints(str(checkpoint_root()), dataset)
    trained = cks[0].card.dataset if cks else None
    ds, not_decoded = test_split(dataset, trained.size, trained.extra.get("cache_key")) if trained else (None, None)
    if not_decoded:
        st.caption(f":material/info: No test-split picker: {plain(not_decoded)}")
    if ds is not None:
        names = ds.names

        def pick() -> None:
            index = st.session_state[PICK]
            if index is not None:
                _set_case(compare.test_split_case(ds, index, nih_boxes()))
                st.session_state[UPLOADS] = st.session_state.get(UPLOADS, 0) + 1  # a new, empty uploader

        st.selectbox("…or a test-split image", range(len(names)), index=None, key=PICK, on_change=pick,
                     format_func=lambda i: names[i], placeholder=f"{len(names)} images of {dataset}")
    if (current := case()) is not None:
        st.caption(f":material/radiology: Reading **{plain(current.name)}** ({plain(current.source)})")


def image_input(sel: Selection) -> None:
    """Where a page that reads the film points to the sidebar's uploader, and the message of a refused upload."""
    if st.session_state.get(UPLOAD_ERROR):
        st.error(plain(st.session_state[UPLOAD_ERROR]), icon=":material/block:")
    elif case() is None:
        st.caption(":material/arrow_back: Upload a chest X-ray, or pick a test-split image, in the sidebar.")


def case() -> Case | None:
    return st.session_state.get(CASE)


# ---- cached per-image work (keyed on the image's sha256) -----------------------------------------------------------

@st.cache_data(max_entries=1024, show_spinner=False)
def _predict(sha256: str, root: str, dataset: str, model_id: str, _m: inference.LoadedModel,
             _pixels: np.ndarray) -> np.ndarray:
    with _model_lock():
        return compare.predict_image(_m, _pixels)


def predictions(c: Case, sel: Selection) -> dict[str, np.ndarray]:
    """Each chosen model's probabilities for the case (computed once per image and model, then cached; the first
    image also loads the models)."""
    with st.spinner("Reading the film with each model…", show_time=True):
        return {i: _predict(c.image.sha256, str(sel.root), sel.dataset, i, sel.models[i], c.image.pixels)
                for i in sel.ids}


@st.cache_data(max_entries=1024, show_spinner=False)
def _cam(sha256: str, root: str, dataset: str, model_id: str, label: int, method: str,
         _m: inference.LoadedModel, _pixels: np.ndarray) -> explain.CamResult:
    with _model_lock():
        return explain.cam_map(_m, _m.input_for(_pixels), label, method)


def cam(c: Case, sel: Selection, model_id: str, label: str, method: str) -> explain.CamResult:
    return _cam(c.image.sha256, str(sel.root), sel.dataset, model_id, sel.label_names.index(label), method,
                sel.models[model_id], c.image.pixels)


@st.cache_data(max_entries=256, show_spinner=False)
def _ood(sha256: str, root: str, dataset: str, saturation: float, _pixels: np.ndarray) -> str | None:
    """The gate and the first usable detector among every loadable model of the task (chosen or not); only the
    models whose detector file is accepted are offered (a refused one's model is never loaded), and they load one at
    a time, as the check reaches them."""
    ready = loadable(root, dataset)
    folders = {c.id: c.path for c in task_checkpoints(root, dataset)}
    with_detector = [i for i in ready if detector_usable(folders[i])] or ready[:1]
    models = (m for i in with_detector if (m := model(root, dataset, i)) is not None)
    with _model_lock():
        return compare.ood_warning(models, _pixels, saturation)


def ood(c: Case, sel: Selection) -> str | None:
    return _ood(c.image.sha256, str(sel.root), sel.dataset, c.colour_saturation, c.image.pixels)


@st.cache_data(max_entries=16, show_spinner=False)
def _display_square(sha256: str, square: str, _pixels: np.ndarray) -> np.ndarray:
    return compare.display_square(_pixels, square)


def display_square(c: Case, sel: Selection) -> np.ndarray:
    """The square the task's models see, at display size (CAM panels are drawn on it)."""
    return _display_square(c.image.sha256, sel.square, c.image.pixels)


# ---- thresholds in force (the ROC page sets them, every page uses them) --------------------------------------------

def overrides(dataset: str) -> dict[str, dict[str, float]]:
    """The session's threshold changes for a task: model id -> label -> threshold (mutable, kept all session; call
    :func:`thresholds_changed` after changing it)."""
    return st.session_state.setdefault(THRESHOLDS, {}).setdefault(dataset, {})


def _url_entries(changed: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    return [f"{dataset}|{column}|{label}|{value:.4f}" for dataset, per in sorted(changed.items())
            for column, labels in sorted(per.items()) for label, value in sorted(labels.items())]


def thresholds_changed() -> None:
    """Write the session's thresholds to the URL (``?thr=task|model|label|value``, repeated), so a refresh keeps
    them."""
    entries = _url_entries(st.session_state.get(THRESHOLDS, {}))
    if entries != st.query_params.get_all(URL_THRESHOLDS):
        if entries:
            st.query_params[URL_THRESHOLDS] = entries
        else:
            del st.query_params[URL_THRESHOLDS]


def parse_thresholds(entries: list[str],
                     known: dict[str, tuple[set[str], set[str]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Thresholds from the URL's entries, keeping only known tasks, columns and labels (``known``: task -> (column
    ids, label names)) and values in [0, 1] or NaN (no call): the URL is user input."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for entry in entries:
        parts = entry.split("|")
        if len(parts) != 4 or parts[0] not in known:
            continue
        dataset, column, label, text = parts
        try:
            value = float(text)
        except ValueError:
            continue
        columns, labels = known[dataset]
        if column in columns and label in labels and (np.isnan(value) or 0.0 <= value <= 1.0):
            out.setdefault(dataset, {}).setdefault(column, {})[label] = value
    return out


def restore_thresholds() -> None:
    """A new session (a refresh) starts from the thresholds in its URL; later runs keep the URL in step."""
    if THRESHOLDS not in st.session_state:
        root = str(checkpoint_root())
        known = {}
        for dataset in tasks(root):
            cks = task_checkpoints(root, dataset)
            known[dataset] = ({c.id for c in cks} | {ENSEMBLE}, set(cks[0].card.label_names) if cks else set())
        st.session_state[THRESHOLDS] = parse_thresholds(st.query_params.get_all(URL_THRESHOLDS), known)
    thresholds_changed()


def reset_thresholds(dataset: str, label: str | None = None) -> None:
    """Back to the cards' thresholds for one label (every column), or for every label."""
    changed = overrides(dataset)
    for column in list(changed):
        if label is None:
            changed[column].clear()
        else:
            changed[column].pop(label, None)
        if not changed[column]:
            del changed[column]
    for key in [k for k in st.session_state if str(k).startswith(f"thr::{dataset}::")
                and (label is None or str(k).endswith(f"::{label}"))]:
        del st.session_state[key]  # the ROC sliders start again from the thresholds in force
    thresholds_changed()


def user_thresholds(sel: Selection) -> pd.DataFrame:
    """The thresholds the user set for this task, one row per model and label, beside the card's default."""
    rows = []
    for column, labels in overrides(sel.dataset).items():
        if column not in sel.columns:
            continue
        default = default_points(sel, column)
        for label, value in labels.items():
            if label in sel.label_names:
                rows.append({"model": column, "label": label, "threshold": value,
                             "default": default[sel.label_names.index(label)].value})
    return pd.DataFrame(rows, columns=["model", "label", "threshold", "default"])


def persist(name: str, default: object, options: list | None = None) -> dict:
    """Widget arguments for a page setting that stays put for the whole session, across page switches: its key
    (``SETTINGS`` + name), ``persist_state="session"`` and, on first use or when the kept value is no longer one of
    ``options`` (another task's labels), ``default``. Use as ``st.selectbox("Label", names, **persist("roc.label",
    names[0], names))``, without ``index``/``value``/``default``."""
    key = SETTINGS + name
    kept = st.session_state.get(key)
    valid = options is None or (all(v in options for v in kept) if isinstance(kept, list) else kept in options)
    if key not in st.session_state or not valid:
        st.session_state[key] = default
    return {"key": key, "persist_state": "session"}


@st.cache_resource(show_spinner=False)
def card_predictions(path: Path) -> dict[str, np.ndarray]:
    """A checkpoint's stored val/test predictions, checked against its card (read once per process)."""
    return checkpoints.stored_predictions(path, checkpoints.read_card(path))


@st.cache_resource(show_spinner=False)
def _stored(root: str, dataset: str, column: str, ids: tuple[str, ...]) -> dict[str, np.ndarray]:
    cks = {c.id: c for c in task_checkpoints(root, dataset)}
    if column == ENSEMBLE:
        return compare.ensemble_predictions([card_predictions(cks[i].path) for i in ids])
    return card_predictions(cks[column].path)


def _members(sel: Selection, column: str) -> tuple[str, ...]:
    """What a column's stored predictions depend on beyond its name: the ensemble's members (a cache key)."""
    return tuple(sel.ids) if column == ENSEMBLE else ()


def stored(sel: Selection, column: str) -> dict[str, np.ndarray]:
    """Stored val/test predictions of a chosen model, or of the ensemble of the chosen models."""
    return _stored(str(sel.root), sel.dataset, column, _members(sel, column))


@st.cache_data(max_entries=256, show_spinner=False)
def _default_points(root: str, dataset: str, column: str, ids: tuple[str, ...],
                    task: str) -> list[metrics.OperatingPoint]:
    if column == ENSEMBLE:
        return compare.ensemble_points(_stored(root, dataset, column, ids), task)
    return compare.card_points(next(c.card for c in task_checkpoints(root, dataset) if c.id == column))


def default_points(sel: Selection, column: str) -> list[metrics.OperatingPoint]:
    """A column's operating points before any user change: the card's, or for the live mean Youden J on the mean of
    the chosen models' stored calibrated validation probabilities (none below the evidence rule); cached, as every
    page and every rerun asks."""
    return _default_points(str(sel.root), sel.dataset, column, _members(sel, column), sel.task)


def points(sel: Selection) -> dict[str, list[metrics.OperatingPoint]]:
    """The operating points in force for every column, with their held-out evidence."""
    changed = overrides(sel.dataset)
    out = {}
    for c in sel.columns:
        default = default_points(sel, c)
        if changed.get(c):
            y, p = held_out(stored(sel, c), sel.task)
            default = compare.points_in_force(default, sel.label_names, y, p, changed[c])
        out[c] = default
    return out


def held_out(preds: Mapping[str, np.ndarray], task: str) -> tuple[np.ndarray, np.ndarray]:
    """A column's held-out (labels, calibrated probabilities): out of fold where cross-validated, else validation,
    the images its thresholds were chosen on."""
    return benchmarks.split_arrays(preds, runs.held_out_split(preds), task)


def thresholds(sel: Selection) -> dict[str, np.ndarray]:
    """The thresholds in force for every column (NaN: no call)."""
    return {c: np.array([p.value for p in pts]) for c, pts in points(sel).items()}


def false_calls(sel: Selection, column: str, thresholds: np.ndarray) -> float:
    """Expected false calls per normal film of a column at these thresholds, from its stored held-out predictions
    (NaN when it has none)."""
    if column != ENSEMBLE and not sel.checkpoint(column).has_predictions:
        return float("nan")
    y, p = held_out(stored(sel, column), sel.task)
    return compare.expected_false_calls(y, p, thresholds, sel.task)


def comparison(c: Case, sel: Selection) -> compare.Comparison:
    members = sel.ids if ENSEMBLE in sel.columns else []
    pts = points(sel)
    return compare.compare(predictions(c, sel), {k: [p.value for p in v] for k, v in pts.items()}, sel.label_names,
                           members, pts)


# ---- small layout helpers ------------------------------------------------------------------------------------------

def need_models(sel: Selection) -> None:
    """Stop the page with a clear message when no model can run."""
    if not sel.loadable:
        st.warning(f"No model of {tasks(str(sel.root)).get(sel.dataset, sel.dataset)} has its weights here ({sel.root}). Their cards, and the commands "
                   "that build them, are on the **Models** page.", icon=":material/warning:")
        st.stop()
    if not sel.models:
        st.info("Choose at least one model in the sidebar.", icon=":material/tune:")
        st.stop()


def need_case() -> Case:
    """The image being read, or a pointer to the Compare page and a stop."""
    current = case()
    if current is None:
        st.info("Upload a chest X-ray on the **Compare** page first.", icon=":material/upload:")
        st.stop()
    return current


# 24 colours that read on the dark theme: plotly's Light24 without its three gold-like ones (the ensemble's), and
# three of Alphabet's in their place.
MODEL_PALETTE = [c for c in plotly.colors.qualitative.Light24 if c not in ("#F6F926", "#FF9616", "#B68E00")] + [
    "#3283FE", "#AA0DFE", "#F8A19F"]


def colors(columns: list[str]) -> dict[str, str]:
    """One colour per model, keyed by its place in the zoo, so a model has the same colour on every page whatever
    else is shown; models outside the zoo follow it; the ensemble is always gold."""
    ids = list_models()
    extra = [c for c in columns if c not in ids and c != ENSEMBLE]
    slot = {c: ids.index(c) if c in ids else len(ids) + extra.index(c) for c in columns if c != ENSEMBLE}
    return {c: ENSEMBLE_COLOR if c == ENSEMBLE else MODEL_PALETTE[slot[c] % len(MODEL_PALETTE)] for c in columns}


def translucent(color: str, alpha: float = 0.15) -> str:
    r, g, b = plotly.colors.hex_to_rgb(color)
    return f"rgba({r}, {g}, {b}, {alpha})"


_MARKDOWN_PUNCTUATION = re.compile(r"[!-/:-@\[-`{-~]")  # every ASCII punctuation character
_WORD_JOINER = "\u2060"  # invisible; breaks the 'http://', 'www.' and 'a@b' that Streamlit turns into links


def plain(text: object) -> str:
    """User-supplied text (file names, DICOM fields, messages quoting them) for Streamlit's Markdown (st.caption,
    st.error, st.markdown, image captions, st.table cells), shown literally on one line: every ASCII punctuation
    character becomes a numeric character reference, so no bold, colour, link, icon, emoji or LaTeX syntax acts,
    and an invisible word joiner goes before each ':', '@' and '.', because Streamlit links URLs and e-mail
    addresses found in the text itself."""
    def escape(m: re.Match) -> str:
        return (_WORD_JOINER if m.group() in ":@." else "") + f"&#{ord(m.group())};"
    return _MARKDOWN_PUNCTUATION.sub(escape, " ".join(str(text).split()))


def fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def call_style(comp: compare.Comparison, frame: pd.DataFrame, greyed: bool = False) -> pd.io.formats.style.Styler:
    """Shade probability cells by call (red: positive, green: negative, none: no call, in grey italics) so calls
    read at a glance; ``greyed`` (an out-of-distribution image): every cell grey, no call shown."""
    calls, none = comp.calls, comp.no_call

    def shade(col: pd.Series) -> list[str]:
        if greyed:
            return [NO_CALL_STYLE] * len(col)
        if col.name not in calls:
            return [""] * len(col)
        return [NO_CALL_STYLE if n else f"background-color: {POSITIVE_BG if c else NEGATIVE_BG}; "
                f"font-weight: {700 if c else 400}" for c, n in zip(calls[col.name], none[col.name])]

    return frame.style.apply(shade).format(precision=2, na_rep="")


# ---- stored test predictions per label (ROC page) ------------------------------------------------------------------

@st.cache_data(max_entries=512, show_spinner=False)
def _roc_band(root: str, dataset: str, column: str, ids: tuple[str, ...], label: int, task: str) -> dict[str, list]:
    y, p = benchmarks.split_arrays(_stored(root, dataset, column, ids), "test", task)
    return metrics.roc_band(y[:, label], p[:, label])


def roc_band(sel: Selection, column: str, label: int) -> dict[str, list[float]]:
    """ROC curve with a 95 % bootstrap band of one column and label on the stored test predictions (cached)."""
    return _roc_band(str(sel.root), sel.dataset, column, _members(sel, column), label, sel.task)


@dataclass(frozen=True)
class LabelCurves:
    """What the ROC page draws and measures for one column and label, none of which depends on the thresholds:
    test labels and scores, held-out scores, the presets chosen on a split, the ROC and PR curves and the AUC."""

    y_test: np.ndarray
    p_test: np.ndarray
    p_held_out: np.ndarray
    presets: dict[str, metrics.OperatingPoint]
    roc: dict[str, list[float]]
    pr: dict[str, list[float]]
    auc: float
    auc_ci: tuple[float, float] | None  # 95 % bootstrap over test patients; None below metrics.MIN_POSITIVES

    def auc_text(self) -> str:
        """The test AUC with the evidence behind it, for a legend."""
        why = (f", CI {self.auc_ci[0]:.2f}-{self.auc_ci[1]:.2f}" if self.auc_ci else
               f", {int(self.y_test.sum())} positives: no CI")
        return f"AUC {self.auc:.3f}{why}"


@st.cache_data(max_entries=1024, show_spinner=False)
def _label_curves(root: str, dataset: str, column: str, ids: tuple[str, ...], label: int, task: str,
                  fit_on: str) -> LabelCurves:
    preds = _stored(root, dataset, column, ids)
    held = runs.held_out_split(preds)
    fit_split = held if fit_on == HELD_OUT else fit_on
    (y_test, p_test), (y_fit, p_fit) = (benchmarks.split_arrays(preds, s, task) for s in ("test", fit_split))
    y, p = y_test[:, label], p_test[:, label]
    card_point = _default_points(root, dataset, column, ids, task)[label]
    return LabelCurves(y, p, benchmarks.split_arrays(preds, held, task)[1][:, label],
                       compare.preset_points(y_fit[:, label], p_fit[:, label], card_point,
                                             runs.stored_groups(preds, fit_split)),
                       metrics.roc(y, p), metrics.pr_curve(y, p), float(metrics.auc_per_label(y[:, None], p[:, None])[0]),
                       metrics.label_auc_ci(y, p, runs.stored_groups(preds, "test")))


HELD_OUT = "held_out"  # presets chosen where the card's thresholds were: out of fold, else validation


def label_curves(sel: Selection, column: str, label: int, fit_on: str) -> LabelCurves:
    """One column's curves for one label (presets chosen on ``fit_on``: :data:`HELD_OUT` or ``test``), computed
    once per process."""
    return _label_curves(str(sel.root), sel.dataset, column, _members(sel, column), label, sel.task, fit_on)
