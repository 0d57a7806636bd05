"""Every input ``rotator run`` needs, loaded and checked before any thread starts.

A daemon that starts its workers and only then finds its token file bad or its port taken has
already minted keys and written secrets, and in a cluster it would crash-loop one rotation step
per restart. So ``Daemon.prepare`` calls these first, in this order, and starts nothing when one
fails: the ``server.auth`` token file, the ``server.listen`` socket (bound here and handed to
the server), the Kubernetes client config and its API server, the state store. ``rotator check``
reports the same checks with the same messages.

The error's class decides the exit code: ``ConfigError`` (2) for what only a change of config or
environment fixes (a bad token file, a port in use, a missing kubeconfig, an API server whose
certificate is not trusted); ``TransientError`` / ``StateError`` (1) for a runtime failure (an
API server that does not answer, a state store that cannot be read).
"""

from __future__ import annotations

import errno
import socket
import stat
from typing import Any

from rotator.apiauth import TOKEN_FILE_FIELD, Authenticator, build_authenticator
from rotator.app import App
from rotator.errors import ConfigError, StateError
from rotator.settings import ServerSettings, Settings

# Bounds a start-up question to the API server (per attempt; urllib3 tries a refused connection 4 times).
API_SERVER_TIMEOUT_S = 5.0


def uses_kubernetes(settings: Settings) -> bool:
    """Whether anything configured talks to a Kubernetes API server."""
    return (
        any(c.kubernetes is not None for c in settings.credentials)
        or settings.state.kind == "configmap"
        or settings.daemon.leader_election
        or settings.server.auth.mode == "kubernetes"
        or settings.credentials_from != "file"
    )


def authenticator(app: App) -> Authenticator:
    """The API's authenticator, its token file loaded and checked (a bad one is a ConfigError)."""
    auth = app.settings.server.auth
    return build_authenticator(auth, api_client=app.kube if auth.mode == "kubernetes" else None)


def token_file_mode_warning(settings: Settings) -> str:
    """A warning when ``server.auth.file`` can be read by others than its owner (it holds bearer tokens)."""
    path = settings.server.auth.file
    if settings.server.auth.mode != "token-file" or path is None:
        return ""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return ""  # reported by the load itself
    if mode & 0o077:
        return f"{TOKEN_FILE_FIELD}: {path} has mode {mode:04o}; it holds bearer tokens: chmod 600 {path}"
    return ""


def bind_listener(server: ServerSettings) -> socket.socket:
    """The API's listening socket for ``server.listen``, bound now so a port in use stops start-up."""
    host, port = server.host, server.port
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        # create_server sets SO_REUSEADDR (a restart is not refused by old connections in TIME_WAIT) and
        # IPV6_V6ONLY on [::], as aiohttp's own listener did.
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            why = "is already in use (another rotator, or another program)"
            fix = "stop that process, or choose another port in server.listen"
        else:
            why = f"cannot be listened on ({exc.strerror or type(exc).__name__})"
            fix = "use an address of this host, e.g. 0.0.0.0:8080"
        raise ConfigError(f"server.listen: {server.listen} {why}; {fix}") from None


def check_tls(server: ServerSettings) -> str:
    """Loads ``server.tls`` the way the listener will (ConfigError naming the field when the pair does not
    load), so a bad certificate stops start-up before any worker runs rather than after."""
    if server.tls is None:
        return "off (plain HTTP)"
    from rotator.apitransport import ReloadingTls

    ReloadingTls(server.tls.cert_file, server.tls.key_file)
    return f"cert_file {server.tls.cert_file}"


def check_api_server(app: App) -> str:
    """Load the Kubernetes client config and ask its API server for its version (a read). Returns what
    answered; raises ConfigError (no config, untrusted certificate) or TransientError (no answer)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from rotator.adapters.kubernetes import ApiServerUnreachable, map_api_error

    api: Any = app.kube
    try:
        info = client.VersionApi(api).get_code(_request_timeout=API_SERVER_TIMEOUT_S)
    except ApiServerUnreachable as exc:
        if exc.tls:
            raise ConfigError(str(exc)) from None
        raise
    except ApiException as exc:
        raise map_api_error(exc, f"GET {api.configuration.host}/version") from None
    return f"{api.configuration.host} answers (Kubernetes {info.git_version})"


def check_state(app: App) -> None:
    """The state store is reachable and writable, and every credential's journal and vault parse."""
    settings = app.settings
    try:
        app.store.check()
    except OSError as exc:
        raise ConfigError(
            f"state.path: {settings.state.path} is not a writable directory ({exc.strerror or type(exc).__name__}); "
            "give a directory rotator may create and write (mode 0700)"
        ) from None
    for cred in settings.credentials:
        try:
            app.store.load(cred.name)
            app.store.load_vault(cred.name)
        except (TypeError, ValueError, KeyError) as exc:  # a vault of the wrong shape
            raise StateError(f"state of {cred.name}: {type(exc).__name__}; move it aside to start over") from None
