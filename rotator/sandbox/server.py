"""``rotator sandbox``: every emulator in one process, each on its own 127.0.0.1 port.

Ports are ``--port-base`` + offset (admin 0, iam 1, kubernetes 2, registry 3, codeengine 4,
dockerhub_api 5, dockerhub_registry 6, and with ``--clusters N`` the clusters kubernetes-2..N at
7..N+5); ``--port-base 0`` picks free ports. When all are listening, the endpoints file is written
atomically: its presence means ready. The admin API can take any emulator down (its ports refuse
connections) and bring it back with its state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib
import json
import os
import signal
import socket
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiohttp import web

from rotator.sandbox import fleet
from rotator.sandbox.base import Context, Emulator
from rotator.sandbox.faults import FaultRule, ServiceControl
from rotator.sandbox.tokens import TokenSigner
from rotator.sandbox.world import Seed

DEFAULT_PORT_BASE = 18600
# Where the sandbox writes files clients read: kubeconfig, admin-apikey, kubernetes-token, the
# token signer's certificate. config/sandbox.yaml points here.
DEFAULT_FILES_DIR = ".sandbox"

# name, port offset, "module:Class" (a module not yet present is skipped).
SERVICES: list[tuple[str, int, str]] = [
    ("iam", 1, "rotator.sandbox.iam:IamEmulator"),
    ("kubernetes", 2, "rotator.sandbox.kube:KubeEmulator"),
    ("registry", 3, "rotator.sandbox.registry:RegistryEmulator"),
    ("codeengine", 4, "rotator.sandbox.codeengine:CodeEngineEmulator"),
    ("dockerhub_api", 5, "rotator.sandbox.dockerhub:DockerHubApiEmulator"),
    ("dockerhub_registry", 6, "rotator.sandbox.dockerhub:DockerHubRegistryEmulator"),
]


class SandboxError(Exception):
    """A start-up problem with a message for the person who ran the command."""


def _load_class(spec: str) -> type | None:
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise
    cls: type = getattr(module, class_name)
    return cls


def bind(port: int, service: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise SandboxError(
                f"port {port} for the {service} emulator is already in use (is another sandbox running?); "
                "stop it, or pass --port-base N to move every port, or --port-base 0 for free ports"
            ) from None
        raise SandboxError(f"cannot listen on 127.0.0.1:{port} for {service}: {exc.strerror}") from None
    sock.listen(512)
    sock.setblocking(False)
    return sock


class Sandbox:
    def __init__(
        self,
        *,
        port_base: int,
        state_dir: Path | None,
        files_dir: Path,
        overrides: dict[str, int] | None = None,
        clusters: int = 1,
    ) -> None:
        self.state_dir = state_dir
        self.files_dir = files_dir
        self.cluster_count = clusters
        files_dir.mkdir(parents=True, exist_ok=True)
        overrides = overrides or {}
        services = [("admin", 0, "")] + [s for s in SERVICES if _load_class(s[2]) is not None]
        services += fleet.extra_services(clusters)
        self.sockets: dict[str, socket.socket] = {}
        self.ports: dict[str, int] = {}
        try:
            for name, offset, _ in services:
                port = overrides.get(name, port_base + offset if port_base else 0)
                self.sockets[name] = bind(port, name)
                self.ports[name] = self.sockets[name].getsockname()[1]
        except SandboxError:
            for sock in self.sockets.values():
                sock.close()
            raise
        self.urls = {name: f"http://127.0.0.1:{port}" for name, port in self.ports.items()}
        self.seed = Seed.load_or_create(state_dir)
        self.signer = TokenSigner.load_or_generate(self.files_dir)
        self._write_secret_file("admin-apikey", self.seed.admin_apikey)
        self._write_secret_file("kubernetes-token", self.seed.kubernetes_token)
        ctx = Context(seed=self.seed, signer=self.signer, urls=self.urls, files_dir=self.files_dir)
        self.emulators: dict[str, Emulator] = {}
        for name, _, spec in services[1:]:
            cls = _load_class(spec)
            assert cls is not None
            self.emulators[name] = cls(ctx, name) if fleet.is_extra_service(name) else cls(ctx)
            ctx.peers[name] = self.emulators[name]
        self.controls = {name: ServiceControl(emu) for name, emu in self.emulators.items()}
        self._restore()
        self._apps: dict[str, web.Application] = {}
        self._runners: dict[str, web.AppRunner] = {}

    def _write_secret_file(self, name: str, value: str) -> None:
        path = self.files_dir / name
        path.write_text(value)
        path.chmod(0o600)

    # -- persistence ---------------------------------------------------------------------------
    def _restore(self) -> None:
        if self.state_dir is None:
            return
        for name, emu in self.emulators.items():
            path = self.state_dir / f"{name}.json"
            if path.exists():
                emu.load(json.loads(path.read_text()))

    def save(self) -> None:
        if self.state_dir is None:
            return
        for name, emu in self.emulators.items():
            path = self.state_dir / f"{name}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(emu.dump()))
            tmp.chmod(0o600)
            os.replace(tmp, path)

    # -- description ---------------------------------------------------------------------------
    def endpoints(self) -> dict[str, Any]:
        seed = self.seed
        info: dict[str, Any] = dict(self.urls)
        registry_host = self.urls.get("registry", "").removeprefix("http://")
        info.update(
            account_id=seed.account_id,
            service_id=seed.service_id,
            service_iam_id=Seed.iam_id(seed.service_id),
            admin_service_id=seed.admin_service_id,
            admin_apikey=seed.admin_apikey,
            admin_apikey_file=str(self.files_dir / "admin-apikey"),
            outsider_apikey=seed.outsider_apikey,
            foreign_apikeys=seed.foreign_apikeys,
            kubernetes_token=seed.kubernetes_token,
            kubernetes_readonly_token=seed.kubernetes_readonly_token,
            namespaces=list(seed.namespaces),
            labelled_namespaces=list(seed.labelled_namespaces),
            namespace_label="=".join(seed.namespace_label),
            registry_host=registry_host,
            images=[f"{registry_host}/{repo}" for repo in seed.repositories],
            registry_token_cert=str(self.files_dir / "signer-cert.pem"),
            registry_token_issuer="rotator-sandbox",
            files_dir=str(self.files_dir),
        )
        for emu in self.emulators.values():
            describe = getattr(emu, "describe", None)
            if describe is not None:
                info.update(describe())
        info["clusters"] = [
            self.emulators[fleet.service_name(i)].cluster(self.cluster_count)  # type: ignore[attr-defined]
            for i in range(1, self.cluster_count + 1)
            if fleet.service_name(i) in self.emulators
        ]
        return info

    def write_kubeconfig(self) -> Path:
        path = self.files_dir / "kubeconfig"
        server = self.urls.get("kubernetes", "")
        # The Kubernetes emulator writes its own (TLS: kubectl sends no token over plain HTTP).
        kubeconfig = getattr(self.emulators.get("kubernetes"), "kubeconfig", None)
        if kubeconfig is not None:
            path.write_text(kubeconfig() if self.cluster_count == 1 else self._fleet_kubeconfig())
            path.chmod(0o600)
            return path
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: sandbox\n  cluster:\n    server: {server}\n"
            f"users:\n- name: admin\n  user:\n    token: {self.seed.kubernetes_token}\n"
            "contexts:\n- name: sandbox\n  context:\n    cluster: sandbox\n    user: admin\n"
            "current-context: sandbox\n"
        )
        path.chmod(0o600)
        return path

    def _fleet_kubeconfig(self) -> str:
        entries = []
        for i in range(1, self.cluster_count + 1):
            emu: Any = self.emulators[fleet.service_name(i)]
            context = fleet.cluster_name(emu.name, self.cluster_count)
            entries.append(emu.kubeconfig_entry(context, f"{context}-admin"))
        return fleet.kubeconfig(entries, aliases={fleet.SINGLE_CONTEXT: entries[0].context})

    # -- serving -------------------------------------------------------------------------------
    def _admin_app(self) -> web.Application:
        app = web.Application()
        routes = web.RouteTableDef()

        @routes.get("/healthz")
        async def healthz(_: web.Request) -> web.Response:
            down = sorted(set(self.emulators) - set(self._runners))
            return web.json_response({"status": "ok", "services": sorted(self.emulators), "down": down})

        @routes.post("/services/{service}/{state:down|up}")
        async def service_state(request: web.Request) -> web.Response:
            """Take an emulator down (its ports refuse connections, open ones are cut) or bring it
            back on the same ports with the state it had."""
            name = request.match_info["service"]
            if name not in self.emulators:
                raise web.HTTPNotFound(
                    text=json.dumps({"error": f"unknown service {name!r}; known: {sorted(self.emulators)}"}),
                    content_type="application/json",
                )
            try:
                if request.match_info["state"] == "down":
                    await self.take_down(name)
                else:
                    await self.bring_up(name)
            except SandboxError as exc:
                return web.json_response({"error": str(exc)}, status=409)
            return web.json_response({"service": name, "up": name in self._runners})

        @routes.get("/endpoints")
        async def endpoints(_: web.Request) -> web.Response:
            return web.json_response(self.endpoints())

        @routes.get("/faults")
        async def faults(_: web.Request) -> web.Response:
            return web.json_response({n: c.to_json() for n, c in self.controls.items()})

        async def _rules(request: web.Request) -> tuple[ServiceControl, list[FaultRule]]:
            control = self.controls.get(request.match_info["service"])
            if control is None:
                raise web.HTTPNotFound(text=json.dumps({"error": "unknown service"}))
            try:
                body = await request.json()
                raw = body["rules"] if isinstance(body, dict) and "rules" in body else [body]
                return control, [FaultRule.from_json(r) for r in raw]
            except (ValueError, TypeError, KeyError) as exc:
                raise web.HTTPBadRequest(
                    text=json.dumps({"error": f"bad fault rule: {exc}"}), content_type="application/json"
                ) from None

        @routes.put("/faults/{service}")
        async def set_faults(request: web.Request) -> web.Response:
            control, rules = await _rules(request)
            control.rules = rules
            return web.json_response(control.to_json())

        @routes.post("/faults/{service}")
        async def add_fault(request: web.Request) -> web.Response:
            control, rules = await _rules(request)
            control.rules.extend(rules)
            return web.json_response(control.to_json())

        @routes.delete("/faults")
        async def clear_faults(_: web.Request) -> web.Response:
            for control in self.controls.values():
                control.rules = []
            return web.Response(status=204)

        @routes.get("/requests/{service}")
        async def requests_log(request: web.Request) -> web.Response:
            control = self.controls.get(request.match_info["service"])
            if control is None:
                raise web.HTTPNotFound(text=json.dumps({"error": "unknown service"}))
            since = int(request.query.get("since", "0") or 0)
            return web.json_response([asdict(r) for r in control.log if r.seq > since])

        @routes.post("/save")
        async def save(_: web.Request) -> web.Response:
            self.save()
            return web.Response(status=204)

        app.add_routes(routes)
        for emu in self.emulators.values():
            admin_routes = getattr(emu, "admin_routes", None)
            if admin_routes is not None:
                app.add_routes(admin_routes())
        return app

    def _service_app(self, name: str) -> web.Application:
        app = web.Application(middlewares=[self.controls[name].middleware], client_max_size=8 * 1024**2)
        self.emulators[name].setup(app)
        return app

    async def _serve(self, name: str, app: web.Application) -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        await web.SockSite(runner, self.sockets[name]).start()
        self._runners[name] = runner

    async def start(self) -> None:
        await self._serve("admin", self._admin_app())
        for name in self.emulators:
            await self._serve(name, self._service_app(name))

    async def take_down(self, name: str) -> None:
        """Close the service's listeners and connections; its emulator (the state) stays."""
        runner = self._runners.pop(name, None)
        if runner is not None:
            await runner.cleanup()

    async def bring_up(self, name: str) -> None:
        if name in self._runners:
            return
        self.sockets[name] = bind(self.ports[name], name)
        await self._serve(name, self._service_app(name))

    async def stop(self) -> None:
        for runner in self._runners.values():
            await runner.cleanup()
        self.save()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    os.replace(tmp, path)


