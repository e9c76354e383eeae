"""Open Inference Protocol (KServe V2) infer requests and responses, JSON and binary extension.

Bodies are parsed by hand with orjson rather than through a pydantic model of the whole body:
tensors are large lists and a generic validator over them costs more than the inference.
Binary tensors become numpy views of the request body: no copy.

What the official clients put in a request body (read from their code), and what becomes of it:
- KServe's SDK (`kserve.InferRequest.to_rest`, REST): `id` (a uuid4 when none was given),
  `model_name`, `inputs` (`parameters.binary_data_size` for binary ones), `outputs` with
  `parameters.binary_data`, request `parameters`. Its gRPC form also carries `model_version`.
  `model_name` and `model_version` are checked against the URL (`check_model`).
- Triton's `tritonclient.http`: `id`, `inputs`, `outputs` (`parameters.binary_data`,
  `parameters.classification`), request `parameters`: `binary_data_output` (set whenever no
  output is named), `sequence_id` / `sequence_start` / `sequence_end` (sequence extension),
  `priority` and `timeout` (schedule-policy extension: accepted and not acted on; this server
  has no priority levels, and its own deadline is the `request_timeout_s` setting), and any
  custom parameters (passed to the model, which ignores what it does not know).
- Either client's `shared_memory_region` / `shared_memory_byte_size` / `shared_memory_offset`
  (Triton's shared-memory extensions) on an input or output: refused with a clear 400, this
  server has no shared memory (an output silently sent in the body instead would be lost).
- `Inference-Header-Content-Length: 0`: Triton's raw binary request (`parse_raw_request`).
"""

from __future__ import annotations

import math
import struct
import warnings
from array import array as py_array
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import orjson

from service.errors import InvalidInput
from service.modelconfig import TensorSpec
from service.tensors import NUMPY_DTYPES, bf16_from_float, bf16_to_float, parse_bytes_elements

# OVERFLOW: a JSON number past a narrower type's range becomes inf in the cast, which models
# that take finite inputs refuse (validate_inputs) and others receive as given; numpy's warning
# about it is noise. Filtered once here: np.errstate around each cast cost every request more
# than the rest of its JSON checks (py-spy, docs/benchmarks.md).
warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning, __name__)

HEADER = "inference-header-content-length"
REQUEST_FIELDS = frozenset({"id", "parameters", "inputs", "outputs", "model_name", "model_version"})
SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    classification: int = 0  # Triton's classification extension: the top K as BYTES (0 = off)


class OutputTensor(NamedTuple):
    name: str
    datatype: str
    array: np.ndarray
    binary: bool  # JSON data or binary (REST's binary extension; gRPC sends every one raw)


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    id: str | None = None
    outputs: list[RequestedOutput] | None = None  # None: every output
    binary_output: bool = False  # request-level `binary_data_output`
    parameters: dict[str, Any] = field(default_factory=dict)
    model_name: str | None = None  # as the body names it (KServe's SDK does), checked against
    model_version: str | None = None  # the URL by `check_model`


def check_model(request: InferRequest, name: str, version: int, url_version: str | None) -> None:
    """Refuse a body whose `model_name` / `model_version` disagree with the model the URL
    selected (`version`: the one serving, the default one when the URL names none)."""
    if request.model_name is not None and request.model_name != name:
        raise InvalidInput(
            f"the body's model_name {request.model_name!r} disagrees with the URL's model {name!r}",
            param="model_name",
        )
    if request.model_version is not None and request.model_version != str(version):
        selected = repr(url_version) if url_version is not None else f"'{version}' (the default)"
        raise InvalidInput(
            f"the body's model_version {request.model_version!r} disagrees with the URL's "
            f"version {selected}",
            param="model_version",
        )


def parse_header_length(value: str | None, body_length: int) -> int | None:
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or int(value) > body_length:
        raise InvalidInput(
            f"Inference-Header-Content-Length must be an integer between 0 and the body length "
            f"({body_length}), not {value!r}",
            param="Inference-Header-Content-Length",
        )
    return int(value)


