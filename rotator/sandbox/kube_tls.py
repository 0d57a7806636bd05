"""A TLS listener for the Kubernetes emulator, because kubectl sends no credentials over plain HTTP.

client-go only reads a kubeconfig's user (token, certificates, exec plugins) when the server URL is
https (kubernetes/kubectl#744), so the kubeconfig the sandbox writes points at this listener, with
the certificate inline as ``certificate-authority-data``. The plain HTTP port stays for the Python
client, which does send tokens over HTTP. Both ports run the same handler and the same fault and
request-log middleware.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import ssl
import tempfile
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from rotator.sandbox.tokens import self_signed_certificate

PEM_NAME = "kube-apiserver.pem"  # key and certificate in one file, so they are replaced together


def _generate() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = self_signed_certificate(
        key,
        "rotator sandbox kube-apiserver",
        [(san, False), (x509.BasicConstraints(ca=True, path_length=None), True)],
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem + cert.public_bytes(serialization.Encoding.PEM)


def load_or_create(directory: Path) -> Path:
    """The PEM file (key + self-signed certificate for 127.0.0.1), kept across restarts."""
    path = directory / PEM_NAME
    if path.exists() and b"CERTIFICATE" in path.read_bytes():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".kube-apiserver-")
    with os.fdopen(fd, "wb") as handle:
        handle.write(_generate())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def certificate_pem(pem_path: Path) -> bytes:
    text = pem_path.read_bytes()
    start = text.index(b"-----BEGIN CERTIFICATE-----")
    return text[start:]


class TlsListener:
    """Serves a copy of the emulator's application over TLS on a free 127.0.0.1 port."""

    def __init__(self, pem_path: Path) -> None:
        self.pem_path = pem_path
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def ca_data(self) -> str:
        return base64.b64encode(certificate_pem(self.pem_path)).decode()

    def ca_pem(self) -> str:
        return certificate_pem(self.pem_path).decode()

    def attach(self, app: web.Application, handler: web.RouteDef) -> None:
        """Start with ``app`` (same middlewares) and stop with it."""

        async def start(_: web.Application) -> None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.pem_path)
            tls_app = web.Application(middlewares=list(app.middlewares), client_max_size=app._client_max_size)
            tls_app.add_routes([handler])
            self._runner = web.AppRunner(tls_app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
            await self._runner.setup()
            # The first start picks a free port; a restart (a service brought back up) takes the same
            # one again, since kubeconfigs name it.
            site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=context, reuse_address=True)
            await site.start()
            self.port = int(self._runner.addresses[0][1])

        async def stop(_: web.Application) -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        app.on_startup.append(start)
        app.on_cleanup.append(stop)
