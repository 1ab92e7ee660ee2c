"""Uploaded images: decode and validate raw bytes, then shape them exactly like the training data.

Uploads are decoded from memory (never written to disk) into a full-resolution grayscale uint8 image in display
orientation. Every refusal is an :class:`ImageError` whose message a clinician can read. :func:`to_dataset_size`
repeats the resize that built the ``nih14_local_*.npz`` files, so an upload reaches a model the way training images did.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import pydicom
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")  # only these reach PIL, so no exotic (or Ghostscript-backed) decoder runs
_HIGH_BIT_DEPTHS = {"I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 32, "F": 32}
_METADATA_FIELDS = ("Modality", "ViewPosition", "PhotometricInterpretation", "Rows", "Columns", "BitsStored")
_IDENTIFIER_FIELDS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName", "StudyDate")
_ACCEPTED = "PNG, JPEG, TIFF, BMP or DICOM"


class ImageError(ValueError):
    """A refused upload; str(exc) is a clear one-sentence message for a clinician (no traceback)."""


@dataclass(frozen=True)
class Limits:
    """What an upload may be; the pixel cap is checked from the header so a small file cannot expand into gigabytes."""

    max_bytes: int = 50 * 1024 * 1024
    min_side: int = 64
    max_pixels: int = 60_000_000
    max_aspect: float = 3.0


@dataclass(frozen=True)
class DecodedImage:
    """A decoded upload. Identifiers sit apart from metadata so the app shows them only on request."""

    pixels: np.ndarray  # (H, W) uint8 grayscale, full resolution, display orientation (MONOCHROME1 already inverted)
    format: str  # "PNG", "JPEG", "TIFF", "BMP" or "DICOM"
    original_mode: str  # PIL mode ("L", "I;16", "RGB", ...) or DICOM PhotometricInterpretation
    bit_depth: int  # bits per stored sample (DICOM: BitsStored)
    sha256: str  # of the raw bytes: the app's cache key
    metadata: dict  # non-identifying DICOM fields and the display transform used; {} for ordinary images
    identifiers: dict  # DICOM patient identifiers as strings; {} for ordinary images


def decode(data: bytes, filename: str = "", limits: Limits = Limits()) -> DecodedImage:
    """Decode an upload (DICOM by its ``DICM`` magic or a .dcm name, else PNG/JPEG/TIFF/BMP) or raise ImageError."""
    if not data:
        raise ImageError("The file is empty.")
    if len(data) > limits.max_bytes:
        raise ImageError(f"The file is {_size(len(data))}, over the {_size(limits.max_bytes)} upload limit.")
    is_dicom = data[128:132] == b"DICM" or filename.lower().endswith((".dcm", ".dicom"))
    pixels, fmt, mode, bits, metadata, identifiers = (_decode_dicom if is_dicom else _decode_pil)(data, limits)
    return DecodedImage(pixels, fmt, mode, bits, hashlib.sha256(data).hexdigest(), metadata, identifiers)


def to_dataset_size(pixels: np.ndarray, size: int) -> np.ndarray:
    """(H, W) uint8 -> (size, size) uint8: centre square crop, then PIL bicubic, as the npz datasets were built.

    Bicubic in both directions because that is what reproduces ``nih14_local_64/224.npz`` bit for bit from the
    original 1024 px NIH PNGs; any other filter would feed the models slightly different images than they learnt from.
    """
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(f"expected an (H, W) uint8 array, got {pixels.dtype} {pixels.shape}")
    h, w = pixels.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = pixels[top : top + side, left : left + side]
    if side == size:
        return square.copy()
    return np.array(Image.fromarray(square).resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def to_model_batch(pixels_at_size: np.ndarray) -> torch.Tensor:
    """(size, size) uint8 -> (1, 1, size, size) uint8 tensor, the layout of the dataset tensors fed to preprocess()."""
    if pixels_at_size.ndim != 2 or pixels_at_size.dtype != np.uint8:
        raise ValueError(f"expected an (H, W) uint8 array, got {pixels_at_size.dtype} {pixels_at_size.shape}")
    return torch.from_numpy(np.ascontiguousarray(pixels_at_size))[None, None]


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n:,} bytes"


def _check_geometry(width: int, height: int, limits: Limits) -> None:
    """Refuse from header dimensions alone, before any pixel is decoded."""
    if width * height > limits.max_pixels:
        raise ImageError(
            f"The image has {width}x{height} pixels, more than the {limits.max_pixels:,} allowed, so it was not "
            "opened (decompression-bomb guard)."
        )
    short, long = sorted((width, height))
    if short < limits.min_side:
        raise ImageError(
            f"The image is too small ({width}x{height} pixels); each side needs at least {limits.min_side} pixels."
        )
    if long > limits.max_aspect * short:
        raise ImageError(
            f"The image's aspect ratio ({width}x{height} pixels) is too elongated for a chest X-ray "
            f"(at most {limits.max_aspect:g}:1)."
        )


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map lo..hi linearly onto 0..255 (float32 keeps 16-bit values exact and halves memory on big films)."""
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    v = np.clip(values.astype(np.float32), lo, hi)
    return np.rint((v - np.float32(lo)) * np.float32(255.0 / (hi - lo))).astype(np.uint8)


def _min_max(values: np.ndarray) -> np.ndarray:
    """Stretch the image's own range, so 12-bit data stored in 16 bits is not nearly black."""
    return _scale(values, float(values.min()), float(values.max()))


