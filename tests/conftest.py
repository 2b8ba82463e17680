from tests.support.fixtures import person_image, rtsp_server, rtsp_server_factory  # noqa: F401
