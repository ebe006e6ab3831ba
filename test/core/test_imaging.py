"""chatspot_ros.service.imaging: raw and compressed image decoding, with its own error type (no ROS)."""
from __future__ import annotations

import array

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatspot_ros.service import imaging
from chatspot_ros.service.imaging import ImageDecodeError, ImageLimits, decode_compressed, decode_raw

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def padded(rows: np.ndarray, pad: int) -> tuple[int, bytes]:
    """Row bytes with ``pad`` junk bytes after each row: (step, data)."""
    flat = rows.reshape(rows.shape[0], -1).view(np.uint8)
    junk = np.full((rows.shape[0], pad), 0xAB, np.uint8)
    out = np.concatenate([flat, junk], axis=1)
    return out.shape[1], out.tobytes()


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize(
    ("encoding", "make"),
    [
        ("rgb8", lambda rgb: rgb),
        ("bgr8", lambda rgb: rgb[:, :, ::-1]),
        ("rgba8", lambda rgb: np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])),
        ("bgra8", lambda rgb: np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 7, np.uint8)])),
        ("8UC3", lambda rgb: rgb[:, :, ::-1]),
    ],
)
def test_8bit_colour_layouts_decode_to_rgb_honouring_step(encoding, make, pad) -> None:
    src = np.ascontiguousarray(make(RGB))
    step, data = padded(src, pad)
    out = decode_raw(encoding, 7, 5, step, data)
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, RGB)


def test_mono8_is_replicated_to_three_channels() -> None:
    gray = RGB[:, :, 0]
    step, data = padded(gray[:, :, None], 1)
    out = decode_raw("mono8", 7, 5, step, data)
    np.testing.assert_array_equal(out, np.dstack([gray] * 3))


@pytest.mark.parametrize("bigendian", [False, True])
def test_16bit_images_honour_byte_order_and_keep_the_high_byte(bigendian: bool) -> None:
    values = RNG.integers(0, 65536, (4, 6, 3)).astype(">u2" if bigendian else "<u2")
    step, data = padded(values, 2)
    out = decode_raw("rgb16", 6, 4, step, data, is_bigendian=bigendian)
    np.testing.assert_array_equal(out, (values.astype(np.uint32) >> 8).astype(np.uint8))
    bgr = np.ascontiguousarray(values[:, :, ::-1])
    out_bgr = decode_raw("bgr16", 6, 4, bgr.strides[0], bgr.tobytes(), is_bigendian=bigendian)
    np.testing.assert_array_equal(out_bgr, out)
    mono = np.ascontiguousarray(values[:, :, 0])
    out_mono = decode_raw("mono16", 6, 4, mono.strides[0], mono.tobytes(), is_bigendian=bigendian)
    np.testing.assert_array_equal(out_mono[:, :, 1], (mono.astype(np.uint32) >> 8).astype(np.uint8))


def test_rgb8_without_padding_is_a_read_only_view_of_the_message_buffer() -> None:
    data = array.array("B", RGB.tobytes())
    out = decode_raw("rgb8", 7, 5, 21, data)
    assert not out.flags.writeable
    data_view = np.frombuffer(data, np.uint8)
    assert np.shares_memory(out, data_view)


def test_yuv422_decodes_and_odd_layouts_fail_clearly() -> None:
    uyvy = np.full((4, 8, 2), 128, np.uint8)
    out = decode_raw("yuv422", 8, 4, 16, uyvy.tobytes())
    assert out.shape == (4, 8, 3)
    assert abs(int(out[0, 0, 0]) - 128) < 3


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        (("rgb8", 0, 0, 0, b""), "zero size"),
        (("rgb8", 4, 0, 12, b""), "zero size"),
        (("rgb8", 4, 4, 12, bytes(12 * 4 - 1)), "needs 48"),
        (("rgb8", 4, 4, 11, bytes(100)), "step 11 is shorter"),
        (("mono16", 4, 4, 7, bytes(100)), "step 7 is shorter"),
        (("weird", 4, 4, 12, bytes(48)), "unsupported image encoding 'weird'"),
        (("32FC1", 4, 4, 16, bytes(64)), "unsupported image encoding"),
        (("rgb8", 16384, 16384, 16384 * 3, b""), "larger than the limit"),
    ],
)
def test_bad_raw_images_raise_image_decode_error(fields, needle) -> None:
    with pytest.raises(ImageDecodeError, match=needle):
        decode_raw(*fields)


def test_limits_count_pixels_too() -> None:
    limits = ImageLimits(max_width=100, max_height=100, max_pixels=50)
    with pytest.raises(ImageDecodeError, match="pixels"):
        decode_raw("mono8", 10, 10, 10, bytes(100), limits=limits)
    with pytest.raises(ValueError):
        ImageLimits(max_pixels=0)


def test_image_decode_error_is_a_value_error() -> None:
    assert issubclass(ImageDecodeError, ValueError)


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 40), height=st.integers(1, 30), pad=st.integers(0, 9),
       encoding=st.sampled_from(["rgb8", "bgr8", "mono8"]))
