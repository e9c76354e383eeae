"""The feature score of the out-of-distribution flag: how far a picture's activations lie from
the training pictures' (Lee et al. 2018, "A simple unified framework for detecting
out-of-distribution samples and adversarial attacks"), computed inside the classifier's graph.

For each chosen layer of a convolutional classifier, a picture is summarised by the mean and the
standard deviation of every channel over the picture (a fully connected layer: its activations as
they are); the training pictures of each class give a Gaussian over that summary, all classes
sharing one covariance. The layer's score is the squared Mahalanobis distance to the nearest
class mean, standardised on the validation split; the picture's score is the sum over the layers.

`with_head` appends exactly that computation to the graph as one more output, `ood_score` (N,),
so the service reads the score off onnxruntime's outputs (config.json: `"score":
"feature-mahalanobis", "output": "ood_score"`) with no other model and no statistics to carry;
`FeatureScore.numpy` is the same computation, to choose the layers and check the graph against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from training.generators.generator_eval import penultimate_tensor
from training.onnx_export import onnx_session

OUTPUT = "ood_score"  # the graph output the head adds
PREFIX = "ood_head/"  # names of the head's nodes and tensors
SHRINK = 1e-3  # covariance + SHRINK * mean variance * I: invertible on few pictures
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
        d = self.distance(validation)
        return replace(self, center=float(d.mean()), scale=float(d.std() or 1.0))


@dataclass(frozen=True)
class FeatureScore:
    """The sum over some layers of their standardised distances."""

    layers: tuple[LayerGaussian, ...]

    @property
    def label(self) -> str:
        return "feature-mahalanobis(" + "+".join(g.tensor for g in self.layers) + ")"

    def numpy(self, summaries: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(
            sum((g.distance(summaries[g.tensor]) - g.center) / g.scale for g in self.layers)
        )


def fit_layers(
    probe: SummaryProbe,
    train: dict[str, np.ndarray],
    labels: np.ndarray,
    validation: dict[str, np.ndarray],
) -> dict[str, LayerGaussian]:
    """Every layer's Gaussian, fitted on training summaries, standardised on validation ones."""
    return {
        tensor: LayerGaussian.fit(
            tensor, tensor in probe.pooled, train[tensor], labels
        ).standardised(validation[tensor])
        for tensor in probe.tensors
    }


def candidates(layers: dict[str, LayerGaussian]) -> list[FeatureScore]:
    """The feature scores compared: each layer alone, and all of them together."""
    alone = [FeatureScore((g,)) for g in layers.values()]
    return [*alone, FeatureScore(tuple(layers.values()))] if len(layers) > 1 else alone


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
    feature_axis = const("feature_axis", np.array([2], dtype=np.int64))
    middle = const("middle_axis", np.array([1], dtype=np.int64))
    terms = []
    for i, g in enumerate(score.layers):
        x = g.tensor
        if len(g.means[0]) != g.factor.shape[0]:
            raise ValueError(f"{g.tensor}: means and factor disagree")
        if g.pooled:  # a convolutional layer: each channel's mean and std
            mean = node("ReduceMean", [x, spatial], f"{i}/mean", keepdims=1)
            gap = node("Sub", [x, mean], f"{i}/gap")
            var = node("ReduceMean", [node("Mul", [gap, gap], f"{i}/gap2"), spatial], f"{i}/var")
            std = node("Sqrt", [var], f"{i}/std")
            flat_mean = node("Flatten", [mean], f"{i}/flat_mean", axis=1)
            flat_std = node("Flatten", [std], f"{i}/flat_std", axis=1)
            x = node("Concat", [flat_mean, flat_std], f"{i}/summary", axis=1)
        factor = const(f"{i}/factor", g.factor.astype(np.float32))
        centres = const(f"{i}/centres", (g.means @ g.factor).astype(np.float32))
        projected = node("MatMul", [x, factor], f"{i}/projected")  # (N, D)
        lifted = node("Unsqueeze", [projected, middle], f"{i}/lifted")  # (N, 1, D)
        gaps = node("Sub", [lifted, centres], f"{i}/gaps")  # (N, classes, D)
        squared = node("Mul", [gaps, gaps], f"{i}/squared")
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
