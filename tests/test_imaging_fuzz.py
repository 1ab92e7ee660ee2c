"""Fuzzing :func:`cxrcore.imaging.decode`: over a generated corpus of malformed, unusual and hostile images and DICOMs,
the only outcomes are a decoded image or an ImageError, each file within a time bound, and the peak memory of any
accepted file stays within the decode budget (measured in a subprocess).

Run as a script (``python tests/test_imaging_fuzz.py [--medium | --big] [--max-decode-mb N]``) it decodes the corpus in this
process and prints one JSON line per file with its outcome and the peak RSS growth it caused.
"""
from __future__ import annotations

import io
import json
import os
import resource
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import (JPEG2000, DeflatedExplicitVRLittleEndian, JPEG2000Lossless,
                         HTJ2KLossless, JPEGBaseline8Bit, JPEGLSLossless, JPEGLosslessSV1, RLELossless)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import dicom  # noqa: E402

from cxrcore.imaging import ImageError, Limits, decode  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SECONDS_PER_FILE = 3.0  # generous for a loaded 2-core machine; the slowest small file decodes in well under 0.1 s
Case = tuple[str, bytes, str]  # (case name, bytes, upload file name)


# ---- builders ------------------------------------------------------------------------------------------------------

def film(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth uint8 'film' with some noise, so encoders do real work."""
    g = np.add.outer(np.arange(h), np.arange(w)).astype(np.float64)
    noise = np.random.default_rng(seed).integers(0, 16, (h, w))
    return np.clip(g * 239 / g.max() + noise, 0, 255).astype(np.uint8)


def encode(image: Image.Image | np.ndarray, fmt: str, **kw) -> bytes:
    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_raw(width: int, height: int, depth: int = 8, colour: int = 0, extra: bytes = b"", idat: bytes | None = None,
            interlace: int = 0) -> bytes:
    """A PNG from its chunks, with any header values, extra chunks before IDAT and any IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    body = zlib.compress(b"\0" * 1000) if idat is None else idat
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def png_bomb(width: int, height: int) -> bytes:
    """A valid all-zero 8-bit PNG whose deflated rows are tiny: compression ratio about 1000:1."""
    comp = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return png_raw(width, height, idat=body)


def bmp(width: int, height: int, bpp: int, compression: int = 0, header_size: int = 40, pixels: bytes | None = None,
        colours: int = 0, masks: bytes = b"") -> bytes:
    """A BMP from its header fields, so unusual variants (RLE, bitfields, odd sizes) can be written."""
    row = ((width * bpp + 31) // 32) * 4
    data = pixels if pixels is not None else bytes(row * abs(height))
    palette = bytes(4 * (min(colours, 256) or (2**bpp if 0 < bpp <= 8 else 0)))  # a declared count may lie
    info = struct.pack("<IiiHHIIiiII", header_size, width, height, 1, bpp, compression, len(data), 2835, 2835,
                       colours, 0)
    info = info[:header_size] if header_size < 40 else info + bytes(header_size - 40)
    offset = 14 + len(info) + len(masks) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + masks + palette + data


def tiff(array: np.ndarray, **kw) -> bytes:
    return encode(Image.fromarray(array), "TIFF", **kw)


def tiff_lab() -> bytes:
    lab = Image.merge("LAB", [Image.fromarray(film()), Image.new("L", (128, 96), 128), Image.new("L", (128, 96), 128)])
    return encode(lab, "TIFF")


def tiff_bad_ifd_chain() -> bytes:
    """A two-page TIFF whose second IFD offset points past the end: counting pages has to seek."""
    data = bytearray(encode(Image.fromarray(film()), "TIFF"))
    ifd = struct.unpack("<I", data[4:8])[0]
    n = struct.unpack("<H", data[ifd : ifd + 2])[0]
    data[ifd + 2 + 12 * n : ifd + 6 + 12 * n] = struct.pack("<I", 0x7FFFFFF0)
    return bytes(data)


def tiff_huge_declared() -> bytes:
    """A TIFF whose header declares 100000 x 100000 pixels over a few bytes of strip."""
    data = bytearray(tiff(film(64, 64)))
    ifd = struct.unpack("<I", data[4:8])[0]
    for k in range(struct.unpack("<H", data[ifd : ifd + 2])[0]):
        e = ifd + 2 + 12 * k
        if struct.unpack("<H", data[e : e + 2])[0] in (256, 257):  # ImageWidth, ImageLength: as one LONG
            data[e + 2 : e + 12] = struct.pack("<HII", 4, 1, 100_000)
    return bytes(data)


def jpeg_sof_size(data: bytes, width: int, height: int) -> bytes:
    """A JPEG with its frame header's size rewritten (decoders allocate what it says)."""
    out = bytearray(data)
    i = out.find(b"\xff\xc0")
    out[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(out)


def dicom_raw(photometric: str = "MONOCHROME2", **attrs) -> bytes:
    """The test helper's DX DICOM with header values written as given: strings as LO text, so values their own VR
    would refuse ('1.5' frames, 'NaN' slope) reach the file as a damaged exporter writes them."""
    ds = dcmread(io.BytesIO(dicom(film().astype(np.uint16) * 16, photometric=photometric)))
    for key, value in attrs.items():
        if isinstance(value, str):
            ds.add_new(Tag(key), "LO", value)
        else:
            setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_with_view(view: str, modality: str = "DX") -> bytes:
    return dicom(film().astype(np.uint16) * 16, ViewPosition=view, Modality=modality)


def dicom_bits(allocated: int, stored: int, rows: int = 96, cols: int = 128, **attrs) -> bytes:
    """A DICOM whose BitsAllocated/BitsStored are written as given, with pixel data sized by BitsAllocated."""
    n_bytes = max(1, rows * cols * allocated // 8)
    return dicom(np.zeros((rows, cols), np.uint16), BitsAllocated=allocated, BitsStored=stored,
                 HighBit=max(0, stored - 1), pixel_data=bytes(n_bytes + n_bytes % 2), **attrs)


def dicom_deflated(pixels: np.ndarray, **attrs) -> bytes:
    """A Deflated Explicit VR Little Endian DICOM, written the way PS3.5 A.5 says (raw deflate after the meta)."""
    plain = dicom(pixels, **attrs)
    ds = dcmread(io.BytesIO(plain))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_deflate_bomb(rows: int, cols: int) -> bytes:
    """A deflated DICOM declaring rows x cols pixels of zeros: a few hundred KB that inflate to hundreds of MB."""
    plain = dicom(np.zeros((64, 64), np.uint16), Rows=rows, Columns=cols, pixel_data=b"")
    fp = io.BytesIO(plain)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    body = plain[fp.tell() : -4] + struct.pack("<I", rows * cols * 2)  # the empty PixelData, now rows x cols long
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = io.BytesIO()
    write_file_meta_info(head, meta, enforce_standard=True)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros, n = bytes(1 << 20), rows * cols * 2
    deflated = [comp.compress(body)] + [comp.compress(zeros) for _ in range(n >> 20)]
    deflated += [comp.compress(bytes(n % (1 << 20))), comp.flush()]
    return b"\0" * 128 + b"DICM" + head.getvalue() + b"".join(deflated)


def dicom_many_elements(n: int) -> bytes:
    """A DICOM whose header holds n tiny private elements: slow and memory-hungry to parse in full."""
    elements = b"".join(struct.pack("<HH2sH", 0x0009, 0x1000 + (k % 0xEFFF), b"SH", 0) for k in range(n))
    base = dicom(np.zeros((64, 64), np.uint16))
    at = base.find(b"\x08\x00\x16\x00")
    return base[:at] + elements + base[at:]


def j2k_frame(width: int, height: int) -> bytes:
    """A real JPEG 2000 codestream (Pillow's encoder), grey 8-bit."""
    return encode(Image.fromarray(film(height, width)), "JPEG2000", no_jp2=True)


def mutations(data: bytes, n: int, seed: int, head: int | None = None) -> Iterator[bytes]:
    """``n`` copies of ``data`` with a few bytes overwritten at random (in its first ``head`` bytes, if given)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        out = bytearray(data)
        for _ in range(int(rng.integers(1, 6))):
            out[int(rng.integers(0, min(len(out), head or len(out))))] = int(rng.integers(0, 256))
        yield bytes(out)


def truncations(data: bytes, fractions: tuple[float, ...] = (0.02, 0.1, 0.3, 0.5, 0.8, 0.99)) -> Iterator[bytes]:
    for f in fractions:
        yield data[: max(1, int(len(data) * f))]


# ---- the corpus ----------------------------------------------------------------------------------------------------

def corpus() -> list[Case]:
    """About 300 small files (mostly under 100 KB), generated deterministically."""
    g, g16 = film(), film().astype(np.uint16) * 257
    valid = {"png": encode(g, "PNG"), "jpg": encode(g, "JPEG", quality=90), "tif": tiff(g), "bmp": encode(g, "BMP"),
             "dcm": dicom(g.astype(np.uint16) * 16)}
    cases: list[Case] = [(f"valid.{k}", v, f"x.{k}") for k, v in valid.items()]
    for k, v in valid.items():
        cases += [(f"truncated {k} {i}", t, f"x.{k}") for i, t in enumerate(truncations(v))]
        cases += [(f"mutated {k} header {i}", m, f"x.{k}") for i, m in enumerate(mutations(v, 12, len(k), 200))]
        cases += [(f"mutated {k} body {i}", m, f"x.{k}") for i, m in enumerate(mutations(v, 6, 7 * len(k)))]
    text = zlib.compress(b"A" * 20_000_000)  # 20 MB of text in a 20 KB zTXt chunk
    cases += [
        ("empty", b"", ""), ("random", np.random.default_rng(1).bytes(4000), ""),
        ("text as .dcm", b"hello " * 300, "notes.dcm"), ("random as .dcm", np.random.default_rng(2).bytes(4000), "a.dcm"),
        # PNG
        ("png 16-bit", encode(Image.fromarray(g16), "PNG"), "x.png"),
        ("png 16-bit sBIT 12", encode(Image.fromarray(g16 // 16), "PNG", pnginfo=_sbit(12)), "x.png"),
        ("png sBIT 0", encode(Image.fromarray(g16), "PNG", pnginfo=_sbit(0)), "x.png"),
        ("png sBIT 200", encode(Image.fromarray(g16), "PNG", pnginfo=_sbit(200)), "x.png"),
        ("png 1-bit", encode(Image.fromarray(g > 128), "PNG"), "x.png"),
        ("png palette", encode(Image.fromarray(g).convert("P"), "PNG"), "x.png"),
        ("png LA", encode(Image.merge("LA", [Image.fromarray(g)] * 2), "PNG"), "x.png"),
        ("png RGBA", encode(Image.fromarray(np.dstack([g] * 4)), "PNG"), "x.png"),
        ("png 16-bit RGB", png_raw(128, 96, 16, 2, idat=zlib.compress(b"".join(b"\0" + bytes(128 * 6)
                                                                            for _ in range(96)))), "x.png"),
        ("png interlaced junk", png_raw(128, 96, interlace=1), "x.png"),
        ("png zTXt bomb", png_raw(128, 96, extra=chunk(b"zTXt", b"k\0\0" + text)), "x.png"),
        ("png iCCP bomb", png_raw(128, 96, extra=chunk(b"iCCP", b"p\0\0" + text)), "x.png"),
        ("png zTXt bomb after IDAT", encode(g, "PNG")[:-12] + chunk(b"zTXt", b"k\0\0" + text) + chunk(b"IEND", b""),
         "x.png"),
        ("png header 100000^2", png_raw(100_000, 100_000, 1), "x.png"),
        ("png header 0x0", png_raw(0, 0), "x.png"),
        ("png header 2^31", png_raw(2**31 - 1, 2**31 - 1), "x.png"),
        ("png bad depth", png_raw(128, 96, 7), "x.png"),
        ("png bad colour type", png_raw(128, 96, 8, 5), "x.png"),
        ("png short IDAT", png_raw(128, 96), "x.png"),
        ("png deflate bomb 3000^2", png_bomb(3000, 3000), "x.png"),
        ("apng", encode(Image.fromarray(g), "PNG", save_all=True, append_images=[Image.fromarray(255 - g)]), "x.png"),
        # JPEG
        ("jpeg progressive", encode(g, "JPEG", progressive=True), "x.jpg"),
        ("jpeg CMYK", encode(Image.fromarray(g).convert("CMYK"), "JPEG"), "x.jpg"),
        ("jpeg RGB", encode(np.dstack([g] * 3), "JPEG"), "x.jpg"),
        ("jpeg SOF 60000^2", jpeg_sof_size(encode(g, "JPEG"), 60000, 60000), "x.jpg"),
        ("jpeg SOF 0x0", jpeg_sof_size(encode(g, "JPEG"), 0, 0), "x.jpg"),
        ("jpeg SOF 7000^2", jpeg_sof_size(encode(g, "JPEG"), 7000, 7000), "x.jpg"),
        ("jpeg bad EXIF", encode(g, "JPEG", exif=b"Exif\0\0MM\0*\0\0\0\x08\xff\xff" + bytes(20)), "x.jpg"),
        # TIFF
        ("tiff 16-bit", tiff(g16), "x.tif"), ("tiff int32", tiff(g.astype(np.int32) * 1000 - 5000), "x.tif"),
        ("tiff float", tiff(g.astype(np.float32)), "x.tif"),
        ("tiff float NaN", tiff(_with(g.astype(np.float32), np.nan)), "x.tif"),
        ("tiff float inf", tiff(_with(g.astype(np.float32), np.inf)), "x.tif"),
        ("tiff float -inf", tiff(_with(g.astype(np.float32), -np.inf)), "x.tif"),
        ("tiff LAB", tiff_lab(), "x.tif"), ("tiff CMYK", encode(Image.fromarray(g).convert("CMYK"), "TIFF"), "x.tif"),
        ("tiff YCbCr JPEG", encode(Image.fromarray(np.dstack([g] * 3)), "TIFF", compression="jpeg"), "x.tif"),
        ("tiff deflate", tiff(g, compression="tiff_adobe_deflate"), "x.tif"),
        ("tiff lzw", tiff(g, compression="tiff_lzw"), "x.tif"), ("tiff packbits", tiff(g, compression="packbits"), "x.tif"),
        ("tiff multipage", encode(Image.fromarray(g), "TIFF", save_all=True,
                                  append_images=[Image.fromarray(255 - g)]), "x.tif"),
        ("tiff bad IFD chain", tiff_bad_ifd_chain(), "x.tif"),
        ("tiff huge declared", tiff_huge_declared(), "x.tif"),
        ("tiff 1-bit", tiff(g > 100), "x.tif"),
        # BMP
        *[(f"bmp {bpp}-bit", bmp(128, 96, bpp), "x.bmp") for bpp in (1, 4, 8, 16, 24, 32)],
        ("bmp top-down", bmp(128, -96, 8), "x.bmp"),
        ("bmp RLE8", bmp(128, 96, 8, 1, pixels=b"\x80\x10" * 3000 + b"\0\1"), "x.bmp"),
        ("bmp RLE4", bmp(128, 96, 4, 2, pixels=b"\x80\x12" * 3000 + b"\0\1"), "x.bmp"),
        ("bmp RLE8 garbage", bmp(128, 96, 8, 1, pixels=np.random.default_rng(3).bytes(3000)), "x.bmp"),
        ("bmp bitfields 16", bmp(128, 96, 16, 3, masks=struct.pack("<III", 0xF800, 0x07E0, 0x001F)), "x.bmp"),
        ("bmp bitfields 32", bmp(128, 96, 32, 3, masks=struct.pack("<III", 0xFF0000, 0xFF00, 0xFF)), "x.bmp"),
        ("bmp bitfields zero masks", bmp(128, 96, 32, 3, masks=bytes(12)), "x.bmp"),
        ("bmp bitfields 24", bmp(128, 96, 24, 3, masks=struct.pack("<III", 0xFF0000, 0xFF00, 0xFF)), "x.bmp"),
        ("bmp JPEG inside", bmp(128, 96, 24, 4), "x.bmp"), ("bmp PNG inside", bmp(128, 96, 24, 5), "x.bmp"),
        ("bmp compression 99", bmp(128, 96, 24, 99), "x.bmp"),
        ("bmp 7-bit", bmp(128, 96, 7), "x.bmp"), ("bmp 0-bit", bmp(128, 96, 0), "x.bmp"),
        ("bmp 64-bit", bmp(128, 96, 64), "x.bmp"),
        ("bmp OS/2 header", bmp(128, 96, 8, header_size=12), "x.bmp"),
        ("bmp header size 64", bmp(128, 96, 8, header_size=64), "x.bmp"),
        ("bmp header size 124", bmp(128, 96, 8, header_size=124), "x.bmp"),
        ("bmp header size 1000", bmp(128, 96, 8, header_size=1000), "x.bmp"),
        ("bmp huge", bmp(100_000, 100_000, 24, pixels=b""), "x.bmp"),
        ("bmp width 0", bmp(0, 96, 8), "x.bmp"), ("bmp 2^31 colours", bmp(128, 96, 8, colours=2**31), "x.bmp"),
        ("bmp short pixels", bmp(128, 96, 24, pixels=bytes(100)), "x.bmp"),
        # DICOM: header values
        *[(f"dicom NumberOfFrames {v!r}", dicom_raw(NumberOfFrames=v), "x.dcm") for v in ("1.5", "abc", "0", "-1", "2")],
        *[(f"dicom BitsAllocated {a} BitsStored {s}", dicom_bits(a, s), "x.dcm")
          for a, s in ((1, 1), (8, 8), (8, 12), (12, 12), (16, 0), (16, 17), (32, 32), (32, 20), (64, 64), (0, 0))],
        ("dicom PixelRepresentation 2", dicom_raw(PixelRepresentation=2), "x.dcm"),
        ("dicom signed", dicom((film().astype(np.int16) - 100).astype(np.uint16), PixelRepresentation=1), "x.dcm"),
        ("dicom SamplesPerPixel 2", dicom_raw(SamplesPerPixel=2), "x.dcm"),
        ("dicom SamplesPerPixel 3 mono", dicom_raw(SamplesPerPixel=3), "x.dcm"),
        ("dicom PALETTE COLOR", dicom_raw(photometric="PALETTE COLOR"), "x.dcm"),
        ("dicom photometric missing", dicom_raw(photometric=""), "x.dcm"),
        ("dicom RGB 8-bit", dicom(np.zeros((96, 128), np.uint16), SamplesPerPixel=3, photometric="RGB",
                                  BitsAllocated=8, BitsStored=8, HighBit=7, PlanarConfiguration=0,
                                  pixel_data=np.dstack([film()] * 3).tobytes()), "x.dcm"),
        ("dicom YBR_FULL", dicom(np.zeros((96, 128), np.uint16), SamplesPerPixel=3, photometric="YBR_FULL",
                                 BitsAllocated=8, BitsStored=8, HighBit=7, PlanarConfiguration=0,
                                 pixel_data=np.dstack([film(), film() * 0 + 128, film() * 0 + 128]).tobytes()),
         "x.dcm"),
        *[(f"dicom RescaleSlope {v}", dicom_raw(RescaleSlope=v, RescaleIntercept=0), "x.dcm")
          for v in ("NaN", "inf", "-inf", "0", "1e308", "-1", "abc", "2.5")],
        ("dicom RescaleIntercept NaN", dicom_raw(RescaleSlope=1, RescaleIntercept="NaN"), "x.dcm"),
        *[(f"dicom window {c}/{w}", dicom_raw(WindowCenter=c, WindowWidth=w), "x.dcm")
          for c, w in (("NaN", "400"), ("2048", "NaN"), ("2048", "0"), ("2048", "-5"), ("2048", "inf"),
                       ("1e308", "1e308"), ("2048", "4096"), ("abc", "def"))],
        ("dicom VOI function SIGMOID", dicom_raw(WindowCenter=2048, WindowWidth=2000, VOILUTFunction="SIGMOID"),
         "x.dcm"),
        ("dicom VOI function bogus", dicom_raw(WindowCenter=2048, WindowWidth=2000, VOILUTFunction="BOGUS"), "x.dcm"),
        ("dicom VOI LUT bad descriptor", dicom_raw(VOILUTSequence=[_lut_item([4096, 0, 40], b"\0" * 10)]), "x.dcm"),
        ("dicom VOI LUT short data", dicom_raw(VOILUTSequence=[_lut_item([4096, 0, 16], b"\0" * 10)]), "x.dcm"),
        ("dicom Modality LUT", dicom_raw(ModalityLUTSequence=[_lut_item([4096, 0, 12], _ramp(4096))]), "x.dcm"),
        ("dicom Rows 0", dicom_raw(Rows=0), "x.dcm"),
        ("dicom Rows 60000", dicom(np.zeros((96, 128), np.uint16), Rows=60000, Columns=60000), "x.dcm"),
        ("dicom Rows mismatch", dicom(np.zeros((96, 128), np.uint16), Rows=200), "x.dcm"),
        ("dicom no pixel data", dicom(np.zeros((96, 128), np.uint16), pixel_data=b""), "x.dcm"),
        ("dicom no file meta", dicom(film().astype(np.uint16), file_meta=False), "x.dcm"),
        ("dicom header bomb 200k elements", dicom_many_elements(200_000), "x.dcm"),
        # DICOM: modality and view
        *[(f"dicom Modality {m}", dicom_with_view("PA", m), "x.dcm") for m in ("CT", "MR", "US", "SEG", "OT", "CR",
                                                                                 "dx", "")],
        *[(f"dicom ViewPosition {v}", dicom_with_view(v), "x.dcm") for v in ("LL", "RL", "LATERAL", "LAT", "AP", "PA",
                                                                             "LLD", "RAO", "")],
        # DICOM: transfer syntaxes
        ("dicom deflated", dicom_deflated(film().astype(np.uint16) * 16), "x.dcm"),
        ("dicom deflated truncated", dicom_deflated(film().astype(np.uint16) * 16)[:-300], "x.dcm"),
        ("dicom deflate bomb 7000^2", dicom_deflate_bomb(7000, 7000), "x.dcm"),
        ("dicom deflate bomb 50000^2", dicom_deflate_bomb(50000, 2000), "x.dcm"),
        *[(f"dicom {uid.name} junk", dicom(np.zeros((96, 128), np.uint16), syntax=uid,
                                           pixel_data=encapsulate([b"\xff\xd8" + bytes(200)])), "x.dcm")
          for uid in (JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless, JPEG2000, JPEG2000Lossless, RLELossless)],
        ("dicom J2K valid", dicom(np.zeros((96, 128), np.uint16), syntax=JPEG2000Lossless, BitsAllocated=8,
                                  BitsStored=8, HighBit=7, pixel_data=encapsulate([j2k_frame(128, 96)])), "x.dcm"),
        ("dicom J2K bigger than declared", dicom(np.zeros((96, 128), np.uint16), syntax=JPEG2000Lossless,
                                                 BitsAllocated=8, BitsStored=8, HighBit=7,
                                                 pixel_data=encapsulate([j2k_frame(1024, 768)])), "x.dcm"),
        ("dicom JPEG baseline valid", dicom(np.zeros((96, 128), np.uint16), syntax=JPEGBaseline8Bit, BitsAllocated=8,
                                            BitsStored=8, HighBit=7, pixel_data=encapsulate([encode(g, "JPEG")])),
         "x.dcm"),
        ("dicom JPEG SOF 7000^2", dicom(np.zeros((96, 128), np.uint16), syntax=JPEGBaseline8Bit, BitsAllocated=8,
                                        BitsStored=8, HighBit=7,
                                        pixel_data=encapsulate([jpeg_sof_size(encode(g, "JPEG"), 7000, 7000)])),
         "x.dcm"),
        ("dicom RLE valid", _rle_dicom(), "x.dcm"),
        ("dicom unknown syntax", valid["dcm"].replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.99999.1.2.1\0", 1), "x.dcm"),
        ("dicom HTJ2K junk", dicom(np.zeros((96, 128), np.uint16), syntax=HTJ2KLossless,
                                   pixel_data=encapsulate([b"\xff\x4f" + bytes(200)])), "x.dcm"),
    ]
    return cases


def _sbit(bits: int) -> PngInfo:
    info = PngInfo()
    info.add(b"sBIT", bytes([bits]))
    return info


def _with(a: np.ndarray, value: float) -> np.ndarray:
    a = a.copy()
    a[10, 10] = value
    return a


def _ramp(n: int) -> bytes:
    return np.arange(n, dtype="<u2").tobytes()


def _lut_item(descriptor: list[int], data: bytes) -> Dataset:
    item = Dataset()
    item.LUTDescriptor, item.LUTData = descriptor, data
    return item


def _rle_dicom() -> bytes:
    ds = dcmread(io.BytesIO(dicom(film().astype(np.uint16) * 16)))
    ds.compress(RLELossless, encoding_plugin="pydicom")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def medium_corpus() -> list[Case]:
    """Films of 1500^2 to 2048^2 (2-4 MP), whose decoding is close to a 48 MB budget: the estimate must hold."""
    side = 1500
    ramp = (np.add.outer(np.arange(side), np.arange(side)) % 4096).astype(np.uint16)
    eight = (ramp >> 4).astype(np.uint8)
    return [
        ("medium 16-bit PNG", encode(Image.fromarray(ramp), "PNG", compress_level=1), "m.png"),
        ("medium 8-bit PNG", encode(eight, "PNG", compress_level=1), "m.png"),
        ("medium RGB JPEG", encode(np.dstack([eight] * 3), "JPEG"), "m.jpg"),
        ("medium float TIFF", tiff(ramp.astype(np.float32), compression="tiff_adobe_deflate"), "m.tif"),
        ("medium deflated DICOM rescale+window", dicom_deflated(ramp, RescaleSlope=2, RescaleIntercept=-1000,
                                                                 WindowCenter=2000, WindowWidth=3000), "m.dcm"),
        ("medium DICOM native", dicom(ramp), "m.dcm"),
        ("medium DICOM J2K", dicom(np.zeros((side, side), np.uint16), syntax=JPEG2000Lossless, BitsAllocated=8,
                                   BitsStored=8, HighBit=7, pixel_data=encapsulate([j2k_frame(side, side)])),
         "m.dcm"),
        ("medium PNG bomb 2048^2", png_bomb(2048, 2048), "m.png"),
    ]


def big_corpus() -> list[Case]:
    """The largest files the default limits accept (7745^2 ~ 60 MP) and bombs just past them: slow to build."""
    side = 7745
    ramp = (np.add.outer(np.arange(side, dtype=np.uint32), np.arange(side, dtype=np.uint32)) % 4096).astype(np.uint16)
    cases = [
        ("deflated DICOM 7745^2 rescale+window", dicom_deflated(ramp, RescaleSlope=2, RescaleIntercept=-1000,
                                                                WindowCenter=2000, WindowWidth=3000), "big.dcm"),
        ("deflated DICOM 7745^2 no window", dicom_deflated(ramp), "big.dcm"),
        ("16-bit PNG 7745^2", encode(Image.fromarray(ramp), "PNG", compress_level=1), "big.png"),
        ("8-bit PNG 7745^2", encode(Image.fromarray((ramp >> 4).astype(np.uint8)), "PNG", compress_level=1),
         "big.png"),
        ("RGB JPEG 5000^2", encode(Image.fromarray((ramp[:5000, :5000] >> 4).astype(np.uint8)).convert("RGB"),
                                   "JPEG", quality=50), "big.jpg"),
        ("TIFF float 5000^2", tiff((ramp[:5000, :5000]).astype(np.float32), compression="tiff_adobe_deflate"),
         "big.tif"),
        ("DICOM 5000^2 native", dicom(ramp[:5000, :5000], WindowCenter=2048, WindowWidth=4096), "big.dcm"),
        ("PNG bomb 7745^2", png_bomb(side, side), "big.png"),
        ("deflate bomb 7745^2 DICOM", dicom_deflate_bomb(side, side), "big.dcm"),
    ]
    del ramp
    return cases


# ---- running the corpus --------------------------------------------------------------------------------------------

def outcome(data: bytes, filename: str, limits: Limits = Limits()) -> tuple[str, float]:
    """'ok', 'ImageError: ...' or 'CRASH <type>: ...', and the seconds decode took."""
    start = time.perf_counter()
    try:
        decode(data, filename, limits)
        result = "ok"
    except ImageError as exc:
        result = f"ImageError: {exc}"
    except Exception as exc:  # noqa: BLE001 - this is what the test looks for
        result = f"CRASH {type(exc).__name__}: {exc}"
    return result, time.perf_counter() - start


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def main(argv: list[str]) -> None:
    """Decode the corpus here, one JSON line per file: outcome, seconds, and peak RSS growth (MB) while decoding,
    measured by resetting the peak (``/proc/self/clear_refs``) before each file."""
    budget = int(argv[argv.index("--max-decode-mb") + 1]) * 2**20 if "--max-decode-mb" in argv else None
    limits = Limits(max_decode_bytes=budget) if budget else Limits()
    cases = (big_corpus() if "--big" in argv else medium_corpus() if "--medium" in argv
             else corpus() + medium_corpus())
    for name, data, filename in [cases[0]] + cases:  # the first file twice: imports and warm-up are not counted
        before = _rss_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM, the peak RSS, to the current RSS
        result, seconds = outcome(data, filename, limits)
        peak = _rss_kb("VmHWM")
        print(json.dumps({"name": name, "bytes": len(data), "result": result, "seconds": round(seconds, 3),
                          "peak_growth_mb": round((peak - before) / 1024, 1),
                          "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}),
              flush=True)
    del cases


def run_subprocess(*args: str, timeout: float = 600) -> list[dict]:
    """:func:`main` in a fresh process. A fixed malloc mmap threshold keeps glibc from serving big arrays out of heap
    that earlier files left resident, which would hide their memory from the RSS peak."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072",
           "MALLOC_TRIM_THRESHOLD_": "131072"}
    proc = subprocess.run([sys.executable, __file__, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()][1:]  # the warm-up line is not counted


# ---- tests ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return corpus()


def test_corpus_is_varied(cases):
    names = [c[0] for c in cases]
    assert len(names) == len(set(names)) and len(cases) >= 250
    outcomes = {name: outcome(data, fn)[0] for name, data, fn in cases[:5]}
    assert all(o == "ok" for o in outcomes.values()), outcomes  # the unmutated files decode


def test_decode_raises_only_image_error_within_a_time_bound(cases):
    crashes, slow = {}, {}
    for name, data, filename in cases:
        result, seconds = outcome(data, filename)
        if result.startswith("CRASH"):
            crashes[name] = result
        if seconds > SECONDS_PER_FILE:
            slow[name] = seconds
    assert not crashes, crashes
    assert not slow, slow


def test_refusals_are_one_readable_sentence(cases):
    for name, data, filename in cases:
        result, _ = outcome(data, filename)
        if result.startswith("ImageError"):
            message = result.removeprefix("ImageError: ")
            assert message.endswith(".") and "\n" not in message and len(message) < 300, (name, message)
            assert "Traceback" not in message and "Error" not in message, (name, message)


def test_known_hostile_files_are_refused_for_the_right_reason(cases):
    """Each class of the attack run's failures gets its own clear refusal (not the last-resort guard)."""
    by_name = {name: (data, fn) for name, data, fn in cases}
    expected = {
        "png zTXt bomb": "text metadata is too large", "png zTXt bomb after IDAT": "text metadata is too large",
        "tiff float NaN": "NaN or infinity", "tiff float inf": "NaN or infinity",
        "dicom RescaleSlope NaN": "not a finite number", "dicom RescaleSlope 0": "RescaleSlope is 0",
        "dicom RescaleSlope 1e308": "overflow", "dicom window NaN/400": "not a finite number",
        "dicom NumberOfFrames '1.5'": "not a whole number", "dicom NumberOfFrames 'abc'": "not a whole number",
        "dicom BitsAllocated 1 BitsStored 1": "BitsAllocated 1", "dicom Modality CT": "Modality CT",
        "dicom Modality SEG": "Modality SEG", "dicom ViewPosition LL": "lateral", "dicom ViewPosition LATERAL": "lateral",
        "dicom deflate bomb 50000^2": "decompression-bomb guard", "png header 100000^2": "decompression-bomb guard",
        "dicom J2K bigger than declared": "but the header says", "dicom JPEG SOF 7000^2": "but the header says",
        "dicom header bomb 200k elements": "elements", "tiff bad IFD chain": "corrupt",
    }
    for name, match in expected.items():
        result, _ = outcome(*by_name[name])
        assert result.startswith("ImageError") and match in result, (name, result)
    for name in ("tiff LAB", "dicom deflated", "dicom J2K valid", "dicom RLE valid", "dicom ViewPosition AP",
                 "dicom Modality CR", "dicom ViewPosition LLD", "dicom ViewPosition ", "dicom Modality ",
                 "dicom YBR_FULL", "bmp bitfields 32", "bmp bitfields 16", "png 16-bit sBIT 12"):
        assert outcome(*by_name[name])[0] == "ok", name


def test_peak_memory_of_2_to_4_megapixel_films_stays_within_a_small_budget():
    """2-4 MP films of every path in a fresh process with a 48 MB decode budget: whatever is accepted peaks below it,
    so the header estimates hold (the full corpus runs in the slow test below)."""
    rows = run_subprocess("--medium", "--max-decode-mb", "48", timeout=300)
    assert len(rows) == len(medium_corpus()) and not [r for r in rows if r["result"].startswith("CRASH")]
    assert len([r for r in rows if r["result"] == "ok"]) >= 6
    worst = max(rows, key=lambda r: r["peak_growth_mb"])
    assert 5 < worst["peak_growth_mb"] <= 48, worst  # above 5 MB: the measurement sees the decode's arrays


@pytest.mark.slow
def test_peak_memory_over_the_whole_corpus_stays_within_a_small_budget():
    rows = run_subprocess("--max-decode-mb", "48", timeout=600)
    assert len(rows) == len(corpus()) + len(medium_corpus())
    assert not [r for r in rows if r["result"].startswith("CRASH")]
    accepted = {r["name"] for r in rows if r["result"] == "ok"}
    assert len(accepted) > 50
    worst = max(rows, key=lambda r: r["peak_growth_mb"])
    assert worst["peak_growth_mb"] <= 48, worst


@pytest.mark.slow
def test_largest_accepted_films_and_bombs_stay_within_the_default_budget():
    """7745^2 films (the 60 MP cap) and bombs under the default 512 MB budget: accepted ones peak below it."""
    rows = run_subprocess("--big", timeout=900)
    for r in rows:
        print(r)
    assert not [r for r in rows if r["result"].startswith("CRASH")]
    assert all(r["peak_growth_mb"] <= Limits().max_decode_bytes / 2**20 for r in rows), rows
    assert {r["name"] for r in rows if r["result"] == "ok"} >= {"deflated DICOM 7745^2 rescale+window",
                                                               "16-bit PNG 7745^2"}


if __name__ == "__main__":
    main(sys.argv[1:])