def parse_infer_request(body: bytes, header_length: int | None = None) -> InferRequest:
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        header, binary = body[:header_length], memoryview(body)[header_length:]
    try:
        obj = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}", param="body") from None
    if not isinstance(obj, dict):
        raise InvalidInput("request body must be a JSON object", param="body")
    unknown = set(obj) - REQUEST_FIELDS
    if unknown:
        raise InvalidInput(f"unknown request fields {sorted(unknown)}", param=sorted(unknown)[0])
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("id must be a string", param="id")
    model_name, model_version = obj.get("model_name"), obj.get("model_version")
    for key, value in (("model_name", model_name), ("model_version", model_version)):
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"{key} must be a string", param=key)
    parameters = _parameters(obj.get("parameters"), "parameters")
    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("inputs must be a non-empty list of tensors", param="inputs")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, raw in enumerate(raw_inputs):
        name, array, offset = _parse_input(raw, i, binary, offset)
        if name in inputs:
            raise InvalidInput(f"input {name!r} given twice", param=f"inputs[{i}].name")
        inputs[name] = array
    if offset != len(binary):
        raise InvalidInput(
            f"binary data is {len(binary)} bytes but the inputs' binary_data_size add up to {offset}",
            param="binary_data_size",
        )
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise InvalidInput("parameters.binary_data_output must be a boolean", param="parameters")
    return InferRequest(
        inputs=inputs,
        id=request_id,
        outputs=_parse_outputs(obj.get("outputs"), binary_output),
        binary_output=binary_output,
        parameters=parameters,
        model_name=model_name,
        model_version=model_version,
    )


def parse_raw_request(body: bytes, inputs: tuple[TensorSpec, ...], batches: bool) -> InferRequest:
    """Triton's raw binary request (`Inference-Header-Content-Length: 0`): the whole body is
    the raw little-endian bytes of the model's one input, whose name, datatype and shape come
    from its config; every output comes back in binary form.

    As in Triton, the shape may have one variable dimension, sized from the byte count, and a
    BYTES input must hold one element (the body is that element's bytes, with no length
    prefix). A batching model's request is one item, as in Triton, unless its own dims are all
    fixed: then the batch axis is the variable dimension and a body of N items is a batch of N.
    """
    if len(inputs) != 1:
        raise InvalidInput(
            f"a raw binary request (Inference-Header-Content-Length: 0) needs a model with one "
            f"input; this model has {len(inputs)}: {[s.name for s in inputs]}",
            param="Inference-Header-Content-Length",
        )
    spec = inputs[0]
    where = f"raw input {spec.name!r}"
    first = 1 if batches else 0  # the batch axis, one item unless said below
    shape = [1] * first + list(spec.dims)
    variable = [first + i for i, d in enumerate(spec.dims) if d < 0]
    if len(variable) > 1:
        raise InvalidInput(
            f"the shape of the {where} can not be deduced because there are more than one "
            f"variable-sized dimension (dims {list(spec.dims)})",
            param="Inference-Header-Content-Length",
        )
    if not body:
        raise InvalidInput(f"the {where} is empty: the body holds no bytes", param="body")
    if spec.datatype == "BYTES":
        if variable or math.prod(spec.dims) != 1:
            raise InvalidInput(
                f"for BYTES datatype {where}, the model must have input shape [1] (one "
                f"element), not {list(spec.dims)}",
                param="Inference-Header-Content-Length",
            )
        array = np.array([bytes(body)], dtype=object)
    else:
        if batches and not variable:
            variable = [0]  # the model's own dims are fixed: the batch axis is the variable one
        fixed = [d for i, d in enumerate(shape) if i not in variable]
        step = math.prod(fixed) * NUMPY_DTYPES[spec.datatype].itemsize
        if variable and len(body) % step == 0:
            shape[variable[0]] = len(body) // step
        elif len(body) != step:
            wanted = f"a multiple of {step}" if variable else str(step)
            raise InvalidInput(
                f"the {where} ({spec.datatype}, shape {([-1] if batches else []) + list(spec.dims)}) "
                f"takes {wanted} bytes; the body holds {len(body)}",
                param="body",
            )
        array = from_binary(memoryview(body), spec.datatype, math.prod(shape), where)
    return InferRequest(inputs={spec.name: array.reshape(shape)}, outputs=None, binary_output=True)


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be an object", param=where)
    return value


