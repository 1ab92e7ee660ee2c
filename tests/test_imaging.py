"""Uploads decode to the image a clinician expects, reach the models exactly as training images did, and bad ones are
refused with a readable reason."""
from __future__ import annotations

import csv
import hashlib
import io
import struct
import zlib

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo
from helpers import dicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1

from cxrcore.imaging import (DecodedImage, ImageError, Limits, Region, decode, model_region, to_dataset_size,
                             to_model_batch)


# ---- builders ------------------------------------------------------------------------------------------------------

def encode(image: Image.Image | np.ndarray, fmt: str, **save_kw) -> bytes:
    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    im.save(buf, fmt, **save_kw)
    return buf.getvalue()


def gradient(h: int = 96, w: int = 128) -> np.ndarray:
    """uint8 image spanning exactly 0..255, so min-max scaling leaves it unchanged."""
    g = np.add.outer(np.arange(h), np.arange(w)).astype(np.float64)
    return np.rint(g * 255 / g.max()).astype(np.uint8)


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def png_header_only(width: int, height: int) -> bytes:
    """A few-hundred-byte PNG whose header claims width x height 1-bit pixels: a decompression bomb's calling card."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def multipage_tiff() -> bytes:
    frames = [Image.fromarray(gradient()), Image.fromarray(255 - gradient())]
    return encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])


# ---- real data -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample_names(data_dir) -> list[str]:
    with open(data_dir / "samples" / "labels.csv", newline="") as f:
        return [row["Image Index"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def nih_test(data_dir) -> dict[int, dict[str, np.ndarray]]:
    """Test-split images and names of the local NIH npz files, per size."""
    out = {}
    for size in (64, 224):
        with np.load(data_dir / f"nih14_local_{size}.npz", allow_pickle=False) as z:
            out[size] = {"images": z["test_images"], "names": z["test_names"]}
    return out


def test_real_sample_png_decodes_at_full_resolution(data_dir, sample_names):
    data = (data_dir / "samples" / sample_names[0]).read_bytes()
    img = decode(data, sample_names[0])
    assert isinstance(img, DecodedImage)
    assert img.pixels.shape == (1024, 1024) and img.pixels.dtype == np.uint8
    assert (img.format, img.original_mode, img.bit_depth) == ("PNG", "L", 8)
    assert img.sha256 == hashlib.sha256(data).hexdigest()
    assert img.metadata == {} and img.identifiers == {}
    np.testing.assert_array_equal(img.pixels, np.asarray(Image.open(io.BytesIO(data))))


@pytest.mark.parametrize("size", [64, 224])
def test_real_uploads_reproduce_the_dataset_images_exactly(data_dir, sample_names, nih_test, size):
    """The original NIH PNGs, uploaded, become bit for bit the images the models were trained and tested on."""
    names = list(nih_test[size]["names"])
    for name in sample_names:
        pixels = decode((data_dir / "samples" / name).read_bytes(), name).pixels
        np.testing.assert_array_equal(to_dataset_size(pixels, size), nih_test[size]["images"][names.index(name)],
                                      err_msg=name)


@pytest.mark.parametrize("i", [0, 1, 157, 314])
def test_dataset_image_round_trips_through_png(nih_test, i):
    images = nih_test[64]["images"]
    img = decode(encode(images[i], "PNG"), "x.png")
    at_size = to_dataset_size(img.pixels, 64)
    np.testing.assert_array_equal(at_size, images[i])
    batch = to_model_batch(at_size)
    assert batch.dtype == torch.uint8 and batch.shape == (1, 1, 64, 64) and batch.is_contiguous()
    assert torch.equal(batch, torch.from_numpy(images[i : i + 1, None]))


# ---- ordinary image formats ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize(("scale", "bits"), [(257, 16), (16, 12), (4, 10), (1, 8)])
def test_16_bit_images_map_their_bit_depth_not_their_own_range(fmt, scale, bits):
    """v * 257 (16-bit), v * 16 (12-bit), v * 4 (10-bit) and v (8-bit data in 16) all give back v, even when v
    does not span 0..255: the scale comes from the bit depth, not from the image's min and max."""
    v = gradient() // 2 + 60  # 60..187: a min-max stretch would change every value
    img = decode(encode(Image.fromarray(v.astype(np.uint16) * scale), fmt), f"x.{fmt.lower()}")
    assert (img.format, img.original_mode, img.bit_depth) == (fmt, "I;16", bits)
    np.testing.assert_array_equal(img.pixels, v)


