"""Docker Hub in the sandbox: the Hub API (``dockerhub_api``) and the registry (``dockerhub_registry``).

The two emulators share one set of accounts (``dockerhub_accounts.Hub``), held by the API emulator;
the registry's token service asks it on every request, so a token deactivated through the API stops
pulling at once. See ``dockerhub_api`` and ``dockerhub_registry`` for the wire behaviour.
"""

from __future__ import annotations

from rotator.sandbox.dockerhub_api import DockerHubApiEmulator
from rotator.sandbox.dockerhub_registry import DockerHubRegistryEmulator

__all__ = ["DockerHubApiEmulator", "DockerHubRegistryEmulator"]