async def serve(args: argparse.Namespace) -> int:
    overrides = {name: port for name, port in (args.port or [])}
    if args.state_dir:
        Path(args.state_dir).mkdir(parents=True, exist_ok=True)
    sandbox = Sandbox(
        port_base=args.port_base,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        files_dir=Path(args.files_dir or args.state_dir or DEFAULT_FILES_DIR),
        overrides=overrides,
        clusters=args.clusters,
    )
    await sandbox.start()
    info = sandbox.endpoints()
    info["kubeconfig"] = str(sandbox.write_kubeconfig())
    if args.endpoints_file:
        _write_atomic(Path(args.endpoints_file), json.dumps(info, indent=2))
    print(
        "rotator sandbox ready: "
        + ", ".join(f"{n}={u}" for n, u in sandbox.urls.items())
        + (f"; endpoints in {args.endpoints_file}" if args.endpoints_file else ""),
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await sandbox.stop()
        if args.endpoints_file:
            with contextlib.suppress(FileNotFoundError):
                Path(args.endpoints_file).unlink()
    print("rotator sandbox stopped", flush=True)
    return 0


def _port_override(text: str) -> tuple[str, int]:
    name, _, port = text.partition("=")
    known = ["admin"] + [s[0] for s in SERVICES]
    if (name not in known and not fleet.is_extra_service(name)) or not port.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected SERVICE=PORT with SERVICE one of {', '.join(known)} or kubernetes-2..kubernetes-N"
        )
    return name, int(port)


