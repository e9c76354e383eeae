"""The image datasets: IDX files, user folders, splits, normalisation and the missing-data error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from training.data import images
from training.data.images import (
    IDX_FILES,
    DatasetMissing,
    load_dataset,
    load_test_split,
    read_idx,
    write_idx,
)


def write_idx_folder(folder: Path, n_train: int = 40, n_test: int = 10, gz: bool = False) -> None:
    """Four IDX files of random 28x28 images with labels 0..2."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("test", n_test)):
        write_idx(folder / (IDX_FILES[split, "images"] + suffix), rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / (IDX_FILES[split, "labels"] + suffix), np.arange(n) % 3)


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_idx_round_trip_plain_and_gzip(tmp_path: Path, name: str) -> None:
    array = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    write_idx(tmp_path / name, array)
    assert (tmp_path / name).read_bytes()[:2] == (b"\x1f\x8b" if name.endswith(".gz") else b"\0\0")
    np.testing.assert_array_equal(read_idx(tmp_path / name), array)


def test_idx_header_is_checked(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x08\x03\x00\x01garbage")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((3, 4), dtype=np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize("gz", [False, True])
def test_user_idx_folder(tmp_path: Path, gz: bool) -> None:
    write_idx_folder(tmp_path / "mine", gz=gz)
    data = load_dataset("mine", data_dir=tmp_path / "mine")
    assert data.labels == ["0", "1", "2"]
    assert data.splits() == {"train": 36, "validation": 4, "test": 10}
    assert data.train_x.shape == (36, 1, 28, 28) and data.train_x.dtype == torch.float32
    assert data.train_y.dtype == torch.int64
    assert len(data.sha256) == 4 and all(len(h) == 64 for h in data.sha256.values())
    # normalised with statistics of the training split
    pixels = np.concatenate([data.train_x.numpy(), data.val_x.numpy()]) * data.std + data.mean
    assert abs(pixels.mean() - data.mean) < 1e-3


def test_data_dir_may_hold_the_dataset_folder(tmp_path: Path) -> None:
    write_idx_folder(tmp_path / "mnist", gz=True)
    data = load_dataset("mnist", data_dir=tmp_path)
    assert data.labels == [str(i) for i in range(10)]
    assert (data.mean, data.std) == (0.1307, 0.3081)  # a known dataset keeps its statistics


def test_validation_split_is_fixed_and_disjoint(tmp_path: Path) -> None:
    write_idx_folder(tmp_path, n_train=200)
    first, second = load_dataset("x", data_dir=tmp_path), load_dataset("x", data_dir=tmp_path)
    assert torch.equal(first.val_x, second.val_x)
    train_rows = {row.tobytes() for row in first.train_x.numpy()}
    assert not any(row.tobytes() in train_rows for row in first.val_x.numpy())


def test_missing_dataset_says_how_to_fetch_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(images, "DATA_DIR", tmp_path)
    with pytest.raises(DatasetMissing) as error:
        load_dataset("fashion-mnist")
    message = str(error.value)
    assert "make data" in message and "scripts/fetch_data.sh" in message
    assert "Fashion-MNIST" in message and str(tmp_path / "fashion-mnist") in message
    with pytest.raises(DatasetMissing, match="make data"):
        load_test_split("mnist", data_dir=tmp_path / "nothing")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")


def test_image_folder(tmp_path: Path) -> None:
    """Pictures of any size, dark shapes on white: inverted and reframed into 28x28."""
    for name, box in (("disc", (20, 20, 44, 44)), ("bar", (28, 8, 36, 56))):
        (tmp_path / name).mkdir()
        for i in range(6):
            picture = Image.new("L", (64 + 8 * i, 64), 255)
            ImageDraw.Draw(picture).ellipse((box[0] + i, box[1], box[2] + i, box[3]), fill=0)
            picture.convert("RGB").save(tmp_path / name / f"{i}.png")
    (tmp_path / "bar" / "notes.txt").write_text("not a picture")
    data = load_dataset("shapes", image_folder=tmp_path)
    assert data.labels == ["bar", "disc"]
    assert sum(data.splits().values()) == 12
    assert data.preprocessing()["center"] == "box"
    assert data.train_x.shape[1:] == (1, 28, 28)
    pixels = data.train_x * data.std + data.mean  # back to [0, 1]
    assert float(pixels[:, :, 0, 0].max()) < 0.05, "light background should be inverted to dark"
    assert float(pixels.amax()) > 0.9, "the object should be light"
    assert set(data.sha256) == {"images"}


def test_image_folder_needs_classes(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "only" / "a.png")
    with pytest.raises(DatasetMissing, match="one sub-folder of pictures per class"):
        load_dataset("x", image_folder=tmp_path)


def test_digits_look_like_mnist() -> None:
    data = load_dataset("digits")
    assert data.splits() == {"train": 1295, "validation": 143, "test": 359}
    assert data.train_x.shape == (1295, 1, 28, 28)
    pixels = data.train_x * data.std + data.mean
    assert float(pixels[:, :, :4].abs().max()) < 1e-5, "the 20x20 box leaves a dark margin"
    assert abs(float(data.train_x.mean())) < 0.05 and abs(float(data.train_x.std()) - 1) < 0.05
    test = load_test_split("digits")
    expected = (data.test_x * data.std + data.mean).mul(255).round().squeeze(1).to(torch.uint8)
    np.testing.assert_array_equal(test.images, expected.numpy())
