"""Uploaded images: decode and validate raw bytes, then shape them exactly like the training data.

Uploads are decoded from memory (never written to disk) into a full-resolution grayscale uint8 image in display
orientation. :func:`decode` raises only :class:`ImageError`, whose message a clinician can read, whatever the bytes:
known problems get their own message, anything else is logged and refused by a last-resort guard.

Memory: every path estimates its peak memory from the header (pixels x bytes of each working copy) before it decodes a
pixel and refuses past ``Limits.max_decode_bytes``. Intensities are mapped in row blocks of ``_CHUNK_PIXELS``, so a
float working copy exists only for one block, never for the whole film.

Intensity rule (the same film gives the same model input, whatever it was saved as). Stored values are mapped to 256
equal bins of their significant range, ``out = floor((v - lo) * 256 / span)`` clipped to 0..255:

- 8-bit images: unchanged.
- 16-bit grey PNG/TIFF: the significant bits are the PNG ``sBIT`` chunk when present, else the smallest of
  8/10/12/14/16 bits that holds the image's maximum; ``lo = 0``, ``span = 2**bits``. So a film saved as ``v * 257``
  (16-bit) or ``v * 16`` (12-bit in 16) gives back exactly ``v``. (Without sBIT a 12-bit film whose brightest pixel
  is below 1024 is read as 10-bit: the bit depth cannot be told from the values alone.)
- DICOM with a VOI window (first WindowCenter/WindowWidth, after RescaleSlope/Intercept or a Modality LUT): the
  window's own range as DICOM PS3.3 C.11.2.1.2 defines it (LINEAR: ``lo = c - 0.5 - (w - 1) / 2``, ``span = w - 1``;
  LINEAR_EXACT: ``lo = c - w / 2``, ``span = w``; SIGMOID: ``256 / (1 + exp(-4 (x - c) / w))``); pixels outside
  stay black or white, as on the reporting workstation. A full-range window on 12-bit data gives back ``v`` exactly.
- DICOM with a VOI LUT (and no window): the LUT's output bits (third LUTDescriptor value).
- DICOM without either: BitsStored (and PixelRepresentation) give the stored range; ``lo`` is its minimum,
  ``span = 2**BitsStored``. A negative RescaleSlope inverts; a Modality LUT maps through its output bits.
- 32-bit integer images with negative values or values above 16 bits, and float images: the image's own min..max,
  as they carry no bit depth.

No min-max stretching of data that has a bit depth: a film keeps its brightness whether exported as 8-bit PNG,
16-bit PNG or DICOM, so the models read the same numbers. Non-finite values (a NaN or infinite float pixel, a NaN,
zero or overflowing rescale, a non-finite window) are refused, not drawn as a black film.

DICOM also must be a projection radiograph: a Modality other than CR/DX (or DR/RG) and a lateral or oblique
ViewPosition are refused, since the models read frontal chest films only; missing fields are accepted.

Non-square films follow the rule that built the training data (:func:`to_dataset_size`, ``square="crop"`` for the
NIH and PneumoniaMNIST models: the centre square, then PIL bicubic); :func:`model_region` gives that square in
original-pixel coordinates so the app can draw what the models see.
"""
from __future__ import annotations

import hashlib
import io
import logging
import math
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pydicom
import torch
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import FileDataset
from pydicom.encaps import get_frame
from pydicom.filereader import _read_file_meta_info, read_dataset, read_partial, read_preamble
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.pixels import get_decoder
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian)

PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")  # only these reach PIL, so no exotic (or Ghostscript-backed) decoder runs
_HIGH_BIT_DEPTHS = {"I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 32, "F": 32}
_METADATA_FIELDS = ("Modality", "ViewPosition", "PhotometricInterpretation", "Rows", "Columns", "BitsStored")
_IDENTIFIER_FIELDS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName", "StudyDate")
_ACCEPTED = "PNG, JPEG, TIFF, BMP or DICOM"
_BIT_DEPTHS = (8, 10, 12, 14, 16)  # candidate significant bits of a 16-bit image without sBIT
_CHUNK_PIXELS = 1 << 19  # pixels per block of intensity mapping: float64 working copies stay at a few MB
_CHUNK_BYTES = 32 * _CHUNK_PIXELS  # a few float64 temporaries of one block
_RADIOGRAPH_MODALITIES = {"CR", "DX", "DR", "RG"}  # computed / digital radiography (DR, RG: older or film-digitiser)
_MODALITY_NAMES = {"CT": "a CT", "MR": "an MR", "US": "an ultrasound", "NM": "a nuclear medicine", "PT": "a PET",
                   "MG": "a mammography", "XA": "an angiography", "RF": "a fluoroscopy", "SEG": "a segmentation",
                   "SR": "a structured report", "OT": "an 'other' (OT)", "PX": "a panoramic dental",
                   "IO": "an intra-oral", "OP": "an ophthalmic", "SC": "a secondary capture", "ECG": "an ECG"}
_OBLIQUE_VIEWS = {"LAO", "RAO", "LPO", "RPO", "OBL", "OBLIQUE"}
_MAX_DICOM_ELEMENTS = 20_000  # a real radiograph's header has a few hundred; millions would take minutes and GBs
_DICOM_KEYWORDS = (
    "SpecificCharacterSet", "Modality", "ViewPosition", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel",
    "PhotometricInterpretation", "PlanarConfiguration", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence", "WindowCenter",
    "WindowWidth", "VOILUTFunction", "VOILUTSequence", "PixelData", "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths", "SOPClassUID", *_IDENTIFIER_FIELDS)
_DICOM_TAGS = [Tag(k) for k in _DICOM_KEYWORDS]  # the header fields read; every other element is skipped unparsed
log = logging.getLogger(__name__)


class ImageError(ValueError):
    """A refused upload; str(exc) is a clear one-sentence message for a clinician (no traceback)."""


@dataclass(frozen=True)
class Limits:
    """What an upload may be. Pixels and memory are checked from the header, so a small file cannot expand into
    gigabytes: ``max_decode_bytes`` bounds the estimated peak memory of decoding one upload."""

    max_bytes: int = 50 * 1024 * 1024
    min_side: int = 64
    max_pixels: int = 60_000_000
    max_aspect: float = 3.0
    max_decode_bytes: int = 512 * 1024 * 1024


@dataclass(frozen=True)
class DecodedImage:
    """A decoded upload. Identifiers sit apart from metadata so the app shows them only on request."""

    pixels: np.ndarray  # (H, W) uint8 grayscale, full resolution, display orientation (MONOCHROME1 already inverted)
    format: str  # "PNG", "JPEG", "TIFF", "BMP" or "DICOM"
    original_mode: str  # PIL mode ("L", "I;16", "RGB", ...) or DICOM PhotometricInterpretation
    bit_depth: int  # significant bits per stored sample used for the intensity rule (DICOM: BitsStored)
    sha256: str  # of the raw bytes: the app's cache key
    metadata: dict  # non-identifying DICOM fields and the display transform used; {} for ordinary images
    identifiers: dict  # DICOM patient identifiers as strings; {} for ordinary images


@dataclass(frozen=True)
class Region:
    """A rectangle of the original film, in its pixel coordinates: columns left..left+width, rows top..top+height."""

    left: int
    top: int
    width: int
    height: int


def decode(data: bytes, filename: str = "", limits: Limits = Limits(), rgb: bool = False) -> DecodedImage:
    """Decode an upload (DICOM by its ``DICM`` magic or a .dcm name, else PNG/JPEG/TIFF/BMP) or raise ImageError.

    ``rgb`` keeps colour as (H, W, 3) for tasks on colour images (blood-cell smears); DICOM stays grayscale,
    repeated into three channels."""
    try:
        return _decode(data, filename, limits, rgb)
    except ImageError:
        raise
    except MemoryError as exc:
        raise ImageError("The server ran out of memory decoding this image; try a smaller export of it.") from exc
    except Exception as exc:  # noqa: BLE001 - last-resort guard: whatever the bytes, the caller gets an ImageError
        log.warning("unexpected %s decoding an upload of %d bytes", type(exc).__name__, len(data), exc_info=True)
        raise ImageError("The file could not be read as an image: it is damaged or uses an unusual variant of its "
                         "format.") from exc


def _decode(data: bytes, filename: str, limits: Limits, rgb: bool) -> DecodedImage:
    if not data:
        raise ImageError("The file is empty.")
    if len(data) > limits.max_bytes:
        raise ImageError(f"The file is {_size(len(data))}, over the {_size(limits.max_bytes)} upload limit.")
    is_dicom = data[128:132] == b"DICM" or filename.lower().endswith((".dcm", ".dicom"))
    if is_dicom:
        pixels, fmt, mode, bits, metadata, identifiers = _decode_dicom(data, limits)
        pixels = np.repeat(pixels[..., None], 3, axis=2) if rgb else pixels
    else:
        pixels, fmt, mode, bits, metadata, identifiers = _decode_pil(data, limits, rgb)
    return DecodedImage(pixels, fmt, mode, bits, hashlib.sha256(data).hexdigest(), metadata, identifiers)


SQUARE_RULES = ("crop", "pad")  # how a non-square image becomes square; a dataset entry names one


def model_region(shape: tuple[int, ...], square: str = "crop") -> Region:
    """The part of an (H, W[, C]) film that :func:`to_dataset_size` gives the models, in original-pixel coordinates:
    the centre square for ``crop``, the whole film (centred on zero padding) for ``pad``."""
    if square not in SQUARE_RULES:
        raise ValueError(f"unknown square rule {square!r}; known: {', '.join(SQUARE_RULES)}")
    h, w = shape[:2]
    if square == "pad":
        return Region(0, 0, w, h)
    side = min(h, w)
    return Region((w - side) // 2, (h - side) // 2, side, side)


def to_dataset_size(pixels: np.ndarray, size: int, square: str = "crop") -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 -> (size, size[, 3]) uint8: centre square crop (or zero padding to the long side,
    centred), then PIL bicubic, as the npz datasets and the dataset cache were built.

    Bicubic in both directions because that is what reproduces ``nih14_local_64/224.npz`` bit for bit from the
    original 1024 px NIH PNGs; any other filter would feed the models slightly different images than they learnt from.
    """
    if pixels.dtype != np.uint8 or not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)):
        raise ValueError(f"expected an (H, W) or (H, W, 3) uint8 array, got {pixels.dtype} {pixels.shape}")
    region = model_region(pixels.shape, square)
    if square == "pad":
        h, w = pixels.shape[:2]
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        squared = np.zeros((side, side, *pixels.shape[2:]), np.uint8)
        squared[top : top + h, left : left + w] = pixels
    else:
        side = region.width
        squared = pixels[region.top : region.top + side, region.left : region.left + side]
    if side == size:
        return squared.copy()
    return np.array(Image.fromarray(squared).resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def to_model_batch(pixels_at_size: np.ndarray) -> torch.Tensor:
    """(size, size) or (size, size, 3) uint8 -> (1, C, size, size) uint8 tensor, the layout of the dataset tensors
    fed to preprocess()."""
    rgb = pixels_at_size.ndim == 3 and pixels_at_size.shape[2] == 3
    if not (pixels_at_size.ndim == 2 or rgb) or pixels_at_size.dtype != np.uint8:
        raise ValueError(f"expected an (H, W) or (H, W, 3) uint8 array, got {pixels_at_size.dtype} "
                         f"{pixels_at_size.shape}")
    chw = pixels_at_size.transpose(2, 0, 1) if rgb else pixels_at_size[None]
    return torch.from_numpy(np.ascontiguousarray(chw))[None]


# ---- shared checks and the intensity rule --------------------------------------------------------------------------

def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n:,} bytes"


def _check_geometry(width: int, height: int, limits: Limits) -> None:
    """Refuse from header dimensions alone, before any pixel is decoded."""
    if width <= 0 or height <= 0:
        raise ImageError(f"The image header declares {width}x{height} pixels, which is not an image.")
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


def _check_budget(needed: int, width: int, height: int, limits: Limits) -> None:
    """Refuse before allocating when the estimated peak memory of decoding is over the per-upload budget."""
    if needed > limits.max_decode_bytes:
        raise ImageError(
            f"Decoding this {width}x{height} image would need about {_size(needed)} of memory, over the "
            f"{_size(limits.max_decode_bytes)} allowed per upload."
        )


def _map_blocks(src: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``fn`` (values -> uint8) over row blocks of ``src``, so its float working copies hold one block at a time."""
    out = np.empty(src.shape, np.uint8)
    step = max(1, _CHUNK_PIXELS // max(1, math.prod(src.shape[1:])))
    for r in range(0, src.shape[0], step):
        out[r : r + step] = fn(src[r : r + step])
    return out


def _bins(lo: float, span: float) -> Callable[[np.ndarray], np.ndarray]:
    """The intensity rule: ``floor((v - lo) * 256 / span)`` clipped to 0..255."""
    def to_uint8(v: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # a finite but absurd window overflows to +-inf, which clips to 0 or 255
            return np.clip(np.floor((v.astype(np.float64) - lo) * 256.0 / span), 0, 255).astype(np.uint8)
    return to_uint8


def _sigmoid(center: float, width: float) -> Callable[[np.ndarray], np.ndarray]:
    """DICOM's SIGMOID VOI LUT function, scaled to 256 levels."""
    def to_uint8(v: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            y = 256.0 / (1.0 + np.exp(-4.0 * (v.astype(np.float64) - center) / width))
        return np.clip(np.floor(y), 0, 255).astype(np.uint8)
    return to_uint8


def _bits_holding(value: int) -> int:
    """The smallest of 8/10/12/14/16 bits whose range holds ``value``."""
    return next((b for b in _BIT_DEPTHS if value < 2**b), 16)


def _require_finite(values: np.ndarray, what: str) -> None:
    if values.dtype.kind == "f" and not all(bool(np.isfinite(values[r : r + 1024]).all())
                                            for r in range(0, values.shape[0], 1024)):
        raise ImageError(f"The {what} holds non-numeric pixel values (NaN or infinity), so it cannot be shown "
                         "truthfully.")


def _min_max(values: np.ndarray) -> np.ndarray:
    """The image's own range, for data without a bit depth (floats, signed or 32-bit integers)."""
    lo, hi = float(values.min()), float(values.max())
    return np.zeros(values.shape, np.uint8) if hi <= lo else _map_blocks(values, _bins(lo, hi - lo))


# ---- PNG / JPEG / TIFF / BMP ---------------------------------------------------------------------------------------

_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}  # others: 4 bytes a pixel
_ORIENTATION = 0x0112


def _png_sbit(data: bytes) -> int | None:
    """The grey significant bits of a PNG's sBIT chunk (before the first IDAT), or None."""
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind in (b"IDAT", b"IEND"):
            return None
        if kind == b"sBIT" and length >= 1 and pos + 9 <= len(data):
            return data[pos + 8]
        pos += 12 + length
    return None


def _pil_estimate(im: Image.Image, rgb: bool) -> int:
    """Peak bytes of decoding with PIL: the decoded image (twice for TIFF/JPEG, whose decoders may hold a whole
    RGBA or coefficient buffer), the conversion (array copy, or L/RGB image, its bytes and the array) and the final
    orientation copy."""
    px = im.size[0] * im.size[1]
    mode_bytes = _MODE_BYTES.get(im.mode, 4)
    decoder = mode_bytes + (4 if im.format in ("TIFF", "JPEG") else 0)
    out = 3 if rgb else 1
    convert = 2 * mode_bytes + out if im.mode in _HIGH_BIT_DEPTHS else (4 + 2 * out if rgb else 3)
    return px * (decoder + convert + out) + _CHUNK_BYTES


def _pil_open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=PIL_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("The image has too many pixels to open safely (decompression-bomb guard).") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"The file is not a supported image ({_ACCEPTED}).") from exc
    except ValueError as exc:
        if "MAX_TEXT" in str(exc):
            raise ImageError("The image's text metadata is too large to read safely.") from exc
        raise ImageError("The image header is damaged or uses an unsupported variant of its format.") from exc
    except (OSError, SyntaxError, EOFError, struct.error, TypeError, IndexError, KeyError) as exc:
        raise ImageError("The image header is damaged or uses an unsupported variant of its format.") from exc


def _decode_pil(data: bytes, limits: Limits, rgb: bool = False) -> tuple[np.ndarray, str, str, int, dict, dict]:
    im = _pil_open(data)
    with im:
        fmt, mode = str(im.format), im.mode
        _check_geometry(*im.size, limits)
        _check_budget(_pil_estimate(im, rgb), *im.size, limits)
        try:
            frames = getattr(im, "n_frames", 1)
            im.seek(0)
            im.load()  # decodes everything now, so a truncated file fails here (LOAD_TRUNCATED_IMAGES stays off)
        except ValueError as exc:
            if "MAX_TEXT" in str(exc):
                raise ImageError(f"The {fmt} file's text metadata is too large to read safely.") from exc
            raise ImageError(f"The {fmt} file is corrupt or truncated and could not be read.") from exc
        except (OSError, SyntaxError, EOFError, struct.error, TypeError, IndexError, KeyError) as exc:
            raise ImageError(f"The {fmt} file is corrupt or truncated and could not be read.") from exc
        if frames > 1:
            raise ImageError(f"The {fmt} file holds {frames} images; upload a single image.")
        orientation = _exif_orientation(im)
        pixels, bits = _pil_pixels(im, fmt, mode, rgb, _png_sbit(data) if fmt == "PNG" else None)
    return _orient(pixels, orientation), fmt, mode, bits, {}, {}


def _pil_pixels(im: Image.Image, fmt: str, mode: str, rgb: bool, sbit: int | None) -> tuple[np.ndarray, int]:
    """A loaded PIL image -> uint8 (H, W) or (H, W, 3) by the intensity rule, and the significant bits used."""
    if mode in _HIGH_BIT_DEPTHS:
        values = np.asarray(im)
        _require_finite(values, f"{fmt} image")
        lo, hi = values.min(), values.max()
        if values.dtype.kind == "f" or lo < 0 or hi >= 2**16:
            pixels, bits = _min_max(values), _HIGH_BIT_DEPTHS[mode]
        else:
            bits = max(sbit, _bits_holding(int(hi))) if sbit and 1 <= sbit <= 16 else _bits_holding(int(hi))
            pixels = _map_blocks(values, _bins(0.0, float(2**bits)))
        return (np.repeat(pixels[..., None], 3, axis=2) if rgb else pixels), bits
    target = "RGB" if rgb else "L"
    # convert("L") is ITU-R 601 luminance and drops alpha: alpha carries no radiographic density, and compositing
    # would alter stored intensities wherever an export tool left pixels semi-transparent.
    try:
        converted = im.convert(target)
    except ValueError:  # modes PIL cannot take straight to L (LAB): through RGB, the colours they stand for
        try:
            converted = im.convert("RGB").convert(target)
        except ValueError as exc:
            raise ImageError(f"The {fmt} colour mode {mode} is not supported.") from exc
    return np.array(converted, dtype=np.uint8), 1 if mode == "1" else 8


def _exif_orientation(im: Image.Image) -> int:
    """The EXIF/TIFF Orientation tag (1 when absent or unreadable: then the film is shown as stored)."""
    try:
        value = im.getexif().get(_ORIENTATION, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not refuse a readable image
        log.info("unreadable EXIF orientation; image shown as stored")
        return 1


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation as ImageOps.exif_transpose does, on the uint8 result (1 byte a pixel)."""
    turned = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
              5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
              8: lambda a: np.rot90(a, 1)}[orientation](pixels)
    return pixels if orientation == 1 else np.ascontiguousarray(turned)


# ---- DICOM ---------------------------------------------------------------------------------------------------------

def _first(value: object) -> object:
    return value[0] if isinstance(value, (MultiValue, list, tuple)) and len(value) else value


def _field(ds: pydicom.Dataset, name: str) -> object:
    """A header value (first of several), None when missing or empty; an unreadable value is refused by name."""
    try:
        value = ds.get(name)
        value = value.value if hasattr(value, "value") else value
    except Exception as exc:  # noqa: BLE001 - pydicom converts values lazily and a bad one fails in many ways
        raise ImageError(f"The DICOM {name} value is unreadable.") from exc
    value = _first(value)
    return None if value is None or (isinstance(value, (str, bytes)) and not value.strip()) else value


def _text(value: object, limit: int = 64) -> str:
    """A header string as shown in a message: one line, bounded length."""
    s = " ".join(str(value).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _int_field(ds: pydicom.Dataset, name: str, default: int | None = None) -> int | None:
    value = _field(ds, name)
    if value is None:
        return default
    text = str(value).strip()
    if not re.fullmatch(r"[+-]?\d+", text):
        raise ImageError(f"The DICOM {name} value '{_text(text, 20)}' is not a whole number.")
    return int(text)


def _float_field(ds: pydicom.Dataset, name: str, default: float) -> float:
    value = _field(ds, name)
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ImageError(f"The DICOM {name} value '{_text(value, 20)}' is not a number.") from exc
    if not math.isfinite(number):
        raise ImageError(f"The DICOM {name} is {number}, not a finite number, so the film cannot be shown truthfully.")
    return number


def _read_dicom(data: bytes, limits: Limits) -> pydicom.Dataset:
    """Parse the header (only the fields this module uses, at most _MAX_DICOM_ELEMENTS elements); a deflated
    dataset is inflated here, bounded by the memory budget, instead of by pydicom's unbounded zlib call."""
    count = 0

    def too_many(tag: object, vr: object, length: int) -> bool:
        nonlocal count
        count += 1
        if count > _MAX_DICOM_ELEMENTS:
            raise ImageError(f"The DICOM header has more than {_MAX_DICOM_ELEMENTS:,} elements, so it was not read.")
        return False

    try:
        meta = _file_meta(data)
        if meta is not None and meta[0].get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
            return _read_deflated(data, meta, limits, too_many)
        return read_partial(io.BytesIO(data), stop_when=too_many, force=True, specific_tags=_DICOM_TAGS)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged header can fail in many ways; all mean the same to the user
        raise ImageError("The file looks like DICOM but its header could not be read.") from exc


def _file_meta(data: bytes) -> tuple[pydicom.Dataset, int] | None:
    """The file meta group and where the dataset starts, for files with the DICM preamble."""
    if data[128:132] != b"DICM":
        return None
    fp = io.BytesIO(data)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    return meta, fp.tell()


def _read_deflated(data: bytes, meta: tuple[pydicom.Dataset, int], limits: Limits,
                   stop_when: Callable[[object, object, int], bool]) -> pydicom.Dataset:
    file_meta, start = meta
    cap = limits.max_decode_bytes // 3  # the inflated dataset, its pixel data and the pixel array each hold as much
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(memoryview(data)[start:], cap)
    except zlib.error as exc:
        raise ImageError("The deflated DICOM data is damaged and could not be inflated.") from exc
    if inflater.unconsumed_tail:
        raise ImageError(f"The deflated DICOM file inflates to more than {_size(cap)}, so it was not opened "
                         "(decompression-bomb guard).")
    ds = read_dataset(io.BytesIO(inflated), False, True, stop_when=stop_when, specific_tags=_DICOM_TAGS)
    del inflated
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # the pixel data is native once the dataset is inflated
    return FileDataset("", ds, preamble=data[:128], file_meta=file_meta, is_implicit_VR=False, is_little_endian=True)


@dataclass(frozen=True)
class _Layout:
    rows: int
    cols: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str


def _layout(ds: pydicom.Dataset, limits: Limits) -> _Layout:
    """The pixel layout from the header, validated before any pixel is decoded."""
    if not ds.get("PixelData") or not _field(ds, "Rows") or not _field(ds, "Columns"):
        raise ImageError("The DICOM file holds no image (no pixel data).")
    frames = _int_field(ds, "NumberOfFrames", 1)
    if frames < 1:
        raise ImageError(f"The DICOM NumberOfFrames value {frames} is not a number of images.")
    if frames > 1:
        raise ImageError(f"The DICOM file holds {frames} frames; upload a single-frame radiograph.")
    rows, cols = _int_field(ds, "Rows"), _int_field(ds, "Columns")
    _check_geometry(cols, rows, limits)
    allocated = _int_field(ds, "BitsAllocated")
    if allocated == 1:
        raise ImageError("The DICOM file stores 1 bit a pixel (BitsAllocated 1): a mask or overlay, not a radiograph.")
    if allocated not in (8, 16, 32):
        raise ImageError(f"The DICOM BitsAllocated value {allocated} is not supported (8, 16 or 32).")
    stored = _int_field(ds, "BitsStored", allocated)
    if not 1 <= stored <= allocated:
        raise ImageError(f"The DICOM BitsStored value {stored} does not fit BitsAllocated {allocated}.")
    representation = _int_field(ds, "PixelRepresentation", 0)
    if representation not in (0, 1):
        raise ImageError(f"The DICOM PixelRepresentation value {representation} is not 0 or 1.")
    samples = _int_field(ds, "SamplesPerPixel", 1)
    photometric = _text(_field(ds, "PhotometricInterpretation") or "", 24).upper()
    if photometric in ("MONOCHROME1", "MONOCHROME2") and samples == 1:
        pass
    elif (photometric == "RGB" or photometric.startswith("YBR_")) and samples == 3:
        if allocated != 8:
            raise ImageError(f"Colour DICOM with {allocated}-bit samples is not supported.")
    else:
        raise ImageError(f"The DICOM photometric interpretation {photometric or '(missing)'} with {samples} "
                         "sample(s) a pixel is not supported.")
    return _Layout(rows, cols, samples, allocated, stored, representation == 1, photometric)


def _check_acquisition(ds: pydicom.Dataset) -> None:
    """Only projection radiographs taken from the front reach the models; missing fields are accepted."""
    modality = _text(_field(ds, "Modality") or "", 16).upper()
    if modality and modality not in _RADIOGRAPH_MODALITIES:
        kind = _MODALITY_NAMES.get(modality, f"a '{modality}'")
        raise ImageError(f"The DICOM file is {kind} image (Modality {modality}); the models read chest radiographs "
                         "only (CR or DX).")
    view = _text(_field(ds, "ViewPosition") or "", 24).upper()
    lateral = ("LAT" in view and "DECUB" not in view) or view in ("LL", "RL")
    if lateral or view in _OBLIQUE_VIEWS:
        raise ImageError(f"The DICOM file is {'a lateral' if lateral else 'an oblique'} view (ViewPosition {view}); the "
                         "models read frontal (PA or AP) chest films only.")


def _decode_dicom(data: bytes, limits: Limits) -> tuple[np.ndarray, str, str, int, dict, dict]:
    ds = _read_dicom(data, limits)
    layout = _layout(ds, limits)
    _check_acquisition(ds)
    transform = _intensity(ds, layout)  # header values are checked before any pixel is decoded
    syntax = _syntax(ds)
    px = layout.rows * layout.cols
    stored_bytes = px * layout.samples * layout.bits_allocated // 8
    compressed = ds["PixelData"].is_undefined_length or syntax.is_compressed
    if compressed:
        _check_frame_size(ds, syntax, layout)
    # the pixel data element, the decoded array (and for compressed data the decoder's own image and copy), pydicom's
    # float32 colour conversion, the uint8 result and its inversion, one block of float working copies
    needed = (len(ds.PixelData) + stored_bytes * (3 if compressed else 1) + (16 * px if layout.samples == 3 else 0)
              + 2 * px + _CHUNK_BYTES)
    _check_budget(needed, layout.cols, layout.rows, limits)
    arr = _dicom_pixel_array(ds, syntax)
    del ds.PixelData  # the array holds the pixels now
    if arr.shape[:2] != (layout.rows, layout.cols):
        raise ImageError("The DICOM pixel data does not match the image size in its header.")
    metadata = {k: (int(ds[k].value) if isinstance(ds[k].value, int) else _text(ds[k].value))
                for k in _METADATA_FIELDS if _field(ds, k) is not None}
    if layout.samples == 3:  # colour (RGB, or YBR which pydicom has already converted to RGB)
        pixels = np.array(Image.fromarray(np.ascontiguousarray(arr, np.uint8), "RGB").convert("L"), dtype=np.uint8)
        metadata["VOI"] = "colour to luminance"
    else:
        pixels = _map_blocks(arr, transform.fn)
        metadata.update(transform.metadata)
        if layout.photometric == "MONOCHROME1":  # stored with bone dark; invert so it reads like every other film
            np.subtract(255, pixels, out=pixels)
    identifiers = {k: _text(ds[k].value, 200) for k in _IDENTIFIER_FIELDS if _field(ds, k) is not None}
    return pixels, "DICOM", layout.photometric, layout.bits_stored, metadata, identifiers


def _syntax(ds: pydicom.Dataset) -> pydicom.uid.UID:
    """The transfer syntax, telling a missing decoder package apart from an unknown syntax."""
    if ds.file_meta.get("TransferSyntaxUID") is None:  # raw dataset without file meta: take what the reader saw
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError as exc:
        raise ImageError(f"The DICOM transfer syntax {_text(syntax.name)} ({_text(syntax)}) cannot be decoded by "
                         "this tool.") from exc
    if not available:
        raise ImageError(
            f"The DICOM pixel data uses {syntax.name} ({syntax}), which needs a decoder package that is not "
            "installed (e.g. pylibjpeg with its plugins, or python-gdcm)."
        )
    return syntax


def _check_frame_size(ds: pydicom.Dataset, syntax: pydicom.uid.UID, layout: _Layout) -> None:
    """A JPEG / JPEG 2000 frame must be the size the header declares: its decoder allocates what the codestream says,
    so a small declared image could otherwise hide a huge one."""
    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    except Exception as exc:  # noqa: BLE001 - malformed encapsulation fails in many ways
        raise ImageError(f"The DICOM pixel data ({syntax.name}) is damaged and could not be decoded.") from exc
    if syntax.name.startswith("RLE"):
        return  # pydicom's RLE decoder fills the declared size and no more
    try:
        with Image.open(io.BytesIO(frame), formats=("JPEG", "JPEG2000")) as im:
            size = im.size
    except Exception as exc:  # noqa: BLE001 - an unreadable codestream header
        raise ImageError(f"The DICOM pixel data ({syntax.name}) is damaged and could not be decoded.") from exc
    if size != (layout.cols, layout.rows):
        raise ImageError(f"The DICOM pixel data ({syntax.name}) is {size[0]}x{size[1]} pixels, but the header says "
                         f"{layout.cols}x{layout.rows}.")


def _dicom_pixel_array(ds: pydicom.Dataset, syntax: pydicom.uid.UID) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise many types; all mean the same to the user
        raise ImageError(f"The DICOM pixel data ({syntax.name}) is damaged and could not be decoded.") from exc


@dataclass(frozen=True)
class _Transform:
    fn: Callable[[np.ndarray], np.ndarray]  # stored values (a block) -> uint8
    metadata: dict  # names the display transform used


def _intensity(ds: pydicom.Dataset, layout: _Layout) -> _Transform:
    """The intensity rule for a monochrome DICOM (module docstring), with every header number checked finite."""
    b = layout.bits_stored
    smin, smax = (-(2 ** (b - 1)), 2 ** (b - 1) - 1) if layout.signed else (0, 2**b - 1)
    slope, intercept = _float_field(ds, "RescaleSlope", 1.0), _float_field(ds, "RescaleIntercept", 0.0)
    modality_lut = _lut(ds, "ModalityLUTSequence", layout.signed)
    if modality_lut is None:
        if slope == 0:
            raise ImageError("The DICOM RescaleSlope is 0, which would make every pixel the same.")
        if not all(math.isfinite(slope * s + intercept) for s in (smin, smax)):
            raise ImageError("The DICOM RescaleSlope and RescaleIntercept overflow the pixel range.")

    def modality(v: np.ndarray) -> np.ndarray:
        return modality_lut.apply(v) if modality_lut is not None else v * slope + intercept

    if _field(ds, "WindowCenter") is not None and _field(ds, "WindowWidth") is not None:
        center, width = _float_field(ds, "WindowCenter", 0.0), _float_field(ds, "WindowWidth", 0.0)
        function = _text(_field(ds, "VOILUTFunction") or "LINEAR", 16).upper()
        if function == "LINEAR_EXACT" and width > 0:
            to_uint8 = _bins(center - width / 2, width)
        elif function == "SIGMOID" and width > 0:
            to_uint8 = _sigmoid(center, width)
        elif function == "LINEAR" and width > 1:
            to_uint8 = _bins(center - 0.5 - (width - 1) / 2, width - 1)
        elif function in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            raise ImageError(f"The DICOM WindowWidth {width:g} is too small for a {function} window.")
        else:
            raise ImageError(f"The DICOM VOI LUT function {function} is not supported.")
        return _Transform(lambda v: to_uint8(modality(v)),
                          dict(VOI="window", WindowCenter=center, WindowWidth=width))
    voi_lut = _lut(ds, "VOILUTSequence", layout.signed)
    if voi_lut is not None:
        to_uint8 = _bins(0.0, float(2**voi_lut.bits))
        return _Transform(lambda v: to_uint8(voi_lut.apply(modality(v))), {"VOI": "VOI LUT"})
    if modality_lut is not None:
        to_uint8 = _bins(0.0, float(2**modality_lut.bits))
        return _Transform(lambda v: to_uint8(modality_lut.apply(v)), {"VOI": f"Modality LUT ({modality_lut.bits} bits)"})
    to_uint8 = _bins(float(smin), float(smax - smin + 1))  # on stored values: a positive rescale keeps their order
    return _Transform((lambda v: 255 - to_uint8(v)) if slope < 0 else to_uint8, {"VOI": f"{b}-bit range"})


@dataclass(frozen=True)
class _Lut:
    """A DICOM lookup table (PS3.3 C.11.1.1): values below ``first`` take the first entry, above the last the last."""

    table: np.ndarray  # uint16 entries
    first: int  # the input value mapped to the first entry
    bits: int  # output bits (third LUTDescriptor value)

    def apply(self, v: np.ndarray) -> np.ndarray:
        index = np.clip(np.rint(v) - self.first, 0, len(self.table) - 1).astype(np.intp)
        return self.table[index]


def _lut(ds: pydicom.Dataset, sequence: str, signed_input: bool) -> _Lut | None:
    """The first LUT of a Modality / VOI LUT sequence, checked, or None when there is none."""
    try:
        items = ds.get(sequence)
        if not items:
            return None
        item = items[0]
        entries, first, bits = (int(x) for x in item.LUTDescriptor[:3])
        data = item.LUTData
    except Exception as exc:  # noqa: BLE001 - a malformed sequence fails in many ways
        raise ImageError(f"The DICOM {sequence} is invalid.") from exc
    if not 8 <= bits <= 16:
        raise ImageError(f"The DICOM {sequence} declares {bits}-bit output, not 8 to 16.")
    entries = entries or 65536  # PS3.3: 0 entries means 2**16
    first = first - 65536 if signed_input and first > 32767 else first  # the descriptor's US/SS ambiguity
    if isinstance(data, bytes):
        table = np.frombuffer(data, np.uint8 if len(data) < 2 * entries else "<u2")
    else:
        table = np.asarray(data if isinstance(data, (list, MultiValue)) else [data], np.int64)
    if len(table) < entries or table.min() < 0 or table.max() >= 2**bits:
        raise ImageError(f"The DICOM {sequence} data do not match its descriptor.")
    return _Lut(table[:entries].astype(np.uint16), first, bits)