def _cluster_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= fleet.MAX_CLUSTERS:
        raise argparse.ArgumentTypeError(
            f"--clusters takes a whole number from 1 to {fleet.MAX_CLUSTERS} (got {text!r}); e.g. --clusters 2"
        )
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port-base",
        type=int,
        default=DEFAULT_PORT_BASE,
        help=f"first port (admin); services follow at +1.. (default {DEFAULT_PORT_BASE}; 0 = free ports)",
    )
    parser.add_argument("--port", action="append", type=_port_override, metavar="SERVICE=PORT", help="move one service")
    parser.add_argument(
        "--clusters",
        type=_cluster_count,
        default=1,
        help="serve this many independent Kubernetes API emulators, a kubeconfig context each (default 1)",
    )
    parser.add_argument("--endpoints-file", help="write the endpoints and seeded identities here (JSON) when ready")
    parser.add_argument("--state-dir", help="keep state here across restarts (default: in memory)")
    parser.add_argument(
        "--files-dir",
        help=f"write kubeconfig, admin-apikey and other client files here (default: the state dir, else "
        f"{DEFAULT_FILES_DIR}/)",
    )


def main(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(serve(args))
    except SandboxError as exc:
        print(f"rotator sandbox: {exc}", file=sys.stderr)
        return 2
