"""The classifier runtime: pictures (or graphs, for a graph classifier) in, labelled classes out."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from service.errors import ModelLoadError
from service.repository import Repository
from service.runtimes.tensor import TensorModel
from service.tasks.class_scores import OodSpec, softmax
from service.tasks.graphs import GRAPH_INPUTS, GraphSpec, check_inputs
from service.tasks.image_preprocessing import ImageSpec


class Classifier(TensorModel):
    """A classifier of pictures; with a `graph` section in its config, a graph classifier whose
    pictures become graphs (service/tasks/graphs.py) and which also takes graphs."""

    task = "classification"
    noun = "a classifier"
    finite_inputs = True
    graph: GraphSpec | None = None  # how pictures become graphs, for a graph classifier
    image: ImageSpec  # how pictures are prepared, as in training
    ood: OodSpec | None = None  # the out-of-distribution flag, when fitted for this version

    def prepare(self, repository: Repository) -> None:
        if not self.config.preprocessing:
            raise ModelLoadError(
                f"model {self.name!r}: a classifier needs config.json's preprocessing section "
                "(how pictures are prepared, as in training)"
            )
        try:
            self.image = ImageSpec.from_config(self.config.preprocessing)
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"model {self.name!r}: config.json preprocessing: {exc}") from None
        section = self.config.raw.get("graph")
        if section is not None:
            self.graph = self._graph_spec(section)
        if "ood" in self.config.raw:
            self.ood = self._ood_spec(self.config.raw["ood"])
        if self.ood is not None and self.config.output(self.ood.output) is None:
            self.internal_outputs = (self.ood.output,)  # read by classify, not served over V2
        super().prepare(repository)

    def _ood_spec(self, section: object) -> OodSpec | None:
        """config.json's `ood` section, or None for a version it was not fitted on (a threshold
        says nothing about another version's logits)."""
        try:
            spec = OodSpec.from_config(section)
        except ValueError as exc:
            raise ModelLoadError(f"model {self.name!r}: config.json {exc}") from None
        if spec.output not in self.primary.output_names:
            raise ModelLoadError(
                f"model {self.name!r}: config.json ood.output {spec.output!r} is not an output "
                f"of its graph (those are {self.primary.output_names})"
            )
        if spec.needs_pictures and self.graph is not None:
            raise ModelLoadError(
                f"model {self.name!r}: config.json ood.score {spec.score!r} needs pictures; a "
                "graph classifier may be sent graphs"
            )
        return spec if spec.version == self.version else None

    def _graph_spec(self, section: object) -> GraphSpec:
        inputs = tuple(spec.name for spec in self.config.inputs)
        if inputs != GRAPH_INPUTS or self.config.max_batch_size != 0:
            raise ModelLoadError(
                f"model {self.name!r}: a graph classifier takes {list(GRAPH_INPUTS)} with "
                f"max_batch_size 0; config.json has {list(inputs)}, {self.config.max_batch_size}"
            )
        try:
            spec = GraphSpec.from_config(section if isinstance(section, dict) else {"?": section})
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"model {self.name!r}: config.json {exc}") from None
        if self.config.inputs[0].dims[-1] != spec.features:
            raise ModelLoadError(f"model {self.name!r}: x must have {spec.features} features")
        pre = self.config.preprocessing
        if (pre.get("height"), pre.get("width")) != (spec.image_size, spec.image_size):
            raise ModelLoadError(
                f"model {self.name!r}: preprocessing must give {spec.image_size}x{spec.image_size} "
                "pictures, the size the graph section cuts into squares"
            )
        return spec

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        if self.graph is not None:
            check_inputs(inputs, self.serving.settings)

    def probabilities(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Class probabilities per row: the `probabilities` output, or a softmax of the first."""
        if "probabilities" in outputs:
            return outputs["probabilities"]
        return softmax(outputs[self.config.outputs[0].name])

    def ood_checks(
        self, outputs: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]
    ) -> list[dict[str, object]] | None:
        """Per row: the out-of-distribution score, the threshold and the verdict; None for a
        model (or version) without a fitted `ood` section. `feeds`: the prepared pictures."""
        if self.ood is None:
            return None
        pictures = None
        if self.ood.needs_pictures:  # back to intensities in [0, 1]
            pictures = feeds[self.config.inputs[0].name] * self.image.std + self.image.mean
        return self.ood.check(outputs[self.ood.output], pictures)
