"""End to end, against a real jobs service (AUTH_MODE=jwt, called without a token): server
reflection answers under both ``grpc.reflection.v1`` (what grpcurl, Postman and current gRPC
clients ask first) and ``grpc.reflection.v1alpha``, and through either a client lists
``prospect.v1.JobService`` and resolves its methods from the descriptors the server sends.

The client is grpcio-reflection's ``ProtoReflectionDescriptorDatabase``, which speaks
v1alpha only; for v1 its stub calls ``/grpc.reflection.v1.ServerReflection/...`` instead.
The two protocols' messages are the same field for field (the official v1 and v1alpha
reflection.proto differ in package and options only), so the bytes on the wire are what a
v1 client sends."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from types import SimpleNamespace

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from prospect.v1 import jobs_pb2
from services.cli.stack import Stack

pytestmark = pytest.mark.e2e

ENV = {"AUTH_MODE": "jwt", "AUTH_JWT_SECRET": secrets.token_urlsafe(32), "SANDBOX_LATENCY_MS": "5"}
ENV["PAGE_TOKEN_SECRET"] = secrets.token_hex(32)
V1, V1ALPHA = "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"
JOB_SERVICE = jobs_pb2.DESCRIPTOR.services_by_name["JobService"]


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    running = Stack(tmp_path_factory.mktemp("reflection"), env=ENV)
    try:
        running.start()
        with grpc.insecure_channel(running.jobs_addr) as channel:
            yield channel
    finally:
        running.stop()


def reflection_client(channel: grpc.Channel, service: str) -> ProtoReflectionDescriptorDatabase:
    database = ProtoReflectionDescriptorDatabase(channel)
    database._stub = SimpleNamespace(  # the same client, on the named protocol
        ServerReflectionInfo=channel.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
    )
    return database


def signatures(service: ServiceDescriptor) -> dict[str, tuple[str, str, bool, bool]]:
    """name -> (input type, output type, client streaming, server streaming) of each method."""
    return {
        m.name: (m.input_type.full_name, m.output_type.full_name, m.client_streaming,
            m.server_streaming)
        for m in service.methods
    }  # fmt: skip


@pytest.mark.parametrize("protocol", [V1, V1ALPHA])
def test_reflection_lists_and_resolves_the_job_service(
    channel: grpc.Channel, protocol: str
) -> None:
    database = reflection_client(channel, protocol)
    services = set(database.get_services())
    assert {JOB_SERVICE.full_name, "grpc.health.v1.Health", V1, V1ALPHA} <= services
    # A fresh pool holding only what the server sent (jobs.proto and what it imports).
    pool = descriptor_pool.DescriptorPool(database)
    resolved = pool.FindServiceByName(JOB_SERVICE.full_name)
    assert signatures(resolved) == signatures(JOB_SERVICE)
    assert signatures(resolved)["WatchJob"][3] is True  # the stream is described as one
    config = pool.FindMessageTypeByName("prospect.v1.SubmitCampaignRequest").fields_by_name[
        "config"
    ]
    assert config.message_type is not None
    assert config.message_type.full_name == "prospect.v1.CampaignConfig"


@pytest.mark.parametrize("protocol", [V1, V1ALPHA])
def test_each_reflection_protocol_describes_itself_under_its_own_package(
    channel: grpc.Channel, protocol: str
) -> None:
    """What grpcurl does on ``describe``: the v1 service is described as v1, with the same
    messages as v1alpha (so a client building them from this file talks to the server)."""
    pool = descriptor_pool.DescriptorPool(reflection_client(channel, protocol))
    described = {name: pool.FindServiceByName(name) for name in (V1, V1ALPHA)}
    for name, service in described.items():
        package = name.rpartition(".")[0]
        assert service.file.package == package
        ((method, (request, response, client_streams, server_streams)),) = signatures(
            service
        ).items()
        assert method == "ServerReflectionInfo" and client_streams and server_streams
        assert (request, response) == (
            f"{package}.ServerReflectionRequest",
            f"{package}.ServerReflectionResponse",
        )

    def shape(file: descriptor_pb2.FileDescriptorProto) -> list[object]:
        return [
            (m.name, [(f.name, f.number, f.type, f.label, f.type_name.rpartition(".")[2],
                f.oneof_index if f.HasField("oneof_index") else None) for f in m.field])
            for m in file.message_type
        ]  # fmt: skip

    files = {}
    for name, service in described.items():
        files[name] = descriptor_pb2.FileDescriptorProto()
        service.file.CopyToProto(files[name])
    assert shape(files[V1]) == shape(files[V1ALPHA])
