"""Classification post-processing: probabilities -> top-k labelled predictions, and the
out-of-distribution check of config.json's `ood` section (docs/model-repository.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# How unlike the training pictures a picture is; higher = more out of distribution.
#   energy       -T logsumexp(z / T) of the logits z (Liu et al. 2020, energy-based OOD detection)
#   max-logit    -max z               (Hendrycks et al. 2022, "Scaling OOD detection")
#   max-softmax  -max softmax(z)      (Hendrycks & Gimpel 2017, the baseline)
#   pixel-statistics         Mahalanobis distance of four statistics of the prepared picture
#                            (PIXEL_STATISTICS) from those of the training pictures
#   energy+pixel-statistics  the sum of both, each standardised on held-out training pictures
#   feature-mahalanobis      computed by the graph itself into the output `ood.output`: the
#                            distance of the picture's activations from the training pictures'
#                            class Gaussians (Lee et al. 2018; training/classifiers/ood_features.py)
#   feature-knn              the same, as the distance to the nearest of a bank of training
#                            pictures' activations (Sun et al. 2022)
LOGIT_SCORES = ("energy", "max-logit", "max-softmax")
PIXEL_SCORES = ("pixel-statistics", "energy+pixel-statistics")
GRAPH_SCORES = ("feature-mahalanobis", "feature-knn")
OOD_SCORES = LOGIT_SCORES + PIXEL_SCORES + GRAPH_SCORES
PIXEL_STATISTICS = ("mean", "ink", "variation", "std")  # see pixel_statistics


def top_k(probabilities: np.ndarray, labels: tuple[str, ...], k: int) -> list[list[dict[str, Any]]]:
    """One list of the k most probable classes per row, most probable first."""
    k = min(k, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [
        [
            {
                "label": labels[i] if i < len(labels) else str(i),
                "index": int(i),
                "probability": float(row[i]),
            }
            for i in idx
        ]
        for row, idx in zip(probabilities, order, strict=True)
    ]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probabilities: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return probabilities


def ood_scores(logits: np.ndarray, score: str, temperature: float = 1.0) -> np.ndarray:
    """One out-of-distribution score of the logits (N, classes) per row: higher = less like the
    pictures the classifier was trained on."""
    z = logits.astype(np.float64)
    if score == "energy":
        top = z.max(axis=1)
        spread = np.log(np.exp((z - top[:, None]) / temperature).sum(axis=1))
        return np.asarray(-(top + temperature * spread))
    if score == "max-logit":
        return np.asarray(-z.max(axis=1))
    if score == "max-softmax":
        return np.asarray(-softmax(z).max(axis=1))
    if score in GRAPH_SCORES:  # the graph's own score output, one number per row
        return np.asarray(z.reshape(len(z), -1)[:, 0])
    raise ValueError(f"unknown score {score!r} (known: {', '.join(LOGIT_SCORES + GRAPH_SCORES)})")


def pixel_statistics(pictures: np.ndarray) -> np.ndarray:
    """(N, 4) statistics of prepared pictures (N, ..., H, W) with intensities in [0, 1]: mean
    intensity, share of pixels above 0.5 ("ink"), mean absolute difference between neighbouring
    pixels ("variation": high for noise and texture) and the standard deviation."""
    x = pictures.reshape(len(pictures), *pictures.shape[-2:]).astype(np.float64)
    variation = np.abs(np.diff(x, axis=1)).mean(axis=(1, 2)) + np.abs(np.diff(x, axis=2)).mean(
        axis=(1, 2)
    )
    return np.stack(
        [x.mean(axis=(1, 2)), (x > 0.5).mean(axis=(1, 2)), variation, x.std(axis=(1, 2))], 1
    )


@dataclass(frozen=True)
class PixelModel:
    """A Gaussian over the training pictures' pixel statistics, and how to standardise scores."""

    mean: np.ndarray  # (4,)
    precision: np.ndarray  # (4, 4): the inverse covariance
    standardise: dict[str, tuple[float, float]]  # score -> (mean, std) on held-out pictures

    def distance(self, pictures: np.ndarray) -> np.ndarray:
        d = pixel_statistics(pictures) - self.mean  # (N, 4)
        return np.asarray(((d @ self.precision) * d).sum(axis=1))

    def to_config(self) -> dict[str, Any]:
        return {
            "features": list(PIXEL_STATISTICS),
            "mean": self.mean.tolist(),
            "precision": self.precision.tolist(),
            "standardise": {k: list(v) for k, v in self.standardise.items()},
        }

    @classmethod
    def from_config(cls, section: Any) -> PixelModel:
        if not isinstance(section, dict) or section.get("features") != list(PIXEL_STATISTICS):
            raise ValueError(f"ood.pixels must say features {list(PIXEL_STATISTICS)}")
        n = len(PIXEL_STATISTICS)
        try:
            mean = np.asarray(section["mean"], dtype=np.float64)
            precision = np.asarray(section["precision"], dtype=np.float64)
            standardise = {
                k: (float(section["standardise"][k][0]), float(section["standardise"][k][1]))
                for k in ("energy", "pixel-statistics")
            }
        except (KeyError, TypeError, ValueError, IndexError):
            raise ValueError(
                "ood.pixels needs mean, precision and standardise {energy, pixel-statistics}"
            ) from None
        if mean.shape != (n,) or precision.shape != (n, n) or not np.isfinite(precision).all():
            raise ValueError(f"ood.pixels: mean must have {n} numbers and precision {n}x{n}")
        if not all(std > 0 for _, std in standardise.values()):
            raise ValueError("ood.pixels.standardise: each std must be > 0")
        return cls(mean, precision, standardise)

    def score(self, score: str, logits: np.ndarray, pictures: np.ndarray) -> np.ndarray:
        distance = self.distance(pictures)
        if score == "pixel-statistics":
            return distance
        center, scale = self.standardise["pixel-statistics"]
        energy_center, energy_scale = self.standardise["energy"]
        energy = ood_scores(logits, "energy")
        return (energy - energy_center) / energy_scale + (distance - center) / scale


