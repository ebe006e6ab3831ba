"""Camera image decoding to RGB, in numpy and OpenCV only (no ROS).

``decode_raw`` turns the fields of a ``sensor_msgs/Image`` (encoding, width, height, step,
is_bigendian, data) into an ``(H, W, 3) uint8`` RGB array, honouring the row stride and the byte
order as cv_bridge does. ``decode_compressed`` does the same for a ``sensor_msgs/CompressedImage``
(JPEG or PNG). Every malformed input raises :class:`ImageDecodeError` (a ``ValueError``) whose
message says what is wrong; nothing here returns a partial or empty image.

Sizes are checked against :class:`ImageLimits` *before* any allocation: a compressed image's
width and height are read from its header, so a 16k x 16k PNG is refused without decoding it.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

try:  # OpenCV is needed for colour conversions of non-RGB layouts and for JPEG/PNG.
    import cv2
except ImportError:  # pragma: no cover - exercised only on machines without OpenCV
    cv2 = None  # type: ignore[assignment]


class ImageDecodeError(ValueError):
    """An image message that cannot be turned into an RGB array; the message says why."""


@dataclass(frozen=True)
class ImageLimits:
    """Largest image accepted. The defaults take 8K frames and refuse 16k x 16k ones."""

    max_width: int = 8192
    max_height: int = 8192
    max_pixels: int = 8192 * 4320
    max_compressed_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("max_width", "max_height", "max_pixels", "max_compressed_bytes"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ImageLimits.{name} must be > 0, got {getattr(self, name)}")


DEFAULT_LIMITS = ImageLimits()


@dataclass(frozen=True)
class _Layout:
    channels: int
    bytes_per_channel: int
    # How to reach RGB: "rgb", "bgr", "rgba", "bgra", "mono", or an OpenCV conversion name.
    order: str


# sensor_msgs/image_encodings names (plus the OpenCV type names cv_bridge accepts).
_LAYOUTS: dict[str, _Layout] = {
    "rgb8": _Layout(3, 1, "rgb"),
    "bgr8": _Layout(3, 1, "bgr"),
    "rgba8": _Layout(4, 1, "rgba"),
    "bgra8": _Layout(4, 1, "bgra"),
    "mono8": _Layout(1, 1, "mono"),
    "8UC1": _Layout(1, 1, "mono"),
    "8UC3": _Layout(3, 1, "bgr"),  # cv_bridge treats untyped 3-channel images as BGR
    "8UC4": _Layout(4, 1, "bgra"),
    "rgb16": _Layout(3, 2, "rgb"),
    "bgr16": _Layout(3, 2, "bgr"),
    "rgba16": _Layout(4, 2, "rgba"),
    "bgra16": _Layout(4, 2, "bgra"),
    "mono16": _Layout(1, 2, "mono"),
    "16UC1": _Layout(1, 2, "mono"),
    "16UC3": _Layout(3, 2, "bgr"),
    "yuv422": _Layout(2, 1, "COLOR_YUV2RGB_UYVY"),
    "uyvy": _Layout(2, 1, "COLOR_YUV2RGB_UYVY"),
    "yuv422_yuy2": _Layout(2, 1, "COLOR_YUV2RGB_YUY2"),
    "yuyv": _Layout(2, 1, "COLOR_YUV2RGB_YUY2"),
    "bayer_rggb8": _Layout(1, 1, "COLOR_BayerBG2RGB"),
    "bayer_bggr8": _Layout(1, 1, "COLOR_BayerRG2RGB"),
    "bayer_gbrg8": _Layout(1, 1, "COLOR_BayerGR2RGB"),
    "bayer_grbg8": _Layout(1, 1, "COLOR_BayerGB2RGB"),
}

SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_LAYOUTS)
SUPPORTED_COMPRESSED_FORMATS: tuple[str, ...] = ("jpeg", "png")


def bytes_per_pixel(encoding: str) -> int:
    """Bytes one pixel takes in ``encoding``; ImageDecodeError when the encoding is unknown."""
    return _layout(encoding).channels * _layout(encoding).bytes_per_channel


def _layout(encoding: str) -> _Layout:
    layout = _LAYOUTS.get(encoding)
    if layout is None:
        raise ImageDecodeError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    return layout


def check_size(width: int, height: int, limits: ImageLimits = DEFAULT_LIMITS) -> None:
    """Raise ImageDecodeError when ``width`` x ``height`` is empty or beyond ``limits``."""
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"image has zero size ({width}x{height})")
    if width > limits.max_width or height > limits.max_height:
        raise ImageDecodeError(
            f"image {width}x{height} is larger than the limit "
            f"{limits.max_width}x{limits.max_height}"
        )
    if width * height > limits.max_pixels:
        raise ImageDecodeError(
            f"image {width}x{height} has {width * height} pixels, more than the limit "
            f"{limits.max_pixels}"
        )


def _as_uint8_buffer(data: Any) -> np.ndarray:
    """A flat uint8 view of bytes / bytearray / array.array / memoryview (a copy for lists)."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError):
        try:
            return np.asarray(data, dtype=np.uint8).reshape(-1)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ImageDecodeError(f"image data is not a byte buffer: {exc}") from exc


