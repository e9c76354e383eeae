"""Reading the service's Prometheus exposition in tests."""

from __future__ import annotations


def metric(text: str, name: str, default: float | None = None, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels`, else `default`."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        sample, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in sample for k, v in labels.items()):
            return float(value)
    return default


def model_metric(text: str, name: str, model: str, version: str = "1") -> float:
    """A per-model counter or gauge; 0 before the model's first sample."""
    value = metric(text, name, 0.0, model=model, version=version)
    assert value is not None
    return value