def _parse_input(raw: Any, i: int, binary: memoryview, offset: int) -> tuple[str, np.ndarray, int]:
    where = f"inputs[{i}]"
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where} must be an object", param=where)
    unknown = set(raw) - {"name", "shape", "datatype", "parameters", "data"}
    if unknown:
        raise InvalidInput(f"{where} has unknown fields {sorted(unknown)}", param=where)
    name, datatype, shape = raw.get("name"), raw.get("datatype"), raw.get("shape")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{where}.name must be a non-empty string", param=f"{where}.name")
    if datatype not in NUMPY_DTYPES:
        raise InvalidInput(
            f"{where}.datatype {datatype!r} is not one of {sorted(NUMPY_DTYPES)}",
            param=f"{where}.datatype",
        )
    if (
        not isinstance(shape, list)
        or len(shape) > 16
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape)
    ):
        raise InvalidInput(
            f"{where}.shape must be a list of non-negative integers", param=f"{where}.shape"
        )
    count = math.prod(shape)
    parameters = _no_shared_memory(_parameters(raw.get("parameters"), f"{where}.parameters"), where)
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(
                f"{where}.parameters.binary_data_size must be a non-negative integer"
            )
        if "data" in raw:
            raise InvalidInput(f"{where} has both data and binary_data_size", param=where)
        if offset + size > len(binary):
            raise InvalidInput(
                f"{where}: binary_data_size {size} runs past the end of the body", param=where
            )
        array = from_binary(binary[offset : offset + size], datatype, count, where)
        offset += size
    elif "data" in raw:
        array = _from_json(raw["data"], datatype, count, where)
    else:
        raise InvalidInput(f"{where} needs data or parameters.binary_data_size", param=where)
    return name, array.reshape(shape), offset


def _no_shared_memory(parameters: dict[str, Any], where: str) -> dict[str, Any]:
    if not parameters.keys().isdisjoint(SHARED_MEMORY):
        raise InvalidInput(
            f"{where}: this server has no shared memory (Triton's shared-memory extensions); "
            "send the tensor in the body, as JSON data or binary",
            param=f"{where}.parameters.shared_memory_region",
        )
    return parameters


def from_binary(chunk: memoryview, datatype: str, count: int, where: str) -> np.ndarray:
    if datatype == "BYTES":
        try:
            array = parse_bytes_elements(chunk)
        except ValueError as exc:
            raise InvalidInput(f"{where}: {exc}", param=where) from None
    else:
        dtype = NUMPY_DTYPES[datatype].newbyteorder("<")
        if len(chunk) != count * dtype.itemsize:
            raise InvalidInput(
                f"{where}: shape needs {count * dtype.itemsize} bytes of {datatype}, "
                f"binary_data_size is {len(chunk)}",
                param=where,
            )
        array = np.frombuffer(chunk, dtype=dtype)
    return _checked(array, datatype, count, where)


FLOATS = frozenset({"FP16", "FP32", "FP64"})


def _from_json(data: Any, datatype: str, count: int, where: str) -> np.ndarray:
    if not isinstance(data, list):
        data = [data]  # a scalar tensor
    if datatype == "BYTES":
        try:
            items = [x.encode() if isinstance(x, str) else bytes(x) for x in _flatten(data)]
        except (TypeError, ValueError):
            raise InvalidInput(f"{where}.data must hold strings for BYTES", param=where) from None
        return _checked(np.array(items, dtype=object), datatype, count, where)
    if datatype == "BF16":  # JSON carries numbers: rounded to bfloat16 as a Cast would
        values = _from_json(data, "FP32", count, where)
        return bf16_from_float(values)
    if datatype in FLOATS:
        flat = _flat_floats(data)
        if flat is not None:
            return _checked(flat.astype(NUMPY_DTYPES[datatype], copy=False), datatype, count, where)
    try:
        array = np.asarray(data)
    except ValueError:
        raise InvalidInput(
            f"{where}.data is ragged: rows of different lengths", param=where
        ) from None
    if datatype == "UINT64" and array.dtype.kind in "fO":
        array = _large_unsigned(data, where)  # past 2**63 numpy reads Python ints as floats
    kind = array.dtype.kind
    wanted = NUMPY_DTYPES[datatype]
    if (
        kind not in "biuf"
        or (kind == "f" and wanted.kind in "biu")
        or (kind != "b" and wanted.kind == "b")
    ):
        raise InvalidInput(
            f"{where}.data holds {_kind_name(kind)} values, which are not {datatype}", param=where
        )
    if wanted.kind in "iu" and array.size:
        info = np.iinfo(wanted)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidInput(f"{where}.data has values out of the {datatype} range", param=where)
    converted = array.astype(wanted, copy=False).reshape(-1)  # an overflow: inf (OVERFLOW)
    return _checked(converted, datatype, count, where)


