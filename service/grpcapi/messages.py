"""Open Inference Protocol gRPC messages <-> the data plane's requests and outputs.

The messages are the generated ones that ship with `tritonclient[grpc]` (`inference.*`, the
service Triton and KServe share); nothing here touches the wire format.

What a request may carry, and what becomes of it (as Triton's gRPC endpoint does):
- each input as typed `contents` (the field its datatype names: `fp32_contents` for FP32,
  `int_contents` for INT8/16/32...) or all inputs as `raw_input_contents` (one entry per input,
  in order, little-endian, BYTES as 4-byte length + bytes). FP16 and BF16 only travel raw (no
  typed field holds them); mixing the two forms in one request is refused.
- request `parameters` (sequence_id, sequence_start, sequence_end, priority, timeout, custom
  ones) as the REST body's `parameters` are; output `parameters.classification` as Triton's
  classification extension; `binary_data` is a REST notion and ignored here.
- shared-memory parameters are refused (no shared memory here).
Every output is answered raw (`raw_output_contents`), as Triton answers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from service.errors import InvalidInput
from service.protocol.v2 import (
    SHARED_MEMORY,
    InferRequest,
    OutputTensor,
    RequestedOutput,
    from_binary,
    to_bytes,
)
from service.tensors import NUMPY_DTYPES

# Which typed field of InferTensorContents holds each datatype (FP16/BF16: none, raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
MAX_RANK = 16


def parameter_value(parameter: pb.InferParameter) -> Any:
    """An InferParameter's value as the REST body's JSON would carry it."""
    kind = parameter.WhichOneof("parameter_choice")
    return None if kind is None else getattr(parameter, kind)


def parameters_dict(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in parameters.items()}


def set_parameter(target: Any, key: str, value: Any) -> None:
    """Write a Python value into a protobuf map of InferParameter (bool before int: bool is one)."""
    if isinstance(value, bool):
        target[key].bool_param = value
    elif isinstance(value, int):
        target[key].int64_param = value
    elif isinstance(value, float):
        target[key].double_param = value
    else:
        target[key].string_param = str(value)


def infer_request(request: pb.ModelInferRequest) -> InferRequest:
    """The data plane's request from a ModelInferRequest (every check names the input)."""
    if not request.inputs:
        raise InvalidInput("inputs must be a non-empty list of tensors", param="inputs")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: "
            "send one per input, in order, or none",
            param="raw_input_contents",
        )
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        if not name:
            raise InvalidInput(f"inputs[{i}].name must not be empty", param=f"inputs[{i}].name")
        if name in inputs:
            raise InvalidInput(f"input {name!r} given twice", param=f"inputs[{i}].name")
        _no_shared_memory(tensor.parameters, f"inputs[{i}]")
        inputs[name] = _input_array(tensor, raw[i] if raw else None, f"input {name!r}")
    parameters = parameters_dict(request.parameters)
    outputs = None
    if request.outputs:
        outputs = []
        for i, wanted in enumerate(request.outputs):
            _no_shared_memory(wanted.parameters, f"outputs[{i}]")
            classes = (
                parameter_value(wanted.parameters["classification"])
                if ("classification" in wanted.parameters)
                else 0
            )
            if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
                raise InvalidInput(
                    f"outputs[{i}].parameters.classification must be a non-negative integer",
                    param=f"outputs[{i}].parameters.classification",
                )
            outputs.append(RequestedOutput(wanted.name, True, classes))
    return InferRequest(
        inputs=inputs,
        id=request.id or None,
        outputs=outputs,
        binary_output=True,
        parameters=parameters,
        model_name=request.model_name,
        model_version=request.model_version or None,
    )


def _input_array(
    tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, where: str
) -> np.ndarray:
    datatype = tensor.datatype
    if datatype not in NUMPY_DTYPES:
        raise InvalidInput(
            f"{where}: datatype {datatype!r} is not one of {sorted(NUMPY_DTYPES)}",
            param="datatype",
        )
    shape = list(tensor.shape)
    if len(shape) > MAX_RANK or any(d < 0 or d >= 2**31 for d in shape):
        raise InvalidInput(f"{where}: shape must be non-negative integers", param="shape")
    count = math.prod(shape)
    typed = tensor.HasField("contents") and tensor.contents.ByteSize() > 0
    if raw is not None:
        if typed:
            raise InvalidInput(
                f"{where} has both contents and raw_input_contents: send one form",
                param="contents",
            )
        array = from_binary(memoryview(raw), datatype, count, where)
    else:
        field = CONTENTS_FIELD.get(datatype)
        if field is None:
            raise InvalidInput(
                f"{where}: {datatype} travels only in raw_input_contents (no typed field holds it)",
                param="raw_input_contents",
            )
        values = getattr(tensor.contents, field)
        if datatype == "BYTES":
            array = np.array(list(values), dtype=object)
        else:
            array = np.array(values, dtype=NUMPY_DTYPES[datatype])
            if datatype in ("INT8", "INT16", "UINT8", "UINT16"):
                _in_range(values, datatype, where)
        if array.size != count:
            raise InvalidInput(
                f"{where}: shape holds {count} elements but {array.size} were given",
                param="contents",
            )
    return array.reshape(shape)


def _in_range(values: Any, datatype: str, where: str) -> None:
    """The narrow integer types share a 32-bit field: refuse values that do not fit."""
    info = np.iinfo(NUMPY_DTYPES[datatype])
    if len(values) and (min(values) < info.min or max(values) > info.max):
        raise InvalidInput(f"{where}: values out of the {datatype} range", param="contents")


def _no_shared_memory(parameters: Mapping[str, pb.InferParameter], where: str) -> None:
    if not set(parameters).isdisjoint(SHARED_MEMORY):
        raise InvalidInput(
            f"{where}: this server has no shared memory (Triton's shared-memory extensions); "
            "send the tensor in the request",
            param=f"{where}.parameters.shared_memory_region",
        )


def infer_response(
    model_name: str, model_version: str, request_id: str | None, outputs: list[OutputTensor]
) -> pb.ModelInferResponse:
    """A ModelInferResponse with every output raw, as Triton answers."""
    response = pb.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request_id or ""
    )
    for output in outputs:
        response.outputs.add(name=output.name, datatype=output.datatype, shape=output.array.shape)
        response.raw_output_contents.append(to_bytes(output.array, output.datatype))
    return response


def text_response(
    model_name: str, model_version: str, request_id: str | None, text: str, final: bool | None
) -> pb.ModelInferResponse:
    """A language model's `text_output` (one token, or the whole text) as a response;
    `final` sets Triton's `triton_final_response` parameter (None: leave it out)."""
    array = np.array([text.encode()], dtype=object)
    response = infer_response(
        model_name, model_version, request_id, [OutputTensor("text_output", "BYTES", array, True)]
    )
    if final is not None:
        response.parameters["triton_final_response"].bool_param = final
    return response
