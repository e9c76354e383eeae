"""The feature scores of the out-of-distribution flag: how far a picture's activations lie from
the training pictures', computed inside the classifier's graph.

For each chosen layer of a convolutional classifier, a picture is summarised by the mean and the
standard deviation of every channel over the picture (a fully connected layer: its activations as
they are). Two ways to measure the distance of a summary from the training pictures':

- feature-mahalanobis (Lee et al. 2018, "A simple unified framework for detecting
  out-of-distribution samples and adversarial attacks"): the training pictures of each class give
  a Gaussian over the summary, all classes sharing one covariance; the layer's distance is the
  squared Mahalanobis distance to the nearest class mean;
- feature-knn (Sun et al. 2022, "Out-of-distribution detection with deep nearest neighbors"):
  the summaries of a bank of training pictures, scaled to length 1; the layer's distance is 1 -
  the cosine similarity to the nearest of them. No shape is assumed for the training pictures'
  cloud, so a picture in a gap between classes (a face crop among the shirts) is not taken for
  one of them.

Each layer's distance is standardised on the validation split; the picture's score is the sum
over the layers. `with_head` appends exactly that computation to the graph as one more output,
`ood_score` (N,), so the service reads the score off onnxruntime's outputs (config.json:
`"score": "feature-knn", "output": "ood_score"`) with no other model and no statistics to carry;
`FeatureScore.numpy` is the same computation, to choose the layers and check the graph against.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from training.generators.generator_eval import penultimate_tensor
from training.onnx_export import onnx_session

OUTPUT = "ood_score"  # the graph output the head adds
PREFIX = "ood_head/"  # names of the head's nodes and tensors
SHRINK = 1e-3  # covariance + SHRINK * mean variance * I: invertible on few pictures
# training pictures a feature-knn layer keeps (docs/models.md: 2,000 to 20,000 compared)
BANK = 5000
EPSILON = 1e-6  # the smallest norm a summary is divided by (an all-zero summary stays zero)
BATCH = 250


def convolutional_tensors(model: onnx.ModelProto) -> list[str]:
    """Every Relu output of rank 4 (a convolutional layer's activations), in graph order."""
    inferred = shape_inference.infer_shapes(model)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in inferred.graph.value_info}
    return [
        node.output[0]
        for node in model.graph.node
        if node.op_type == "Relu" and ranks.get(node.output[0]) == 4
    ]


def strip_head(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph without a head `with_head` added (a copy; the graph itself if it has none)."""
    if OUTPUT not in {o.name for o in model.graph.output}:
        return model
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    graph = stripped.graph
    kept_outputs = [o for o in graph.output if o.name != OUTPUT]
    kept_nodes = [n for n in graph.node if not n.name.startswith(PREFIX)]
    kept_inits = [i for i in graph.initializer if not i.name.startswith(PREFIX)]
    for field, kept in (
        ("output", kept_outputs),
        ("node", kept_nodes),
        ("initializer", kept_inits),
    ):
        del getattr(graph, field)[:]
        getattr(graph, field).extend(kept)
    return stripped


class SummaryProbe:
    """A classifier graph with its layers' summaries (see the module docstring) exposed."""

    def __init__(self, model: onnx.ModelProto, threads: int = 1) -> None:
        base = strip_head(model)
        # the layers a feature score may use: the convolutional ones (pooled), then the
        # penultimate features (the input of the last fully connected layer)
        self.pooled = convolutional_tensors(base)
        self.tensors = [*self.pooled, penultimate_tensor(base)]
        self.input_name = base.graph.input[0].name
        exposed = onnx.ModelProto()
        exposed.CopyFrom(base)
        present = {o.name for o in exposed.graph.output}
        for name in self.tensors:
            if name not in present:
                exposed.graph.output.append(
                    helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                )
        self.session = onnx_session(exposed.SerializeToString(), threads)

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Prepared pictures (N, 1, H, W) -> each layer's summary (N, D), float64."""
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.tensors}
        for i in range(0, len(images), BATCH):
            arrays = self.session.run(self.tensors, {self.input_name: images[i : i + BATCH]})
            for name, array in zip(self.tensors, arrays, strict=True):
                parts[name].append(summarise(array))
        return {name: np.concatenate(p) for name, p in parts.items()}


