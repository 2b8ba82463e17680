"""Python reference gRPC servers for bench/grpc_calls.py, built from the same proto as edgebox.

    python bench/grpc_servers.py grpclib PORT   # plain grpclib on uvloop, no trio: the ceiling of our stack
    python bench/grpc_servers.py aio PORT       # grpcio's grpc.aio, what a user might pick instead

Both answer HealthCheck and ListCameras with fixed, edgebox-sized replies, and InferSingleFrame with an empty
result after receiving the frame (the transport's cost: no decode, no model). The grpc-go reference is
bench/go/refserver. They exist only to be measured.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # so that a checkout runs it without installing edgebox
EMPTY_DETECTIONS = '{"detections":[]}'


def health_reply():
    from edgebox.proto_gen import infer as pb

    return pb.HealthCheckResponse(status=pb.HealthStatus.SERVING, timestamp=1, gpu_available=False, plugin_count=3,
                                  version="0.1.0", plugins=["face", "motion", "person"],
                                  backends=["openvino-cpu", "onnxruntime-cpu"])


async def serve_grpclib(port: int) -> None:
    import uvloop
    from grpclib.server import Server

    from edgebox.proto_gen import infer as pb

    reply = health_reply()

    class Plain(pb.InferenceServiceBase):
        async def health_check(self, message: pb.HealthCheckRequest) -> pb.HealthCheckResponse:
            return reply

        async def list_cameras(self, message: pb.ListCamerasRequest) -> pb.ListCamerasResponse:
            return pb.ListCamerasResponse()

        async def infer_single_frame(self, message: pb.InferRequest) -> pb.InferResponse:
            return pb.InferResponse(result=pb.InferResult(camera_id=message.source_id,
                                                          workflow_id=message.workflow_id,
                                                          json_data=EMPTY_DETECTIONS))

    uvloop.install()
    server = Server([Plain()])
    await server.start("127.0.0.1", port)
    print("READY", flush=True)
    await server.wait_closed()


def serve_aio(port: int) -> None:
    import grpc

    out = Path(tempfile.mkdtemp(prefix="edgebox-aio-"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}",
                    f"--grpc_python_out={out}", "infer_service.proto"], check=True)
    sys.path.insert(0, str(out))
    import infer_service_pb2 as pb2
    import infer_service_pb2_grpc as pb2_grpc

    reply = pb2.HealthCheckResponse.FromString(bytes(health_reply()))

    class Servicer(pb2_grpc.InferenceServiceServicer):
        async def HealthCheck(self, request, context):
            return reply

        async def ListCameras(self, request, context):
            return pb2.ListCamerasResponse()

        async def InferSingleFrame(self, request, context):
            return pb2.InferResponse(result=pb2.InferResult(camera_id=request.source_id,
                                                            workflow_id=request.workflow_id,
                                                            json_data=EMPTY_DETECTIONS))

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        pb2_grpc.add_InferenceServiceServicer_to_server(Servicer(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("READY", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "grpclib":
        asyncio.run(serve_grpclib(port))
    else:
        serve_aio(port)