def test_roundtrip_any_size_and_padding(width: int, height: int, pad: int, encoding: str) -> None:
    rgb = np.random.default_rng(width * 100 + height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    if encoding == "mono8":
        rgb = np.dstack([rgb[:, :, 0]] * 3)
    _, _, _, data = imaging.encode_raw(rgb, encoding)
    rows = np.frombuffer(data, np.uint8).reshape(height, -1)
    step, padded_data = padded(rows[:, :, None], pad)
    np.testing.assert_array_equal(decode_raw(encoding, width, height, step, padded_data), rgb)


# -- compressed ------------------------------------------------------------------------------


def test_png_roundtrip_is_exact_and_jpeg_is_close() -> None:
    rgb = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_compressed(imaging.encode_compressed(rgb, "png"), "png"), rgb)
    smooth = np.zeros((24, 32, 3), np.uint8)
    smooth[:, :, 0] = 200
    jpeg = decode_compressed(imaging.encode_compressed(smooth, "jpeg"), "bgr8; jpeg compressed bgr8")
    assert np.abs(jpeg.astype(int) - smooth).max() < 8
    assert imaging.inspect_compressed(imaging.encode_compressed(rgb, "jpeg")) == ("jpeg", 32, 24)


def _smooth_scene(width: int, height: int) -> np.ndarray:
    """Gradients and blocks: JPEG-friendly, with edges at odd places."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 255 // (width + height)], -1)
    rgb[height // 3: height // 2, width // 5: width // 2] = (200, 40, 90)
    return rgb.astype(np.uint8)


@pytest.mark.parametrize("reduction", [2, 4, 8])
@pytest.mark.parametrize("size", [(320, 240), (333, 181)])  # the second is not a multiple of 8
def test_reduced_jpeg_decode_is_an_area_downsample(reduction: int, size: tuple[int, int]) -> None:
    cv2 = pytest.importorskip("cv2")
    width, height = size
    jpeg = imaging.encode_compressed(_smooth_scene(width, height), "jpeg", quality=95)
    full = decode_compressed(jpeg, "jpeg")
    small = decode_compressed(jpeg, "jpeg", reduction=reduction)
    out_w, out_h = imaging.reduced_size(width, height, reduction)
    assert (out_w, out_h) == (-(-width // reduction), -(-height // reduction))
    assert small.shape == (out_h, out_w, 3) and small.dtype == np.uint8
    reference = cv2.resize(full, (out_w, out_h), interpolation=cv2.INTER_AREA)
    # Same picture, same channel order. When a side is not a multiple of the reduction, the DCT's
    # last block is partial, so its sampling grid is off INTER_AREA's by a fraction of a pixel.
    exact = width % reduction == 0 and height % reduction == 0
    assert np.abs(small.astype(int) - reference).mean() < (1.0 if exact else 3.0)
    assert np.median(np.abs(small.astype(int) - reference)) <= 2


def test_reduction_is_ignored_for_png_and_checked() -> None:
    rgb = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    png = imaging.encode_compressed(rgb, "png")
    np.testing.assert_array_equal(decode_compressed(png, "png", reduction=4), rgb)  # full size
    with pytest.raises(ValueError, match="reduction"):
        decode_compressed(imaging.encode_compressed(rgb, "jpeg"), reduction=3)


def test_corrupt_compressed_data_raises() -> None:
    rgb = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    jpeg = imaging.encode_compressed(rgb, "jpeg")
    png = bytearray(imaging.encode_compressed(rgb, "png"))
    with pytest.raises(ImageDecodeError, match="no data"):
        decode_compressed(b"")
    with pytest.raises(ImageDecodeError, match="neither JPEG nor PNG"):
        decode_compressed(bytes(RNG.integers(0, 256, 300, dtype=np.uint8)))
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_compressed(jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_compressed(bytes(png[:-20]))
    with pytest.raises(ImageDecodeError, match="no frame header|corrupt"):
        decode_compressed(b"\xff\xd8\xff\xe0\x00\x04ab\xff\xd9")
    huge = bytearray(png)
    huge[16:24] = (16384).to_bytes(4, "big") * 2
    with pytest.raises(ImageDecodeError, match="larger than the limit"):
        decode_compressed(bytes(huge))
    with pytest.raises(ImageDecodeError, match="compressed depth"):
        decode_compressed(bytes(png), "16UC1; compressedDepth png")
    limits = ImageLimits(max_compressed_bytes=10)
    with pytest.raises(ImageDecodeError, match="bytes"):
        decode_compressed(jpeg, limits=limits)


def test_garbage_between_valid_markers_is_not_decoded_silently() -> None:
    rgb = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    jpeg = bytearray(imaging.encode_compressed(rgb, "jpeg"))
    header_end = jpeg.index(b"\xff\xda")  # start of scan: keep the header, destroy the rest
    broken = bytes(jpeg[:header_end]) + b"\x00" * 10 + b"\xff\xd9"
    with pytest.raises(ImageDecodeError):
        decode_compressed(broken)
