"""Check KServe manifests against the KServe Python SDK's models, strictly.

  build/deploy/kserve-venv/bin/python scripts/check_kserve.py k8s/kserve/*.yaml

Each document of a known kind (InferenceService, ServingRuntime, ClusterServingRuntime) is built
into the SDK's model class field by field: a key the model does not have (a typo, a field of
another version) fails, so do values of the wrong type and the SDK's own validation (required
fields, enums). Nested Kubernetes types (containers, probes...) resolve to the kubernetes
client's models, which the SDK uses. Runs in a venv of its own: kserve is heavy and pins much.
"""

from __future__ import annotations

import datetime
import re
import sys
from pathlib import Path
from typing import Any

import kserve.models
import kubernetes.client.models
import yaml

KINDS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
}
PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "object": (object,),
    "datetime": (str, datetime.datetime),
    "date": (str, datetime.date),
}


class Invalid(Exception):
    pass


def build(data: Any, type_name: str, where: str) -> Any:
    """`data` as an instance of the SDK type `type_name`; Invalid names the first bad path."""
    # The SDKs spell containers both ways: list[X] / List[X], dict(str, X) / Dict[str, X].
    if match := re.fullmatch(r"[lL]ist\[(.*)\]", type_name):
        if not isinstance(data, list):
            raise Invalid(f"{where}: expected a list, got {type(data).__name__}")
        return [build(item, match.group(1), f"{where}[{i}]") for i, item in enumerate(data)]
    if match := re.fullmatch(r"dict\(([^,]*), (.*)\)|Dict\[([^,]*), (.*)\]", type_name):
        value_type = match.group(2) or match.group(4)
        if not isinstance(data, dict):
            raise Invalid(f"{where}: expected a mapping, got {type(data).__name__}")
        return {k: build(v, value_type, f"{where}.{k}") for k, v in data.items()}
    if type_name in PRIMITIVES:
        if not isinstance(data, PRIMITIVES[type_name]) or (
            type_name in {"int", "float"} and isinstance(data, bool)
        ):
            raise Invalid(f"{where}: expected {type_name}, got {data!r}")
        return data
    model = getattr(kserve.models, type_name, None) or getattr(
        kubernetes.client.models, type_name, None
    )
    if model is None:
        raise Invalid(f"{where}: the SDK has no model {type_name}")
    if not isinstance(data, dict):
        raise Invalid(f"{where}: expected a {type_name} mapping, got {data!r}")
    by_key = {key: attr for attr, key in model.attribute_map.items()}
    unknown = sorted(set(data) - set(by_key))
    if unknown:
        raise Invalid(f"{where}: {type_name} has no field {', '.join(unknown)}")
    kwargs = {
        by_key[key]: build(value, model.openapi_types[by_key[key]], f"{where}.{key}")
        for key, value in data.items()
    }
    try:
        return model(**kwargs)
    except (ValueError, TypeError) as error:
        raise Invalid(f"{where}: {type_name}: {error}") from error


def check(path: Path) -> list[str]:
    """Problems of every KServe document in `path` (empty when all are valid)."""
    problems = []
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for document in documents:
        kind = (document.get("apiVersion"), document.get("kind"))
        name = f"{path}: {kind[1]}/{document.get('metadata', {}).get('name')}"
        if kind not in KINDS:
            problems.append(f"{name}: not a KServe kind this check knows ({kind[0]})")
            continue
        try:
            build(document, KINDS[kind], kind[1])
        except Invalid as error:
            problems.append(f"{name}: {error}")
        else:
            print(f"ok  {name} is a valid {KINDS[kind]}")
    if not documents:
        problems.append(f"{path}: no documents")
    return problems


def main() -> None:
    paths = [Path(p) for p in sys.argv[1:]]
    if not paths:
        sys.exit(__doc__)
    problems = [problem for path in paths for problem in check(path)]
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