@dataclass(frozen=True)
class OodSpec:
    """config.json's `ood` section: a score of the logits (and, for the pixel scores, of the
    prepared picture) and the threshold above which a picture is flagged out of distribution
    (fitted by `python -m training ood`)."""

    version: int  # the model version the threshold was fitted on; others get no flag
    score: str
    threshold: float
    temperature: float = 1.0
    output: str = "logits"  # the graph output the score is computed from (or, GRAPH_SCORES, is)
    pixels: PixelModel | None = None  # for PIXEL_SCORES

    @property
    def needs_pictures(self) -> bool:
        return self.score in PIXEL_SCORES

    @classmethod
    def from_config(cls, section: Any) -> OodSpec:
        if not isinstance(section, dict):
            raise ValueError("ood must be an object")
        known = {"version", "score", "threshold", "temperature", "output", "tpr", "pixels"}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"ood: unknown fields {unknown} (known: {sorted(known)})")
        score, version = section.get("score"), section.get("version")
        if score not in OOD_SCORES:
            raise ValueError(f"ood.score must be one of {list(OOD_SCORES)}, not {score!r}")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ValueError("ood.version must be the version the threshold was fitted on")
        threshold, temperature = section.get("threshold"), section.get("temperature", 1.0)
        if not isinstance(threshold, int | float) or not np.isfinite(threshold):
            raise ValueError("ood.threshold must be a number")
        if not isinstance(temperature, int | float) or not temperature > 0:
            raise ValueError("ood.temperature must be a number > 0")
        if (score in PIXEL_SCORES) != ("pixels" in section):
            raise ValueError(
                f"ood.pixels is needed by, and only by, the scores {list(PIXEL_SCORES)}"
            )
        pixels = PixelModel.from_config(section["pixels"]) if "pixels" in section else None
        output = str(section.get("output", "logits"))
        if score in GRAPH_SCORES and output == "logits":
            raise ValueError(f"ood.output must name the graph output that holds the {score} score")
        return cls(version, score, float(threshold), float(temperature), output, pixels)

    def scores(self, logits: np.ndarray, pictures: np.ndarray | None = None) -> np.ndarray:
        """One score per row; `pictures`: the prepared pictures (N, 1, H, W) in [0, 1], needed
        by the pixel scores."""
        if self.pixels is None:
            return ood_scores(logits, self.score, self.temperature)
        assert pictures is not None, f"the {self.score} score needs the pictures"
        return self.pixels.score(self.score, logits, pictures)

    def check(self, logits: np.ndarray, pictures: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Per row: the score, the threshold and whether the picture looks in distribution."""
        return [
            {
                "score": float(s),
                "threshold": self.threshold,
                "in_distribution": bool(s <= self.threshold),
            }
            for s in self.scores(logits, pictures)
        ]
