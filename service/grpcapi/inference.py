"""`inference.GRPCInferenceService`, the gRPC service Triton and KServe share: health, metadata,
inference (unary and streamed), and Triton's extensions that `tritonclient.grpc` calls (model
configuration, statistics, the model repository). Each method translates its messages and calls
the same registry and data plane as the REST routes; `Calls` gives it auth, metrics and errors.

Language models also generate text over gRPC, as Triton's decoupled LLM models do: a request
whose inputs are one BYTES `text_input` (and no such graph input) is a generation, its request
parameters those of the REST generate extension (max_tokens, temperature, top_p, top_k,
repetition_penalty, stop, seed). ModelInfer answers the whole text as `text_output`;
ModelStreamInfer answers each token as it is written, in its own response, and with
`triton_enable_empty_final_response` (tritonclient's `enable_empty_final_response=True`) an
empty response whose `triton_final_response` parameter is true ends each request's stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pydantic
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from service import __version__, tracing
from service.cluster import Cluster
from service.dataplane import DataPlane
from service.errors import InvalidInput, ModelNotFound, ModelNotReady, ServiceError
from service.grpcapi.calls import Access, Calls
from service.grpcapi.messages import infer_request, infer_response, parameters_dict, text_response
from service.pbtxt import to_message
from service.protocol.text import GenerateParameters
from service.protocol.types import EXTENSIONS
from service.protocol.v2 import check_model
from service.registry import Registry
from service.repository import check_name
from service.runtimes import LanguageModel, TensorModel
from service.settings import Settings
from service.tasks.generation_jobs import (
    SequenceTokens,
    first_event,
    generation_job,
    stream_generation,
)
from service.tensors import parse_bytes_elements

# Request parameters a generation accepts beside the sampling ones: Triton's client sets them.
FINAL_RESPONSE = "triton_enable_empty_final_response"
SCHEDULING = ("priority", "timeout")  # accepted, not acted on (as in REST; see protocol/v2.py)


@dataclass
class Backend:
    """What the gRPC service serves from: the app's registry, data plane and cluster."""

    settings: Settings
    registry: Registry
    dataplane: DataPlane
    cluster: Cluster
    started: Callable[[], bool]

    def ready(self) -> bool:
        return self.started() and self.registry.ready()


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, backend: Backend, calls: Calls) -> None:
        self.backend = backend
        self.calls = calls

    # -- health and metadata --------------------------------------------------------------------
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> Any:
        async def work() -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await self.calls.unary("ServerLive", context, Access.OPEN, work)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> Any:
        async def work() -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=self.backend.ready())

        return await self.calls.unary("ServerReady", context, Access.OPEN, work)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> Any:
        async def work() -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(
                name="seedserve", version=__version__, extensions=EXTENSIONS
            )

        return await self.calls.unary("ServerMetadata", context, Access.OPEN, work)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> Any:
        async def work() -> pb.ModelReadyResponse:
            try:
                self.backend.registry.get(request.name, request.version or None)
            except (ModelNotFound, ModelNotReady):
                return pb.ModelReadyResponse(ready=False)  # as Triton: not ready, no error
            return pb.ModelReadyResponse(ready=True)

        return await self.calls.unary("ModelReady", context, Access.INFERENCE, work)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> Any:
        async def work() -> pb.ModelMetadataResponse:
            registry = self.backend.registry
            model = registry.get(request.name, request.version or None)
            state = registry.models.get(request.name)
            versions = sorted(state.versions) if state is not None else [model.version]
            meta = model.metadata(versions)
            return pb.ModelMetadataResponse(
                name=meta.name,
                versions=meta.versions,
                platform=meta.platform,
                inputs=[_tensor_metadata(t) for t in meta.inputs],
                outputs=[_tensor_metadata(t) for t in meta.outputs],
            )

        return await self.calls.unary("ModelMetadata", context, Access.INFERENCE, work)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> Any:
        async def work() -> pb.ModelConfigResponse:
            model = self.backend.registry.get(request.name, request.version or None)
            return pb.ModelConfigResponse(config=to_message(model.effective_config()))

        return await self.calls.unary("ModelConfig", context, Access.INFERENCE, work)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> Any:
        async def work() -> pb.ModelStatisticsResponse:
            answer = pb.ModelStatisticsResponse()
            for model in self._versions(request.name, request.version):
                report = model.stats.report(model.name, model.version)
                json_format.ParseDict(report, answer.model_stats.add())
            return answer

        return await self.calls.unary("ModelStatistics", context, Access.INFERENCE, work)

    def _versions(self, name: str, version: str) -> list[TensorModel]:
        """The versions a statistics request names: every model's when `name` is empty (as
        Triton), a model's loaded versions, or one version."""
        registry = self.backend.registry
        if not name:
            if version:
                raise InvalidInput("a version needs a model name", param="version")
            return [
                m for _, s in sorted(registry.models.items()) for _, m in sorted(s.versions.items())
            ]
        model = registry.get(name, version or None)
        state = registry.models.get(name)
        if version or state is None:
            return [model]
        return [m for _, m in sorted(state.versions.items())]

    # -- the model repository -------------------------------------------------------------------
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> Any:
        async def work() -> pb.RepositoryIndexResponse:
            _one_repository(request.repository_name)
            answer = pb.RepositoryIndexResponse()
            for e in self.backend.registry.index(request.ready):
                answer.models.add(
                    name=e.name, version=e.version or "", state=e.state, reason=e.reason or ""
                )
            return answer

        return await self.calls.unary("RepositoryIndex", context, Access.ADMIN, work)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> Any:
        async def work() -> pb.RepositoryModelLoadResponse:
            _one_repository(request.repository_name)
            if request.parameters:
                raise InvalidInput(
                    f"load parameters {sorted(request.parameters)} are not supported: a model "
                    "loads from its folder in the repository (its config and version files)",
                    param="parameters",
                )
            await self.backend.cluster.load(check_name(request.model_name))
            return pb.RepositoryModelLoadResponse()

        return await self.calls.unary("RepositoryModelLoad", context, Access.ADMIN, work)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> Any:
        async def work() -> pb.RepositoryModelUnloadResponse:
            _one_repository(request.repository_name)
            unknown = set(request.parameters) - {"unload_dependents"}  # no ensembles: none
            if unknown:
                raise InvalidInput(
                    f"unload parameters {sorted(unknown)} are not supported", param="parameters"
                )
            await self.backend.cluster.unload(check_name(request.model_name))
            return pb.RepositoryModelUnloadResponse()

        return await self.calls.unary("RepositoryModelUnload", context, Access.ADMIN, work)

    # -- inference ------------------------------------------------------------------------------
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> Any:
        return await self.calls.unary(
            "ModelInfer", context, Access.INFERENCE, lambda: self._infer(request)
        )

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        backend = self.backend
        model = backend.registry.get(request.model_name, request.model_version or None)
        if isinstance(model, LanguageModel) and _is_generation(model, request):
            pieces = [r async for r in self._generate(model, request, streamed=False)]
            return pieces[0]
        async with backend.dataplane.track(model):
            parsed = infer_request(request)
            check_model(parsed, model.name, model.version, request.model_version or None)
            outputs = await backend.dataplane.infer_request(model, parsed)
            with tracing.span("response"):
                return infer_response(model.name, str(model.version), parsed.id, outputs)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        def responses(request_id: str) -> AsyncIterator[pb.ModelStreamInferResponse]:
            return self._stream(request_iterator)

        async for response in self.calls.stream(
            "ModelStreamInfer", context, Access.INFERENCE, responses
        ):
            yield response

    async def _stream(
        self, requests: AsyncIterator[pb.ModelInferRequest]
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Every request of the stream runs as it arrives (as Triton's stream does); its
        responses (one, or one per token) are sent as they are ready, an error as a response
        whose `error_message` says it, and the stream goes on."""
        out: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def answer(request: pb.ModelInferRequest) -> None:
            try:
                async for response in self._stream_one(request):
                    out.put_nowait(pb.ModelStreamInferResponse(infer_response=response))
            except ServiceError as exc:
                out.put_nowait(pb.ModelStreamInferResponse(error_message=exc.message))

        async def read() -> None:
            try:
                async for request in requests:
                    task = asyncio.create_task(answer(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
                while running:
                    await asyncio.wait(set(running))
            finally:
                out.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await out.get()) is not None:
                yield response
            await reader  # its failure (a broken stream) is the call's
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _stream_one(
        self, request: pb.ModelInferRequest
    ) -> AsyncIterator[pb.ModelInferResponse]:
        model = self.backend.registry.get(request.model_name, request.model_version or None)
        if isinstance(model, LanguageModel) and _is_generation(model, request):
            async for response in self._generate(model, request, streamed=True):
                yield response
            return
        yield await self._infer(request)

    async def _generate(
        self, model: LanguageModel, request: pb.ModelInferRequest, streamed: bool
    ) -> AsyncIterator[pb.ModelInferResponse]:
        """A generation: the whole text in one response, or each token in its own."""
        backend = self.backend
        parameters = parameters_dict(request.parameters)
        final_response = parameters.pop(FINAL_RESPONSE, False) is True
        for key in SCHEDULING:
            parameters.pop(key, None)
        text = _text_input(request)
        try:
            sampling = GenerateParameters(**parameters)
        except pydantic.ValidationError as exc:
            raise InvalidInput(_validation_message(exc), param="parameters") from None
        job = generation_job(backend.settings, model, text, sampling)
        events = stream_generation(backend.dataplane, model, job, None, streamed)
        head = (model.name, str(model.version), request.id or None)
        pieces: list[str] = []
        reason = "length"
        try:
            await first_event(events)
            async for event in events:
                if not isinstance(event, SequenceTokens):
                    continue
                for _, token in event.tokens:
                    reason = token.finish_reason or reason
                    if not streamed:
                        pieces.append(token.text)
                        continue
                    response = text_response(*head, token.text, False if final_response else None)
                    if token.finish_reason is not None:
                        response.parameters["finish_reason"].string_param = token.finish_reason
                    yield response
        finally:
            await events.aclose()
        if not streamed:
            response = text_response(*head, "".join(pieces), None)
            response.parameters["finish_reason"].string_param = reason
            yield response
        elif final_response:
            end = pb.ModelInferResponse(model_name=head[0], model_version=head[1], id=head[2] or "")
            end.parameters["triton_final_response"].bool_param = True
            yield end

    # -- what this server does not have ---------------------------------------------------------
    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        async def work() -> pb.SystemSharedMemoryStatusResponse:
            return pb.SystemSharedMemoryStatusResponse()  # no region is ever registered

        return await self.calls.unary("SystemSharedMemoryStatus", context, Access.INFERENCE, work)

    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        async def work() -> pb.CudaSharedMemoryStatusResponse:
            return pb.CudaSharedMemoryStatusResponse()

        return await self.calls.unary("CudaSharedMemoryStatus", context, Access.INFERENCE, work)

    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        await _unimplemented(
            context, "this server has no shared memory: send tensors in the request"
        )

    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        await _unimplemented(
            context, "this server has no shared memory: send tensors in the request"
        )

    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        await _unimplemented(context, "this server has no shared memory")

    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        await _unimplemented(context, "this server has no shared memory")

    async def TraceSetting(self, request: Any, context: Any) -> Any:
        await _unimplemented(
            context, "tracing is OpenTelemetry, set at start-up (SEEDSERVE_OTLP_ENDPOINT)"
        )

    async def LogSettings(self, request: Any, context: Any) -> Any:
        await _unimplemented(context, "the log level is set at start-up (SEEDSERVE_LOG_LEVEL)")


def _tensor_metadata(t: Any) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape)


def _one_repository(name: str) -> None:
    if name:
        raise InvalidInput(
            f"repository {name!r}: this server has one model repository; leave repository_name "
            "empty",
            param="repository_name",
        )


def _is_generation(model: LanguageModel, request: pb.ModelInferRequest) -> bool:
    names = [t.name for t in request.inputs]
    return names == ["text_input"] and all(s.name != "text_input" for s in model.config.inputs)


def _text_input(request: pb.ModelInferRequest) -> str:
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"text_input must be BYTES, not {tensor.datatype}", param="text_input")
    if request.raw_input_contents:
        items = _raw_strings(request.raw_input_contents[0])
    else:
        items = list(tensor.contents.bytes_contents)
    if len(items) != 1:
        raise InvalidInput(f"text_input must hold one string, not {len(items)}", param="text_input")
    try:
        return items[0].decode()
    except UnicodeDecodeError:
        raise InvalidInput("text_input is not UTF-8 text", param="text_input") from None


def _raw_strings(raw: bytes) -> list[bytes]:
    try:
        return list(parse_bytes_elements(raw))
    except ValueError as exc:
        raise InvalidInput(f"text_input: {exc}", param="text_input") from None


def _validation_message(exc: pydantic.ValidationError) -> str:
    return "; ".join(
        f"parameters.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
    )


async def _unimplemented(context: Any, message: str) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