def summarise(array: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> per channel mean then standard deviation (N, 2C); (N, D) as it is."""
    x = array.astype(np.float64)
    if x.ndim == 2:
        return x
    return np.concatenate([x.mean(axis=(2, 3)), x.std(axis=(2, 3))], axis=1)


@dataclass(frozen=True)
class LayerGaussian:
    """Class means (classes, D) and the shared covariance's inverse as a factor: the squared
    distance of x to mean m is ||(x - m) @ factor||^2."""

    tensor: str
    pooled: bool  # a convolutional layer, summarised by its channels' means and stds
    means: np.ndarray
    factor: np.ndarray
    center: float = 0.0  # the validation split's mean and std of the distance
    scale: float = 1.0

    @classmethod
    def fit(
        cls, tensor: str, pooled: bool, summaries: np.ndarray, labels: np.ndarray
    ) -> LayerGaussian:
        classes = np.unique(labels)
        means = np.stack([summaries[labels == c].mean(axis=0) for c in classes])
        centered = summaries - means[np.searchsorted(classes, labels)]
        covariance = centered.T @ centered / len(summaries)
        shrink = SHRINK * np.trace(covariance) / len(covariance)
        precision = np.linalg.inv(covariance + shrink * np.eye(len(covariance)))
        factor = np.linalg.cholesky((precision + precision.T) / 2)  # precision = factor factor^T
        return cls(tensor, pooled, means, factor)

    def distance(self, summaries: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance to the nearest class mean, (N,)."""
        projected = summaries @ self.factor  # (N, D)
        centres = self.means @ self.factor  # (classes, D)
        gaps = projected[:, None, :] - centres[None, :, :]
        return np.asarray((gaps**2).sum(axis=2).min(axis=1))

    def standardised(self, validation: np.ndarray) -> LayerGaussian:
        return standardised(self, validation)


@dataclass(frozen=True)
class LayerBank:
    """The summaries of `BANK` training pictures, each scaled to length 1 (float16 values, as
    the graph stores them): the distance of x is 1 - its cosine similarity to the nearest."""

    tensor: str
    pooled: bool
    bank: np.ndarray  # (M, D)
    center: float = 0.0
    scale: float = 1.0

    @classmethod
    def fit(cls, tensor: str, pooled: bool, summaries: np.ndarray, size: int = BANK) -> LayerBank:
        bank = unit_rows(summaries[:size]).astype(np.float16).astype(np.float32)
        return cls(tensor, pooled, bank)

    def distance(self, summaries: np.ndarray) -> np.ndarray:
        """1 - cosine similarity to the nearest bank row, (N,)."""
        similarity = unit_rows(summaries).astype(np.float32) @ self.bank.T
        return np.asarray(1.0 - similarity.max(axis=1), dtype=np.float64)

    def standardised(self, validation: np.ndarray) -> LayerBank:
        return standardised(self, validation)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), EPSILON))


Layer = LayerGaussian | LayerBank
L = TypeVar("L", LayerGaussian, LayerBank)


def standardised(layer: L, validation: np.ndarray) -> L:
    """The layer with the mean and spread of its distances on the validation summaries."""
    d = layer.distance(validation)
    return replace(layer, center=float(d.mean()), scale=float(d.std() or 1.0))


KINDS: dict[type, str] = {LayerGaussian: "feature-mahalanobis", LayerBank: "feature-knn"}


