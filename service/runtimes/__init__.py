"""One runtime per task, chosen from one table by the config's `task` (MLServer's runtimes,
Triton's backends): a model without a task is a plain tensor model."""

from __future__ import annotations

from service.runtimes.classifier import Classifier
from service.runtimes.image_generator import ImageGenerator
from service.runtimes.language_model import LanguageModel
from service.runtimes.tensor import Serving, TensorModel

RUNTIMES: dict[str | None, type[TensorModel]] = {
    None: TensorModel,
    Classifier.task: Classifier,
    LanguageModel.task: LanguageModel,
    ImageGenerator.task: ImageGenerator,
}

__all__ = ["RUNTIMES", "Classifier", "ImageGenerator", "LanguageModel", "Serving", "TensorModel"]
