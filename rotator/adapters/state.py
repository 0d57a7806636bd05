"""State stores: an atomically written JSON file pair, or a ConfigMap + Secret in rotator's namespace.

The journal (no secrets) and the vault (key values) are kept apart so that the journal can be
read, logged and shown freely; the vault sits where Kubernetes keeps secrets (a Secret) or in a
0600 file. A corrupt state is reported, never overwritten.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from rotator import journal as journal_mod
from rotator.errors import LockedError, StateError, TransientError
from rotator.journal import CredentialJournal, RequestBook, Vault

_R = TypeVar("_R")  # a record read from the store (journal, request book)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _parse(text: str | bytes, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except ValueError as exc:
        raise StateError(
            f"{where} is corrupt ({exc}); move it aside to start over: rotator then adopts the key the "
            "secrets hold and sweeps owned keys nothing holds"
        ) from None


class FileStateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, credential: str, kind: str) -> Path:
        return self.directory / f"{credential}.{kind}.json"

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            return _parse(path.read_bytes(), str(path))
        except FileNotFoundError:
            return None

    def _load_record(self, credential: str, kind: str, load: Callable[[dict[str, Any]], _R], empty: _R) -> _R:
        """The ``kind`` record (journal, requests) of ``credential``: ``empty`` when there is none yet."""
        path = self._path(credential, kind)
        data = self._read(path)
        if data is None:
            return empty
        try:
            return load(data)
        except (TypeError, ValueError, KeyError) as exc:
            raise StateError(f"{path} has an unexpected shape: {exc}") from None

    def _save_record(self, credential: str, kind: str, data: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _atomic_write(self._path(credential, kind), json.dumps(data, indent=1).encode())

    def load(self, credential: str) -> CredentialJournal:
        return self._load_record(credential, "journal", journal_mod.load, CredentialJournal())

    def save(self, credential: str, journal: CredentialJournal) -> None:
        self._save_record(credential, "journal", journal_mod.dump(journal))

    def load_requests(self, credential: str) -> RequestBook:
        return self._load_record(credential, "requests", journal_mod.load_book, RequestBook())

    def save_requests(self, credential: str, book: RequestBook) -> None:
        self._save_record(credential, "requests", journal_mod.dump_book(book))

    def load_vault(self, credential: str) -> Vault:
        data = self._read(self._path(credential, "vault"))
        return Vault() if data is None else Vault.from_json(data)

    def save_vault(self, credential: str, vault: Vault) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _atomic_write(self._path(credential, "vault"), json.dumps(vault.to_json()).encode())

    @contextlib.contextmanager
    def lock(self, credential: str) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.directory / f"{credential}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = path.read_text().strip() or "another process"
                raise LockedError(
                    f"credential {credential!r} is being worked on by {holder}; wait for it to finish"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}".encode())
            yield
        finally:
            os.close(fd)

    def check(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = self.directory / ".probe"
        _atomic_write(probe, b"{}")
        probe.unlink()


class ConfigMapStateStore:
    """Journal in ConfigMap ``name``, vault in Secret ``name``-vault, both in rotator's namespace."""

    def __init__(self, core: Any, namespace: str, name: str, *, lock_factory: Callable[[str], Any] | None = None):
        self.core = core
        self.namespace = namespace
        self.name = name
        self.lock_factory = lock_factory

    def _api_error(self, exc: Exception, what: str) -> Exception:
        status = getattr(exc, "status", None)
        if status in (409, 429) or (isinstance(status, int) and status >= 500):
            return TransientError(f"state {what}: Kubernetes answered {status}")
        return StateError(
            f"state {what} in namespace {self.namespace}: Kubernetes answered {status}: "
            f"{getattr(exc, 'reason', exc)}; check rotator's Role allows it"
        )

    def _get(self, kind: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        read = self.core.read_namespaced_config_map if kind == "configmap" else self.core.read_namespaced_secret
        name = self.name if kind == "configmap" else f"{self.name}-vault"
        try:
            response = read(name, self.namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self._api_error(exc, f"read {kind} {name}") from None
        obj: dict[str, Any] = json.loads(response.data)
        return obj

    def _put(self, kind: str, key: str, value: str) -> None:
        from kubernetes.client.exceptions import ApiException

        name = self.name if kind == "configmap" else f"{self.name}-vault"
        for _ in range(10):
            obj = self._get(kind)
            encoded = value if kind == "configmap" else base64.b64encode(value.encode()).decode()
            try:
                if obj is None:
                    body: dict[str, Any] = {
                        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "rotator"}},
                        "data": {key: encoded},
                    }
                    if kind == "configmap":
                        self.core.create_namespaced_config_map(self.namespace, body)
                    else:
                        body["type"] = "Opaque"
                        self.core.create_namespaced_secret(self.namespace, body)
                else:
                    obj.setdefault("data", {})
                    obj["data"] = dict(obj["data"] or {}, **{key: encoded})
                    if kind == "configmap":
                        self.core.replace_namespaced_config_map(name, self.namespace, obj)
                    else:
                        self.core.replace_namespaced_secret(name, self.namespace, obj)
                return
            except ApiException as exc:
                if exc.status == 409:
                    continue
                raise self._api_error(exc, f"write {kind} {name}") from None
        raise TransientError(f"state write {kind} {name}: kept conflicting after 10 attempts")

    def _load_record(self, credential: str, kind: str, load: Callable[[dict[str, Any]], _R], empty: _R) -> _R:
        key = f"{credential}.{kind}.json"
        raw = ((self._get("configmap") or {}).get("data") or {}).get(key)
        if raw is None:
            return empty
        return load(_parse(raw, f"ConfigMap {self.namespace}/{self.name} key {key}"))

    def load(self, credential: str) -> CredentialJournal:
        return self._load_record(credential, "journal", journal_mod.load, CredentialJournal())

    def save(self, credential: str, journal: CredentialJournal) -> None:
        self._put("configmap", f"{credential}.journal.json", json.dumps(journal_mod.dump(journal)))

    def load_requests(self, credential: str) -> RequestBook:
        return self._load_record(credential, "requests", journal_mod.load_book, RequestBook())

    def save_requests(self, credential: str, book: RequestBook) -> None:
        self._put("configmap", f"{credential}.requests.json", json.dumps(journal_mod.dump_book(book)))

    def load_vault(self, credential: str) -> Vault:
        obj = self._get("secret")
        raw = ((obj or {}).get("data") or {}).get(f"{credential}.vault.json")
        if raw is None:
            return Vault()
        return Vault.from_json(_parse(base64.b64decode(raw), f"Secret {self.namespace}/{self.name}-vault"))

    def save_vault(self, credential: str, vault: Vault) -> None:
        self._put("secret", f"{credential}.vault.json", json.dumps(vault.to_json()))

    @contextlib.contextmanager
    def lock(self, credential: str) -> Iterator[None]:
        # Across replicas, leader election decides who acts; within a process the reconciler locks.
        if self.lock_factory is None:
            yield
            return
        with self.lock_factory(credential):
            yield

    def check(self) -> None:
        self._get("configmap")
        self._get("secret")