@dataclass(frozen=True)
class FeatureScore:
    """The sum over some layers (all of one kind) of their standardised distances."""

    layers: tuple[Layer, ...]

    @property
    def score(self) -> str:
        """Its name in config.json's `ood.score` (service/tasks/class_scores.py GRAPH_SCORES)."""
        (kind,) = {KINDS[type(g)] for g in self.layers}
        return kind

    @property
    def label(self) -> str:
        return f"{self.score}(" + "+".join(g.tensor for g in self.layers) + ")"

    def numpy(self, summaries: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(
            sum((g.distance(summaries[g.tensor]) - g.center) / g.scale for g in self.layers)
        )


def fit_layers(
    probe: SummaryProbe,
    train: dict[str, np.ndarray],
    labels: np.ndarray,
    validation: dict[str, np.ndarray],
    bank: int = BANK,
) -> dict[str, list[Layer]]:
    """Every layer's Gaussian and bank, fitted on training summaries (the bank: the first
    `bank` of them), standardised on validation ones."""
    return {
        tensor: [
            LayerGaussian.fit(tensor, tensor in probe.pooled, train[tensor], labels).standardised(
                validation[tensor]
            ),
            LayerBank.fit(tensor, tensor in probe.pooled, train[tensor], bank).standardised(
                validation[tensor]
            ),
        ]
        for tensor in probe.tensors
    }


def candidates(layers: dict[str, list[Layer]]) -> list[FeatureScore]:
    """The feature scores compared, of each kind: each layer alone, every pair of layers (the
    bank), and all of them together."""
    found = []
    for kind in KINDS:
        mine = [g for fitted in layers.values() for g in fitted if type(g) is kind]
        found += [FeatureScore((g,)) for g in mine]
        if kind is LayerBank:
            found += [FeatureScore(pair) for pair in itertools.combinations(mine, 2)]
        if len(mine) > 2 or (len(mine) == 2 and kind is LayerGaussian):
            found.append(FeatureScore(tuple(mine)))
    return found


# ---------------------------------------------------------------------------------------------
# The head: the same arithmetic as FeatureScore.numpy, as ONNX nodes (float32)


def with_head(model: onnx.ModelProto, score: FeatureScore) -> onnx.ModelProto:
    """A copy of the classifier's graph (any earlier head removed) with `ood_score` (N,) added."""
    headed = onnx.ModelProto()
    headed.CopyFrom(strip_head(model))
    graph = headed.graph
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), PREFIX + name))
        return PREFIX + name

    def node(op: str, inputs: Sequence[str], name: str, **attrs: int) -> str:
        made = helper.make_node(op, list(inputs), [PREFIX + name], name=PREFIX + name)
        made.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
        nodes.append(made)
        return PREFIX + name

    spatial = const("spatial_axes", np.array([2, 3], dtype=np.int64))
    middle = const("middle_axis", np.array([1], dtype=np.int64))
    terms = []
    for i, g in enumerate(score.layers):
        x = g.tensor
        if isinstance(g, LayerGaussian) and len(g.means[0]) != g.factor.shape[0]:
            raise ValueError(f"{g.tensor}: means and factor disagree")
        if g.pooled:  # a convolutional layer: each channel's mean and std
            mean = node("ReduceMean", [x, spatial], f"{i}/mean", keepdims=1)
            gap = node("Sub", [x, mean], f"{i}/gap")
            var = node("ReduceMean", [node("Mul", [gap, gap], f"{i}/gap2"), spatial], f"{i}/var")
            std = node("Sqrt", [var], f"{i}/std")
            flat_mean = node("Flatten", [mean], f"{i}/flat_mean", axis=1)
            flat_std = node("Flatten", [std], f"{i}/flat_std", axis=1)
            x = node("Concat", [flat_mean, flat_std], f"{i}/summary", axis=1)
        if isinstance(g, LayerBank):
            # 1 - max over the bank of unit(x) . b; the bank kept in float16 (half the bytes)
            norm = node("ReduceL2", [x, middle], f"{i}/norm", keepdims=1)
            floor = const(f"{i}/epsilon", np.array(EPSILON, np.float32))
            unit = node("Div", [x, node("Max", [norm, floor], f"{i}/norm_floor")], f"{i}/unit")
            stored = const(f"{i}/bank", g.bank.T.astype(np.float16))  # (D, M)
            bank = node("Cast", [stored], f"{i}/bank32", to=TensorProto.FLOAT)
            similarity = node("MatMul", [unit, bank], f"{i}/similarity")  # (N, M)
            closest = node("ReduceMax", [similarity, middle], f"{i}/closest", keepdims=0)
            one = const(f"{i}/one", np.array(1.0, np.float32))
            nearest = node("Sub", [one, closest], f"{i}/nearest")  # (N,)
        else:
            factor = const(f"{i}/factor", g.factor.astype(np.float32))
            centres = const(f"{i}/centres", (g.means @ g.factor).astype(np.float32))
            projected = node("MatMul", [x, factor], f"{i}/projected")  # (N, D)
            lifted = node("Unsqueeze", [projected, middle], f"{i}/lifted")  # (N, 1, D)
            gaps = node("Sub", [lifted, centres], f"{i}/gaps")  # (N, classes, D)
            squared = node("Mul", [gaps, gaps], f"{i}/squared")
            feature_axis = const(f"{i}/feature_axis", np.array([2], dtype=np.int64))
            distances = node("ReduceSum", [squared, feature_axis], f"{i}/distances", keepdims=0)
            nearest = node("ReduceMin", [distances, middle], f"{i}/nearest", keepdims=0)  # (N,)
        shifted = node(
            "Sub", [nearest, const(f"{i}/center", np.array(g.center, np.float32))], f"{i}/c"
        )
        terms.append(
            node("Div", [shifted, const(f"{i}/scale", np.array(g.scale, np.float32))], f"{i}/z")
        )
    total = terms[0] if len(terms) == 1 else node("Sum", terms, "sum")
    nodes.append(helper.make_node("Identity", [total], [OUTPUT], PREFIX + "output"))
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    batch = graph.output[0].type.tensor_type.shape.dim[0]
    out = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [batch.dim_param or None])
    graph.output.append(out)
    onnx.checker.check_model(headed)
    return headed