def _require_cv2(what: str) -> Any:
    if cv2 is None:
        raise ImageDecodeError(f"{what} needs OpenCV (pip install opencv-python-headless)")
    return cv2


@dataclass(frozen=True)
class RawImageInfo:
    """A checked sensor_msgs/Image layout: what ``decode_raw`` will read."""

    encoding: str
    width: int
    height: int
    step: int
    is_bigendian: bool


def check_raw(
    encoding: str,
    width: int,
    height: int,
    step: int,
    data_size: int,
    is_bigendian: bool = False,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> RawImageInfo:
    """Check a sensor_msgs/Image's fields without touching the pixels (cheap: per frame).

    Raises ImageDecodeError on an unknown encoding, a zero or oversized image, ``step`` shorter
    than a row, or fewer than ``step * height`` bytes of data.
    """
    layout = _layout(encoding)
    width, height, step = int(width), int(height), int(step)
    check_size(width, height, limits)
    row_bytes = width * layout.channels * layout.bytes_per_channel
    if step < row_bytes:
        raise ImageDecodeError(
            f"step {step} is shorter than one row of {width} {encoding} pixels ({row_bytes} bytes)"
        )
    if data_size < step * height:
        raise ImageDecodeError(
            f"image data has {data_size} bytes; {width}x{height} {encoding} with step {step} "
            f"needs {step * height}"
        )
    return RawImageInfo(encoding, width, height, step, bool(is_bigendian))


def decode_raw(
    encoding: str,
    width: int,
    height: int,
    step: int,
    data: Any,
    is_bigendian: bool = False,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> np.ndarray:
    """The fields of a sensor_msgs/Image as an ``(height, width, 3) uint8`` RGB array.

    Rows are read ``step`` bytes apart (padding after each row is skipped); 16-bit samples are
    read in the order ``is_bigendian`` gives and reduced to 8 bits by keeping the high byte;
    alpha is dropped. The checks of :func:`check_raw` apply. For ``rgb8`` with no row padding
    the result is a read-only view of ``data`` (no copy); otherwise a new array.
    """
    buffer = _as_uint8_buffer(data)
    info = check_raw(encoding, width, height, step, buffer.size, is_bigendian, limits)
    return decode_checked(info, buffer)


def decode_checked(info: RawImageInfo, data: Any) -> np.ndarray:
    """Decode data already checked by :func:`check_raw` (see :func:`decode_raw`)."""
    layout = _layout(info.encoding)
    buffer = _as_uint8_buffer(data)
    if layout.bytes_per_channel == 1:
        dtype: np.dtype = np.dtype(np.uint8)
    else:
        dtype = np.dtype(">u2" if info.is_bigendian else "<u2")
    pixel_bytes = layout.channels * layout.bytes_per_channel
    # Zero-copy strided view over the message buffer: (H, W, C) with the message's row stride.
    view = np.ndarray(
        shape=(info.height, info.width, layout.channels),
        dtype=dtype,
        buffer=buffer,
        strides=(info.step, pixel_bytes, layout.bytes_per_channel),
    )
    if layout.bytes_per_channel == 2:
        view = (view >> 8).astype(np.uint8)  # high byte: 16-bit full scale -> 8-bit full scale
    return _to_rgb(view, layout, info.encoding)


# OpenCV conversions for the simple layouts (numpy fallback when OpenCV is absent).
_CV_CODES = {"bgr": "COLOR_BGR2RGB", "rgba": "COLOR_RGBA2RGB", "bgra": "COLOR_BGRA2RGB",
             "mono": "COLOR_GRAY2RGB"}


def _to_rgb(view: np.ndarray, layout: _Layout, encoding: str) -> np.ndarray:
    order = layout.order
    if order == "rgb":
        if view.flags.c_contiguous:
            out = view.view()
            out.flags.writeable = False
            return out
        return np.ascontiguousarray(view)
    if cv2 is None:
        if order == "rgba":
            return np.ascontiguousarray(view[:, :, :3])
        if order == "bgr":
            return np.ascontiguousarray(view[:, :, ::-1])
        if order == "bgra":
            return np.ascontiguousarray(view[:, :, 2::-1])
        if order == "mono":
            return np.repeat(view, 3, axis=2)
    cv = _require_cv2(f"encoding {encoding!r}")
    code = getattr(cv, _CV_CODES.get(order, order))
    src = view if layout.channels > 1 else view[:, :, 0]
    if not (src.strides[-1] == src.itemsize):
        src = np.ascontiguousarray(src)
    try:
        return cv.cvtColor(src, code)
    except cv.error as exc:  # odd widths for YUV 4:2:2, for instance
        raise ImageDecodeError(f"cannot convert {encoding!r} image: {exc}") from exc


def compressed_size(data: Any) -> tuple[str, int, int]:
    """(format, width, height) read from a JPEG or PNG header, without decoding the pixels."""
    buf = bytes(_as_uint8_buffer(data)[:65536].tobytes()) if not isinstance(data, bytes) else data
    if buf[:8] == b"\x89PNG\r\n\x1a\n":
        if len(buf) < 24 or buf[12:16] != b"IHDR":
            raise ImageDecodeError("PNG data has no IHDR header")
        width, height = struct.unpack(">II", buf[16:24])
        return "png", int(width), int(height)
    if buf[:2] == b"\xff\xd8":
        return ("jpeg",) + _jpeg_size(buf)
    raise ImageDecodeError(
        f"compressed data is neither JPEG nor PNG (starts with {buf[:8].hex() or 'nothing'})"
    )


# JPEG start-of-frame markers carry the frame size: SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(buf: bytes) -> tuple[int, int]:
    pos = 2
    while pos + 4 <= len(buf):
        if buf[pos] != 0xFF:
            raise ImageDecodeError(f"corrupt JPEG: expected a marker at byte {pos}")
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", buf[pos + 2 : pos + 4])
        if length < 2:
            raise ImageDecodeError(f"corrupt JPEG: segment length {length} at byte {pos}")
        if marker in _SOF_MARKERS:
            if pos + 9 > len(buf):
                break
            height, width = struct.unpack(">HH", buf[pos + 5 : pos + 9])
            return int(width), int(height)
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + length
    raise ImageDecodeError("corrupt JPEG: no frame header (SOF) found")


def inspect_compressed(
    data: Any, format: str = "", limits: ImageLimits = DEFAULT_LIMITS  # noqa: A002 - ROS field name
) -> tuple[str, int, int]:
    """Check a sensor_msgs/CompressedImage without decoding it: (codec, width, height).

    Reads the size from the JPEG/PNG header and checks it against ``limits``, and checks that
    the data is not truncated. Raises ImageDecodeError with the reason.
    """
    if "compresseddepth" in format.lower():
        raise ImageDecodeError(f"compressed depth images are not supported (format {format!r})")
    buffer = _as_uint8_buffer(data)
    if buffer.size == 0:
        raise ImageDecodeError("compressed image has no data")
    if buffer.size > limits.max_compressed_bytes:
        raise ImageDecodeError(
            f"compressed image has {buffer.size} bytes, more than the limit "
            f"{limits.max_compressed_bytes}"
        )
    codec, width, height = compressed_size(buffer[:65536].tobytes())
    check_size(width, height, limits)
    tail = buffer[-64:].tobytes()
    if codec == "jpeg" and b"\xff\xd9" not in tail:
        raise ImageDecodeError("corrupt JPEG: truncated (no end-of-image marker)")
    if codec == "png" and b"IEND" not in tail:
        raise ImageDecodeError("corrupt PNG: truncated (no IEND chunk)")
    return codec, width, height


JPEG_REDUCTIONS: tuple[int, ...] = (1, 2, 4, 8)  # scales libjpeg decodes to directly, in the DCT


def reduced_size(width: int, height: int, reduction: int) -> tuple[int, int]:
    """(width, height) of a JPEG decoded at 1/``reduction`` scale: each side rounded up, as libjpeg does."""
    return -(-int(width) // reduction), -(-int(height) // reduction)


def decode_compressed(
    data: Any,
    format: str = "",  # noqa: A002 - ROS field name
    limits: ImageLimits = DEFAULT_LIMITS,
    reduction: int = 1,
) -> np.ndarray:
    """The bytes of a sensor_msgs/CompressedImage (JPEG or PNG) as ``(H, W, 3) uint8`` RGB.

    ``format`` is the message's format string ("jpeg", "png", "bgr8; jpeg compressed bgr8");
    the bytes themselves decide the codec. The checks of :func:`inspect_compressed` apply;
    data OpenCV cannot decode raises ImageDecodeError too.

    ``reduction`` (1, 2, 4 or 8): a JPEG is decoded at that fraction of its size, straight from
    the DCT coefficients (several times faster than a full decode, and a good area-like
    downsample): the result is :func:`reduced_size` of the header's size. A PNG has no such
    shortcut and is always decoded at full size, so the caller must read the returned shape.
    """
    if reduction not in JPEG_REDUCTIONS:
        raise ValueError(f"reduction must be one of {JPEG_REDUCTIONS}, got {reduction!r}")
    cv = _require_cv2("compressed images")
    codec, width, height = inspect_compressed(data, format, limits)
    if codec != "jpeg":
        reduction = 1
    rgb_flag = getattr(cv, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10 decodes straight to RGB
    if reduction == 1:
        flags = cv.IMREAD_COLOR if rgb_flag is None else rgb_flag
    else:
        reduced = getattr(cv, f"IMREAD_REDUCED_COLOR_{reduction}")
        # IMREAD_REDUCED_COLOR_r is IMREAD_REDUCED_GRAYSCALE_r | IMREAD_COLOR (BGR); OpenCV 5
        # refuses BGR and RGB together, so swap the colour bit for IMREAD_COLOR_RGB.
        flags = reduced if rgb_flag is None else (reduced & ~cv.IMREAD_COLOR) | rgb_flag
    decoded = cv.imdecode(_as_uint8_buffer(data), flags)
    out_w, out_h = reduced_size(width, height, reduction)
    if decoded is None or decoded.ndim != 3 or decoded.shape[0] != out_h or decoded.shape[1] != out_w:
        raise ImageDecodeError(f"corrupt {codec.upper()} data: OpenCV could not decode it")
    return decoded if rgb_flag is not None else cv.cvtColor(decoded, cv.COLOR_BGR2RGB)


def encode_compressed(rgb: np.ndarray, format: str = "jpeg", quality: int = 90) -> bytes:  # noqa: A002
    """Encode an ``(H, W, 3) uint8`` RGB array as JPEG or PNG bytes (tests, demo, bench)."""
    cv = _require_cv2("compressed images")
    check_rgb(rgb)
    fmt = format.lower()
    if fmt in ("jpeg", "jpg"):
        ok, buf = cv.imencode(".jpg", cv.cvtColor(rgb, cv.COLOR_RGB2BGR), [cv.IMWRITE_JPEG_QUALITY, int(quality)])
    elif fmt == "png":
        ok, buf = cv.imencode(".png", cv.cvtColor(rgb, cv.COLOR_RGB2BGR))
    else:
        raise ValueError(f"unsupported compressed format {format!r}; use 'jpeg' or 'png'")
    if not ok:
        raise ValueError(f"OpenCV could not encode the image as {fmt}")
    return buf.tobytes()


def encode_raw(rgb: np.ndarray, encoding: str = "rgb8") -> tuple[int, int, int, bytes]:
    """(width, height, step, data) of an RGB array in ``rgb8``/``bgr8``/``mono8`` (tests, demo)."""
    check_rgb(rgb)
    if encoding == "rgb8":
        out = np.ascontiguousarray(rgb)
    elif encoding == "bgr8":
        out = np.ascontiguousarray(rgb[:, :, ::-1])
    elif encoding == "mono8":
        out = np.ascontiguousarray(rgb.mean(axis=2).astype(np.uint8))
    else:
        raise ValueError(f"encode_raw supports rgb8, bgr8, mono8; got {encoding!r}")
    height, width = rgb.shape[:2]
    return width, height, out.strides[0], out.tobytes()


def check_rgb(rgb: Any) -> None:
    """Raise ValueError unless ``rgb`` is a non-empty ``(H, W, 3) uint8`` array."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        shape = getattr(rgb, "shape", None)
        dtype = getattr(rgb, "dtype", type(rgb).__name__)
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got shape {shape} dtype {dtype}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"empty image {rgb.shape[1]}x{rgb.shape[0]}")
