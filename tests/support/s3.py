"""moto's S3 server on 127.0.0.1 for the Zarr-on-S3 tests, with fake credentials only.

Example (needs files and servers, so not a doctest)::

    with moto_s3() as s3:
        masks.to_zarr(s3.url("m.zarr"), storage_options=s3.storage_options)
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .stac_api import free_port

__all__ = ["S3Server", "moto_s3"]


@dataclass(frozen=True)
class S3Server:
    """A moto S3 server on 127.0.0.1 with one bucket and fake credentials."""

    endpoint_url: str
    bucket: str
    key: str
    secret: str
    region: str = "us-east-1"

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options (a fresh dict each time)."""
        return {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": self.region},
        }

    def url(self, path: str = "") -> str:
        """``s3://bucket/path``."""
        return f"s3://{self.bucket}/{path.lstrip('/')}"


_FAKE_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@contextlib.contextmanager
def moto_s3(bucket: str = "xs2mask-test") -> Iterator[S3Server]:
    """moto's ThreadedMotoServer on a free port of 127.0.0.1 with ``bucket`` created.

    Fake credentials are given in ``storage_options`` and, while the server runs, also in the
    environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY; restored afterwards) so that nothing can
    reach a real account.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in _FAKE_ENV}
    os.environ.update(_FAKE_ENV)
    werkzeug_log = logging.getLogger("werkzeug")  # moto logs every request even with verbose=False
    saved_level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        s3 = S3Server(endpoint, bucket, _FAKE_ENV["AWS_ACCESS_KEY_ID"], _FAKE_ENV["AWS_SECRET_ACCESS_KEY"])
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=s3.region,
            aws_access_key_id=s3.key,
            aws_secret_access_key=s3.secret,
        )
        client.create_bucket(Bucket=bucket)
        yield s3
    finally:
        server.stop()
        werkzeug_log.setLevel(saved_level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