def test_png_sbit_gives_the_bit_depth_of_a_dark_film():
    """Without sBIT a 12-bit film whose brightest pixel is 1000 reads as 10-bit; with sBIT 12 it reads as 12-bit."""
    v = (gradient() // 4).astype(np.uint16)  # 0..63
    info = PngInfo()
    info.add(b"sBIT", bytes([12]))
    with_sbit = decode(encode(Image.fromarray(v * 16), "PNG", pnginfo=info))
    assert with_sbit.bit_depth == 12
    np.testing.assert_array_equal(with_sbit.pixels, v)
    without = decode(encode(Image.fromarray(v * 16), "PNG"))
    assert without.bit_depth == 10
    np.testing.assert_array_equal(without.pixels, v * 4)


@pytest.mark.parametrize(
    ("mode", "fmt", "bit_depth"),
    [("L", "PNG", 8), ("RGB", "PNG", 8), ("RGBA", "PNG", 8), ("LA", "PNG", 8), ("L", "BMP", 8), ("RGB", "BMP", 8),
     ("L", "TIFF", 8), ("I", "TIFF", 32), ("F", "TIFF", 32)],
)
def test_modes_and_formats_decode_to_the_same_grayscale(mode, fmt, bit_depth):
    """Gray stored as colour, with alpha (dropped), or as 32-bit values comes back as the same uint8 image."""
    g = gradient()
    alpha = Image.fromarray(noise(*g.shape))  # any alpha: it is dropped, not composited
    im = {"L": lambda: Image.fromarray(g), "RGB": lambda: Image.fromarray(np.dstack([g, g, g])),
          "RGBA": lambda: Image.merge("RGBA", [Image.fromarray(g)] * 3 + [alpha]),
          "LA": lambda: Image.merge("LA", [Image.fromarray(g), alpha]),
          "I": lambda: Image.fromarray(g.astype(np.int32) * 1000 - 5000),
          "F": lambda: Image.fromarray(g.astype(np.float32) / 7.0)}[mode]()
    img = decode(encode(im, fmt), f"x.{fmt.lower()}")
    assert (img.format, img.original_mode, img.bit_depth) == (fmt, mode, bit_depth)
    np.testing.assert_array_equal(img.pixels, g)


def test_colour_becomes_luminance():
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    assert np.all(decode(encode(rgb, "PNG")).pixels == 76)  # ITU-R 601: 0.299 * 255


def test_jpeg_decodes_close_to_source():
    g = gradient()
    img = decode(encode(g, "JPEG", quality=95), "x.jpg")
    assert (img.format, img.original_mode, img.pixels.shape) == ("JPEG", "L", g.shape)
    assert np.abs(img.pixels.astype(int) - g).mean() < 2


def test_jpeg_exif_orientation_is_applied():
    g = gradient(64, 128)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    img = decode(encode(g, "JPEG", quality=95, exif=exif.tobytes()), "phone.jpg")
    assert img.pixels.shape == (128, 64)
    expected = np.rot90(g, k=-1)
    assert np.abs(img.pixels.astype(int) - expected).mean() < 2


# ---- model-size helpers --------------------------------------------------------------------------------------------

def test_to_dataset_size_crops_the_centre_square_and_resizes():
    centre = gradient(64, 64)
    wide = np.full((64, 192), 255, np.uint8)
    wide[:, 64:128] = centre
    out = to_dataset_size(wide, 64)
    np.testing.assert_array_equal(out, centre)
    assert not np.shares_memory(out, wide)
    np.testing.assert_array_equal(to_dataset_size(wide.T.copy(), 64), centre.T)
    for size in (32, 128):  # down and up
        out = to_dataset_size(wide, size)
        assert out.shape == (size, size) and out.dtype == np.uint8
    with pytest.raises(ValueError):
        to_dataset_size(np.zeros((64, 64), np.float32), 64)


# ---- DICOM ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample_12bit(data_dir, sample_names) -> np.ndarray:
    """A real radiograph at 256 px as 12-bit values, the way a DX detector stores it."""
    pixels = decode((data_dir / "samples" / sample_names[0]).read_bytes()).pixels
    return to_dataset_size(pixels, 256).astype(np.uint16) * 16


@pytest.mark.parametrize(("file_meta", "filename"), [(True, ""), (True, "scan.dcm"), (False, "scan.dcm")])
def test_dicom_from_real_sample_decodes_and_keeps_identifiers_apart(sample_12bit, file_meta, filename):
    data = dicom(sample_12bit, file_meta=file_meta)
    assert (data[128:132] == b"DICM") is file_meta
    img = decode(data, filename)
    assert (img.format, img.original_mode, img.bit_depth) == ("DICOM", "MONOCHROME2", 12)
    np.testing.assert_array_equal(img.pixels, sample_12bit // 16)  # 12-bit range, not the film's own min..max
    assert img.identifiers == {"PatientName": "Doe^Jane", "PatientID": "PID-0042", "PatientBirthDate": "19600101",
                               "AccessionNumber": "ACC-7", "InstitutionName": "General Hospital",
                               "StudyDate": "20240102"}
    assert img.metadata == {"Modality": "DX", "ViewPosition": "PA", "PhotometricInterpretation": "MONOCHROME2",
                            "Rows": 256, "Columns": 256, "BitsStored": 12, "VOI": "12-bit range"}


def test_dicom_monochrome1_is_inverted(sample_12bit):
    mono2 = decode(dicom(sample_12bit, photometric="MONOCHROME2")).pixels
    mono1 = decode(dicom(sample_12bit, photometric="MONOCHROME1"))
    assert mono1.original_mode == "MONOCHROME1"
    np.testing.assert_array_equal(mono1.pixels, 255 - mono2)


@pytest.mark.parametrize(("slope", "intercept"), [(1, 0), (2, -1000)])
def test_dicom_window_is_applied(slope, intercept):
    stored = (np.arange(128 * 128).reshape(128, 128) % 4096).astype(np.uint16)
    center, width = 1500.0, 1001.0  # in output (rescaled) units
    img = decode(dicom(stored, WindowCenter=center, WindowWidth=width, RescaleSlope=slope,
                       RescaleIntercept=intercept))
    assert img.metadata["VOI"] == "window"
    assert (img.metadata["WindowCenter"], img.metadata["WindowWidth"]) == (center, width)
    value = stored.astype(np.float64) * slope + intercept
    px = img.pixels.astype(int)
    assert np.all(px[value <= center - width / 2] == 0) and np.all(px[value >= center + width / 2] == 255)
    inside = np.abs(value - center) < width / 2
    linear = np.clip((value - (center - 0.5)) / (width - 1) + 0.5, 0, 1) * 255  # DICOM PS3.3 C.11.2.1.2.1
    assert np.abs(px[inside] - linear[inside]).max() <= 1
    assert (px == 0).any() and (px == 255).any() and inside.any()  # the window really cuts the range


def test_dicom_voi_lut_sequence_is_applied():
    stored = (np.arange(128 * 128).reshape(128, 128) % 4096).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]  # 4096 entries from stored value 0, 16-bit output
    lut = (np.sqrt(np.arange(4096) / 4095) * 65535).round().astype(np.uint16)  # a gamma curve
    item.LUTData = lut.astype("<u2").tobytes()
    img = decode(dicom(stored, VOILUTSequence=[item]))
    assert img.metadata["VOI"] == "VOI LUT"
    np.testing.assert_array_equal(img.pixels, (lut[stored] >> 8).astype(np.uint8))  # 16-bit output in 256 bins


def test_dicom_multi_frame_is_refused():
    frames = np.zeros((2, 64, 64), np.uint16)
    with pytest.raises(ImageError, match="2 frames"):
        decode(dicom(frames))


@pytest.mark.parametrize(
    ("syntax", "match"),
    [(JPEGLosslessSV1, r"JPEG Lossless.*decoder package"),  # no decoder here for the commonest CR/DX compression
     (JPEG2000Lossless, r"JPEG 2000.*damaged")],  # decoder present (Pillow), junk data
)
def test_dicom_compressed_pixel_data_refusals_name_the_transfer_syntax(syntax, match):
    data = dicom(np.zeros((64, 64), np.uint16), syntax=syntax, pixel_data=encapsulate([b"\xff\x4f" + b"\0" * 98]))
    with pytest.raises(ImageError, match=match):
        decode(data)


# ---- refusals ------------------------------------------------------------------------------------------------------

def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


REFUSALS = {
    "empty": (lambda: b"", {}, "empty"),
    "random bytes": (lambda: np.random.default_rng(1).bytes(5000), {}, "not a supported image"),
    "text file": (lambda: b"Patient doing well, chest clear.\n" * 50, {}, "not a supported image"),
    "truncated PNG": (lambda: half(encode(noise(256, 256), "PNG")), {}, "PNG file is corrupt or truncated"),
    "truncated JPEG": (lambda: half(encode(noise(256, 256), "JPEG")), {}, "JPEG file is corrupt or truncated"),
    "tiny": (lambda: encode(noise(20, 20), "PNG"), {}, "too small"),
    "aspect": (lambda: encode(noise(100, 1000), "PNG"), {}, "aspect ratio"),
    "bomb header": (lambda: png_header_only(100_000, 100_000), {}, "decompression-bomb guard"),
    "bomb limit": (lambda: encode(noise(64, 64), "PNG"), {"limits": Limits(max_pixels=1000)},
                   "decompression-bomb guard"),
    "over size": (lambda: encode(noise(64, 64), "PNG"), {"limits": Limits(max_bytes=10)}, "upload limit"),
    "multi-page TIFF": (multipage_tiff, {}, "single image"),
    "DICOM tiny": (lambda: dicom(np.zeros((20, 20), np.uint16)), {}, "too small"),
    "DICOM without pixels": (lambda: dicom(np.zeros((64, 64), np.uint16), pixel_data=b""), {}, "no image"),
    "DICOM truncated": (lambda: dicom(np.zeros((64, 64), np.uint16))[:-100], {}, "damaged"),
}


@pytest.mark.parametrize(("build", "kwargs", "match"), REFUSALS.values(), ids=REFUSALS.keys())
def test_bad_uploads_are_refused_with_a_clear_message(build, kwargs, match):
    with pytest.raises(ImageError, match=match) as info:
        decode(build(), **kwargs)
    message = str(info.value)
    assert message.endswith(".") and "\n" not in message and "Traceback" not in message


# ---- same film, same answer ----------------------------------------------------------------------------------------

def deflated(data: bytes) -> bytes:
    """The same DICOM with its dataset deflated (Deflated Explicit VR Little Endian)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def sbit(bits: int) -> PngInfo:
    info = PngInfo()
    info.add(b"sBIT", bytes([bits]))
    return info


@pytest.fixture(scope="module")
def sample_film(data_dir, sample_names) -> np.ndarray:
    """A real NIH film at full resolution, as its 8-bit PNG decodes."""
    return decode((data_dir / "samples" / sample_names[1]).read_bytes()).pixels


def exports(v: np.ndarray) -> dict[str, bytes]:
    """One film saved the ways a radiology system exports it."""
    v16 = v.astype(np.uint16)
    return {
        "8-bit PNG": encode(v, "PNG"),
        "16-bit PNG (v*257)": encode(Image.fromarray(v16 * 257), "PNG"),
        "12-bit in 16-bit PNG (v*16)": encode(Image.fromarray(v16 * 16), "PNG"),
        "12-bit PNG with sBIT": encode(Image.fromarray(v16 * 16), "PNG", pnginfo=sbit(12)),
        "16-bit TIFF": encode(Image.fromarray(v16 * 257), "TIFF"),
        "DICOM 12-bit, no window": dicom(v16 * 16),
        "DICOM 12-bit, full-range window": dicom(v16 * 16, WindowCenter=2048, WindowWidth=4096),
        "DICOM 16-bit, full-range window": dicom(v16 * 257, bits_stored=16, WindowCenter=32768, WindowWidth=65536),
        "DICOM 12-bit, rescaled, full-range window": dicom(v16 * 16, RescaleSlope=2, RescaleIntercept=-1000,
                                                           WindowCenter=3096, WindowWidth=8192),
        "DICOM 8-bit, no window": dicom(v16, bits_stored=8),
        "deflated DICOM, full-range window": deflated(dicom(v16 * 16, WindowCenter=2048, WindowWidth=4096)),
    }


def test_same_film_gives_the_same_model_input_whatever_it_was_saved_as(sample_film):
    """A real NIH film as 8-bit PNG, 16-bit PNG/TIFF and DICOM (with or without a window) decodes to the same pixels
    and the same 64 px model input, exactly."""
    expected = to_dataset_size(sample_film, 64)
    for name, data in exports(sample_film).items():
        img = decode(data, "film.dcm" if "DICOM" in name else "film.png")
        np.testing.assert_array_equal(img.pixels, sample_film, err_msg=name)
        np.testing.assert_array_equal(to_dataset_size(img.pixels, 64), expected, err_msg=name)


def test_a_dark_film_is_not_stretched(sample_film):
    """A film using only part of its range keeps its brightness (min-max stretching used to brighten it)."""
    dark = (sample_film // 2).astype(np.uint8)
    for name, data in exports(dark).items():
        if "PNG (v*16)" in name or name == "16-bit PNG (v*257)":
            continue  # without sBIT or a header, a 16-bit PNG's depth comes from its maximum (module docstring)
        np.testing.assert_array_equal(decode(data, "x.dcm" if "DICOM" in name else "x.png").pixels, dark,
                                      err_msg=name)


def test_dicom_window_functions_follow_ps3_3():
    stored = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (128, 1))
    exact = decode(dicom(stored, WindowCenter=2048, WindowWidth=4096, VOILUTFunction="LINEAR_EXACT")).pixels
    np.testing.assert_array_equal(exact, (stored.astype(int) * 256 // 4096).astype(np.uint8))
    sigmoid = decode(dicom(stored, WindowCenter=2048, WindowWidth=1024, VOILUTFunction="SIGMOID")).pixels[0]
    assert sigmoid[0] == 0 and sigmoid[-1] == 255 and sigmoid[128] == 128 and np.all(np.diff(sigmoid.astype(int)) >= 0)


def test_negative_rescale_slope_inverts():
    stored = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (128, 1))
    img = decode(dicom(stored, RescaleSlope=-1, RescaleIntercept=4095))
    np.testing.assert_array_equal(img.pixels, 255 - (stored >> 4).astype(np.uint8))


# ---- refusals of values that cannot be shown truthfully, and of films the models do not read ----------------------

@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_float_pixels_are_refused(value):
    f = gradient().astype(np.float32)
    f[5, 7] = value
    with pytest.raises(ImageError, match="NaN or infinity"):
        decode(encode(Image.fromarray(f), "TIFF"), "x.tif")


@pytest.mark.parametrize(("attrs", "match"), [
    ({"RescaleSlope": "NaN"}, "RescaleSlope is nan"), ({"RescaleSlope": "inf"}, "RescaleSlope is inf"),
    ({"RescaleSlope": "0"}, "RescaleSlope is 0"), ({"RescaleSlope": "1e308"}, "overflow"),
    ({"RescaleIntercept": "NaN"}, "RescaleIntercept is nan"), ({"WindowCenter": "NaN", "WindowWidth": "400"}, "nan"),
    ({"WindowCenter": "40", "WindowWidth": "inf"}, "inf"), ({"WindowCenter": "40", "WindowWidth": "0"}, "too small"),
])
def test_non_finite_or_degenerate_dicom_values_are_refused(attrs, match):
    ds = pydicom.dcmread(io.BytesIO(dicom(gradient().astype(np.uint16) * 16)))
    for key, value in attrs.items():
        ds.add_new(Tag(key), "LO", value)  # as text, the way a broken exporter writes them
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(ImageError, match=match):
        decode(buf.getvalue())


@pytest.mark.parametrize("modality", ["CT", "MR", "US", "SEG", "NM", "OT", "XYZ"])
def test_dicom_that_is_not_a_radiograph_is_refused(modality):
    with pytest.raises(ImageError, match=f"Modality {modality}.*CR or DX"):
        decode(dicom(gradient().astype(np.uint16), Modality=modality))


@pytest.mark.parametrize("view", ["LL", "RL", "LAT", "LATERAL", "lateral", "RAO", "LPO"])
def test_dicom_lateral_or_oblique_view_is_refused(view):
    with pytest.raises(ImageError, match=f"view \\(ViewPosition {view.upper()}\\).*frontal"):
        decode(dicom(gradient().astype(np.uint16), ViewPosition=view))


@pytest.mark.parametrize(("modality", "view"), [("CR", "AP"), ("DX", "PA"), ("DR", "AP"), ("RG", "PA"),
                                                ("DX", "LLD"), ("dx", "pa")])
def test_frontal_radiographs_pass(modality, view):
    assert decode(dicom(gradient().astype(np.uint16), Modality=modality, ViewPosition=view)).format == "DICOM"


def test_missing_modality_and_view_are_accepted():
    ds = pydicom.dcmread(io.BytesIO(dicom(gradient().astype(np.uint16))))
    del ds.Modality, ds.ViewPosition
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert decode(buf.getvalue()).metadata.get("Modality") is None


@pytest.mark.parametrize(("attrs", "match"), [({"NumberOfFrames": "1.5"}, "not a whole number"),
                                              ({"NumberOfFrames": "abc"}, "not a whole number"),
                                              ({"NumberOfFrames": "0"}, "not a number of images")])
def test_dicom_non_integer_frame_count_is_refused(attrs, match):
    ds = pydicom.dcmread(io.BytesIO(dicom(gradient().astype(np.uint16))))
    for key, value in attrs.items():
        ds.add_new(Tag(key), "LO", value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(ImageError, match=match):
        decode(buf.getvalue())


def test_one_bit_dicom_is_refused():
    g = gradient()
    with pytest.raises(ImageError, match="BitsAllocated 1"):
        decode(dicom(g.astype(np.uint16), BitsAllocated=1, BitsStored=1, HighBit=0,
                     pixel_data=np.packbits(g > 128, bitorder="little").tobytes()))


# ---- memory budget and the last-resort guard ------------------------------------------------------------------------

@pytest.mark.parametrize("build", [lambda: encode(noise(1024, 1024), "PNG"),
                                   lambda: encode(Image.fromarray(noise(1024, 1024).astype(np.uint16)), "TIFF"),
                                   lambda: dicom(noise(1024, 1024).astype(np.uint16)),
                                   lambda: deflated(dicom(noise(1024, 1024).astype(np.uint16)))])
def test_decodes_over_the_memory_budget_are_refused_from_the_header(build):
    data = build()
    assert decode(data, "x.dcm" if data[128:132] == b"DICM" else "x").pixels.shape == (1024, 1024)
    with pytest.raises(ImageError, match="of memory, over the 4.0 MB allowed per upload|inflates to more than 1.3 MB"):
        decode(data, limits=Limits(max_decode_bytes=4 * 2**20))


def test_budget_is_checked_before_pixels_are_decoded():
    """A header-only PNG claiming 7000 x 7000 pixels: refused for memory, not found truncated by decoding it."""
    with pytest.raises(ImageError, match="memory"):
        decode(png_header_only(7000, 7000), limits=Limits(max_decode_bytes=32 * 2**20))


def test_deflated_dicom_inflation_is_bounded():
    data = deflated(dicom(np.zeros((1024, 1024), np.uint16)))
    with pytest.raises(ImageError, match="inflates to more than"):
        decode(data, limits=Limits(max_decode_bytes=3 * 2**20))


def test_any_unexpected_failure_becomes_an_image_error_and_is_logged(monkeypatch, caplog):
    from cxrcore import imaging

    def broken(*args, **kwargs):
        raise RuntimeError("decoder bug")
    monkeypatch.setattr(imaging, "_pil_pixels", broken)
    with caplog.at_level("WARNING", logger="cxrcore.imaging"):
        with pytest.raises(ImageError, match="could not be read as an image") as info:
            decode(encode(gradient(), "PNG"))
    assert isinstance(info.value.__cause__, RuntimeError) and "RuntimeError" in caplog.text


# ---- orientation and the region the models see ---------------------------------------------------------------------

@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pil(orientation):
    g = gradient(64, 96)
    g[3, 5] = 255  # a mark that shows any mirror or turn
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(g, "PNG", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    np.testing.assert_array_equal(decode(data).pixels, expected)


@pytest.mark.parametrize(("shape", "region"), [((100, 300), Region(100, 0, 100, 100)),
                                               ((300, 100), Region(0, 100, 100, 100)),
                                               ((101, 250), Region(74, 0, 101, 101)),
                                               ((128, 128), Region(0, 0, 128, 128))])
def test_model_region_is_the_centre_square_to_dataset_size_uses(shape, region):
    pixels = noise(*shape)
    assert model_region(pixels.shape) == region
    r = region
    np.testing.assert_array_equal(to_dataset_size(pixels[r.top : r.top + r.height, r.left : r.left + r.width], 64),
                                  to_dataset_size(pixels, 64))
    assert model_region(pixels.shape, "pad") == Region(0, 0, shape[1], shape[0])
