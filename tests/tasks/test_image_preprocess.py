"""Pictures of any size and polarity become training-like tensors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from service.errors import InvalidInput
from service.tasks.image_preprocessing import ImageSpec, decode_image, preprocess, to_gray

MNIST = ImageSpec(mean=0.0, std=1.0, center="mass")
FASHION = ImageSpec(mean=0.0, std=1.0, center="box")


def drawing(
    size: tuple[int, int], box: tuple[int, int, int, int], ink: int, paper: int, mode: str = "L"
) -> Image.Image:
    image = Image.new(mode, size, paper)
    ImageDraw.Draw(image).rectangle(box, fill=ink)
    return image


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def centre_of_mass(x: np.ndarray) -> tuple[float, float]:
    ys, xs = np.indices(x.shape)
    return float((ys * x).sum() / x.sum()), float((xs * x).sum() / x.sum())


def test_dark_on_light_photo_is_inverted_reframed_and_centred() -> None:
    # A black bar in the top-left corner of a big white page.
    photo = drawing((300, 200), (10, 10, 40, 90), ink=0, paper=255)
    x = preprocess(decode_image(encode(photo), 10**7), MNIST)
    assert x.shape == (1, 28, 28)
    assert x.dtype == np.float32
    frame = x[0]
    assert frame[0, 0] == 0.0  # background is dark now
    assert frame.max() > 0.9  # strokes are light
    cy, cx = centre_of_mass(frame)
    assert abs(cy - 14) < 1 and abs(cx - 14) < 1
    rows = np.flatnonzero(frame.max(axis=1) > 0.5)
    assert 18 <= rows[-1] - rows[0] + 1 <= 21  # the long side fills MNIST's 20-pixel box


def test_box_centering_fills_the_frame() -> None:
    photo = drawing((100, 100), (60, 20, 90, 80), ink=255, paper=0)
    frame = preprocess(decode_image(encode(photo), 10**7), FASHION)[0]
    rows = np.flatnonzero(frame.max(axis=1) > 0.5)
    assert rows[-1] - rows[0] + 1 >= 26


def test_model_sized_picture_is_left_alone_by_default() -> None:
    image = np.zeros((28, 28), dtype=np.float32)
    image[2:8, 2:8] = 1.0
    np.testing.assert_array_equal(preprocess(image, MNIST)[0], image)
    moved = preprocess(image, MNIST, reframe="always")[0]
    assert abs(centre_of_mass(moved)[0] - 14) < 1


def test_normalisation_uses_config_mean_and_std() -> None:
    spec = ImageSpec(mean=0.5, std=0.25)
    x = preprocess(np.ones((28, 28), dtype=np.float32) * 0.0, spec)
    assert np.allclose(x, -2.0)


def test_transparent_canvas_strokes_keep_their_meaning() -> None:
    # White strokes on a transparent canvas (as a browser canvas exports them).
    canvas = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).rectangle((20, 5, 28, 45), fill=(255, 255, 255, 255))
    gray = to_gray(canvas)
    assert gray[0, 0] == 0.0 and gray[25, 24] == 1.0
    # Black strokes on a transparent canvas become black on white, then get inverted.
    canvas = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).rectangle((20, 5, 28, 45), fill=(0, 0, 0, 255))
    frame = preprocess(to_gray(canvas), MNIST)[0]
    assert frame[0, 0] == 0.0 and frame.max() > 0.9


def test_jpeg_and_rgb_are_accepted() -> None:
    photo = drawing((64, 64), (20, 10, 40, 50), ink=0, paper=255).convert("RGB")
    gray = decode_image(encode(photo, "JPEG"), 10**7)
    assert gray.shape == (64, 64)


def test_blank_picture_gives_blank_frame() -> None:
    frame = preprocess(np.ones((40, 40), dtype=np.float32), MNIST)[0]
    assert not frame.any()


@pytest.mark.parametrize(
    "data", [b"", b"hello", encode(drawing((9, 9), (1, 1, 3, 3), 0, 255))[:30]]
)
def test_unreadable_bytes_are_invalid_input(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        decode_image(data, 10**7)