def _decode_pil(data: bytes, limits: Limits) -> tuple[np.ndarray, str, str, int, dict, dict]:
    try:
        im = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("The image has too many pixels to open safely (decompression-bomb guard).") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"The file is not a supported image ({_ACCEPTED}).") from exc
    with im:
        _check_geometry(*im.size, limits)
        fmt, mode = str(im.format), im.mode
        try:
            frames = getattr(im, "n_frames", 1)
            im.load()  # decodes everything now, so a truncated file fails here (LOAD_TRUNCATED_IMAGES stays off)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(f"The {fmt} file is corrupt or truncated and could not be read.") from exc
        if frames > 1:
            raise ImageError(f"The {fmt} file holds {frames} images; upload a single image.")
        ImageOps.exif_transpose(im, in_place=True)  # phones and some scanners store rotation only in EXIF/TIFF tags
        if mode in _HIGH_BIT_DEPTHS:
            pixels = _min_max(np.asarray(im))
        else:
            # convert("L") is ITU-R 601 luminance and drops alpha: alpha carries no radiographic density, and
            # compositing would alter stored intensities wherever an export tool left pixels semi-transparent.
            pixels = np.array(im.convert("L"), dtype=np.uint8)
    return pixels, fmt, mode, _HIGH_BIT_DEPTHS.get(mode, 1 if mode == "1" else 8), {}, {}


def _first(value: object) -> float:
    return float(value[0] if isinstance(value, MultiValue) else value)


def _decode_dicom(data: bytes, limits: Limits) -> tuple[np.ndarray, str, str, int, dict, dict]:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)  # force: a .dcm without the 128-byte preamble is still DICOM
    except Exception as exc:  # noqa: BLE001 - a damaged header can fail in many ways; all mean the same to the user
        raise ImageError("The file looks like DICOM but its header could not be read.") from exc
    if not ds.get("PixelData") or not ds.get("Rows") or not ds.get("Columns"):
        raise ImageError("The DICOM file holds no image (no pixel data).")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise ImageError(f"The DICOM file holds {frames} frames; upload a single-frame radiograph.")
    _check_geometry(int(ds.Columns), int(ds.Rows), limits)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    arr = _dicom_pixel_array(ds)
    metadata = {k: (int(ds[k].value) if isinstance(ds[k].value, int) else str(ds[k].value))
                for k in _METADATA_FIELDS if ds.get(k) is not None}
    if arr.ndim == 3:  # colour (RGB, or YBR which pydicom has already converted to RGB)
        rgb = arr if arr.dtype == np.uint8 else _min_max(arr)
        pixels = np.array(Image.fromarray(rgb, "RGB").convert("L"), dtype=np.uint8)
        metadata["VOI"] = "min-max"
    elif photometric in ("MONOCHROME1", "MONOCHROME2"):
        pixels, voi = _monochrome(arr, ds)
        metadata.update(voi)
        if photometric == "MONOCHROME1":  # stored with bone dark; invert so it reads like every other film
            pixels = 255 - pixels
    else:
        raise ImageError(f"The DICOM photometric interpretation {photometric or '(missing)'} is not supported.")
    identifiers = {k: str(ds[k].value) for k in _IDENTIFIER_FIELDS if ds.get(k) not in (None, "")}
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0)
    return pixels, "DICOM", photometric, bits, metadata, identifiers


def _dicom_pixel_array(ds: pydicom.Dataset) -> np.ndarray:
    """Decode pixel data, telling a missing decoder package apart from a damaged file."""
    if ds.file_meta.get("TransferSyntaxUID") is None:  # raw dataset without file meta: take what the reader saw
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError as exc:
        raise ImageError(f"The DICOM transfer syntax {syntax.name} ({syntax}) cannot be decoded by this tool.") from exc
    if not available:
        raise ImageError(
            f"The DICOM pixel data uses {syntax.name} ({syntax}), which needs a decoder package that is not "
            "installed (e.g. pylibjpeg with its plugins, or python-gdcm)."
        )
    try:
        return ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise many types; all mean the same to the user
        raise ImageError(f"The DICOM pixel data ({syntax.name}) is damaged and could not be decoded.") from exc


def _monochrome(arr: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, dict]:
    """Modality LUT, then the file's own VOI (window or VOI LUT) if it has one, else the image's min..max, to uint8.

    A window is scaled by its output range, not re-stretched to the image, so pixels outside it stay black or white,
    as on the reporting workstation. Also returns metadata naming the display transform used.
    """
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    has_lut = bool(ds.get("VOILUTSequence"))
    try:
        values = apply_modality_lut(arr, ds)
        if not (has_window or has_lut):
            return _min_max(values), {"VOI": "min-max"}
        bits, signed = int(ds.BitsStored), int(ds.get("PixelRepresentation", 0)) == 1
        stored = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1])
        lo, hi = apply_voi_lut(apply_modality_lut(stored, ds), ds, prefer_lut=False)
        shown = apply_voi_lut(values, ds, prefer_lut=False)
    except (ValueError, KeyError, AttributeError, IndexError, TypeError) as exc:
        raise ImageError("The DICOM file's rescale or display window values are invalid.") from exc
    voi = (dict(VOI="window", WindowCenter=_first(ds.WindowCenter), WindowWidth=_first(ds.WindowWidth))
           if has_window else {"VOI": "VOI LUT"})
    return _scale(shown, float(min(lo, hi)), float(max(lo, hi))), voi
