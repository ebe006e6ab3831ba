"""The frame as the served model must receive it: padded when Φ assumed a padded square, encoded once."""
from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from chatspot_ros.referring.geometry import square_padding

MIME = {"png": "image/png", "jpeg": "image/jpeg"}


@dataclass(frozen=True)
class PreparedImage:
    """One frame, ready to attach to every request about it."""

    data_url: str  # data:image/png;base64,...
    source_size: tuple[int, int]  # (width, height) of the camera frame (what Φ normalized against)
    sent_size: tuple[int, int]  # (width, height) of the picture sent (the padded square in pad mode)
    padded: bool
    bytes: int  # encoded size


def expand_to_square(frame: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """(H, W, 3) -> (S, S, 3), S = max(H, W), the frame centred on ``background`` (LLaVA's
    expand2square; the same square ``runtime.vision.ImagePreprocessor`` feeds the local model)."""
    height, width = frame.shape[:2]
    if height == width:
        return frame
    pad_x, pad_y, side = square_padding(width, height)
    square = np.empty((side, side, 3), dtype=np.uint8)
    square[...] = np.asarray(background, dtype=np.uint8)
    square[pad_y:pad_y + height, pad_x:pad_x + width, :] = frame
    return square


def check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"a frame must be a numpy array, got {type(frame).__name__}")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or 0 in frame.shape[:2]:
        raise ValueError(f"a frame must be a non-empty H x W x 3 uint8 RGB array, got {frame.dtype} {frame.shape}")


def encode_image(rgb: np.ndarray, image_format: str, jpeg_quality: int = 95) -> bytes:
    """PNG (lossless) or JPEG bytes of an (H, W, 3) uint8 RGB array."""
    import cv2

    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    if image_format == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    elif image_format == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    else:
        raise ValueError(f"image format must be png or jpeg, got {image_format!r}")
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} frame as {image_format}")
    return buf.tobytes()


def prepare_image(frame: np.ndarray, *, pad_to_square: bool, background: tuple[int, int, int],
                  image_format: str, jpeg_quality: int = 95) -> PreparedImage:
    check_frame(frame)
    height, width = frame.shape[:2]
    picture = expand_to_square(frame, background) if pad_to_square else frame
    data = encode_image(picture, image_format, jpeg_quality)
    url = f"data:{MIME[image_format]};base64,{base64.b64encode(data).decode('ascii')}"
    return PreparedImage(url, (width, height), (picture.shape[1], picture.shape[0]),
                         pad_to_square and height != width, len(data))


def decode_data_url(url: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a data URL (tests, and checking what a server receives)."""
    import cv2

    header, _, payload = url.partition(",")
    if not header.startswith("data:image/") or ";base64" not in header:
        raise ValueError(f"not a base64 image data URL: {url[:40]!r}")
    bgr = cv2.imdecode(np.frombuffer(base64.b64decode(payload), dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("the data URL does not hold an image OpenCV can read")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