def _flat_floats(data: list[Any]) -> np.ndarray | None:
    """A flat list of numbers as float64, the common case, a fifth faster than numpy's
    inference of the list's type; None for anything else (nested rows, strings, a number
    past float64), which the general path reads or refuses with its own words."""
    try:
        return np.frombuffer(py_array("d", data), dtype=np.float64)
    except (TypeError, OverflowError):
        return None


def _large_unsigned(data: list[Any], where: str) -> np.ndarray:
    flat = _flatten(data)
    if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**64 for x in flat):
        raise InvalidInput(f"{where}.data has values that are not UINT64", param=where)
    return np.array(flat, dtype=np.uint64)


def _checked(array: np.ndarray, datatype: str, count: int, where: str) -> np.ndarray:
    if array.size != count:
        raise InvalidInput(
            f"{where}: shape holds {count} elements but {array.size} were given", param=where
        )
    return array


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
    return out


def _kind_name(kind: str) -> str:
    return {"U": "string", "S": "string", "O": "mixed or nested", "f": "floating-point"}.get(
        kind, kind
    )


def _parse_outputs(raw: Any, binary_default: bool) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput("outputs must be a list", param="outputs")
    outputs = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"outputs[{i}] must be an object with a name", param=f"outputs[{i}]")
        parameters = _parameters(item.get("parameters"), f"outputs[{i}].parameters")
        _no_shared_memory(parameters, f"outputs[{i}]")
        binary = parameters.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise InvalidInput(f"outputs[{i}].parameters.binary_data must be a boolean")
        classes = parameters.get("classification", 0)
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
            raise InvalidInput(
                f"outputs[{i}].parameters.classification must be a non-negative integer",
                param=f"outputs[{i}].parameters.classification",
            )
        outputs.append(RequestedOutput(item["name"], binary, classes))
    return outputs


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[OutputTensor],
) -> tuple[bytes, int | None]:
    """Encode (name, datatype, array, binary) outputs. Returns the body and, when any output is
    binary, the length of its JSON header for `Inference-Header-Content-Length`."""
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, datatype, array, binary in outputs:
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = to_bytes(array, datatype)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = _to_json_data(array, datatype)
        tensors.append(tensor)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = tensors
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def to_bytes(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            raw = item if isinstance(item, bytes) else str(item).encode()
            parts += [struct.pack("<I", len(raw)), raw]
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _to_json_data(array: np.ndarray, datatype: str) -> Any:
    flat = np.ascontiguousarray(array).reshape(-1)
    if datatype == "BF16":
        return bf16_to_float(flat)
    if datatype == "BYTES":
        return [x.decode(errors="replace") if isinstance(x, bytes) else str(x) for x in flat]
    if datatype == "FP16":
        return flat.astype(np.float32)  # orjson has no float16
    return flat


def top_classes(array: np.ndarray, k: int, batched: bool, labels: tuple[str, ...]) -> np.ndarray:
    """Triton's classification extension: per batch item, the top `k` of the output's values
    (its non-batch axes flattened) as BYTES "score:index" or "score:index:label", best first.
    Scores are written as C's %f, as Triton does."""
    rows = array.reshape(len(array), -1) if batched else array.reshape(1, -1)
    values = rows.astype(np.float64)
    k = min(k, values.shape[1])
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    out = np.empty(order.shape, dtype=object)
    for r, indices in enumerate(order):
        for j, index in enumerate(indices):
            text = f"{values[r, index]:f}:{index}"
            if index < len(labels):
                text += f":{labels[index]}"
            out[r, j] = text.encode()
    return out if batched else out[0]
