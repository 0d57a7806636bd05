"""The command implementations behind ``rotator rotate|plan|status|check|run|schema``.

Each returns an exit code: 0 success, 1 the operation failed (the reason is printed), 2 bad
usage or configuration.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from typing import Any

from rotator import logs, redact, settings
from rotator.app import App
from rotator.cluster_credentials import with_cluster_credentials
from rotator.errors import ConfigError, RotatorError
from rotator.policy import Request
from rotator.status import key_expiry_check, render_text


def _load(args: argparse.Namespace) -> settings.Settings:
    loaded = settings.load(args.config)
    logs.get("rotator.config").info("config.loaded", config=loaded.redacted())
    return loaded


def _open(args: argparse.Namespace) -> tuple[settings.Settings, App]:
    """The settings a command works on, and its App: the config file's credentials, and with
    ``credentials_from: cluster | both`` those of the cluster's RegistryCredentials, admitted as the daemon
    admits them (a resource it refuses is named on stderr and left out)."""
    cfg = _load(args)
    app = App(cfg)
    if cfg.credentials_from == "file":
        return cfg, app
    try:
        cfg = app.settings = with_cluster_credentials(cfg, app.kube, note=_note)
    except RotatorError as exc:
        app.close()
        if isinstance(exc, ConfigError):  # no kubeconfig, say: a configuration error, named as such
            raise
        raise RotatorError(
            f"credentials_from: {cfg.credentials_from} ({cfg.source}) reads credentials from the cluster's "
            f"RegistryCredentials, and they cannot be listed: {exc}"
        ) from None
    except BaseException:
        app.close()
        raise
    if not cfg.credentials:
        _note(f"no credentials: {cfg.source} has none and the cluster has no RegistryCredential rotator manages")
    return cfg, app


def _note(line: str) -> None:
    print(f"rotator: {logs.scrub(line)}", file=sys.stderr)


def _names(cfg: settings.Settings, name: str | None) -> list[str]:
    return [cfg.credential(name).name] if name else [c.name for c in cfg.credentials]


def rotate(args: argparse.Namespace) -> int:
    _, app = _open(args)
    with app:
        journal = app.store.load(args.name)
        # An unfinished rotation (a crashed run) is finished first; it is the rotation asked for.
        request = None if journal.rotation else Request(reason="manual (rotator rotate)")
        outcome = app.reconciler(args.name).run(request, wait_budget=args.wait)
    if outcome.result == "succeeded":
        print(f"rotated {args.name}: rotation {outcome.rotation_id} succeeded" + _detail(outcome.detail))
        return 0
    if outcome.result == "idle":
        print(f"{args.name}: nothing to do")
        return 0
    print(f"rotation of {args.name} {outcome.result}: {redact.clean(outcome.detail)}", file=sys.stderr)
    return 1


def reconcile(args: argparse.Namespace) -> int:
    """One pass without asking for a rotation: finish one in flight, heal drift, revoke what is due."""
    cfg, app = _open(args)
    code = 0
    with app:
        for name in _names(cfg, args.name):
            worst = 0
            for _ in range(20):  # each pass ends after a finished rotation; go on until nothing is due
                outcome = app.reconciler(name).run(None, wait_budget=args.wait)
                print(f"{name}: {outcome.result}" + _detail(outcome.detail))
                worst = max(worst, 1 if outcome.result in ("failed", "inconclusive") else 0)
                if outcome.result not in ("succeeded", "failed"):
                    break
            code = max(code, worst)
    return code


def _detail(detail: str) -> str:
    return f" ({redact.clean(detail)})" if detail else ""


def status(args: argparse.Namespace) -> int:
    cfg, app = _open(args)
    now = dt.datetime.now(dt.UTC)
    with app:
        for name in _names(cfg, args.name):  # this process has not seen the keys: learn them to scrub them
            try:
                vault = app.store.load_vault(name)
            except RotatorError:  # a reader without access to the vault: the journal was scrubbed when written
                continue
            for value in (vault.current, vault.pending):
                if value:
                    redact.register(value)
        statuses = redact.clean_tree([app.status(name, now) for name in _names(cfg, args.name)])
    print(json.dumps(statuses, indent=2) if args.json else render_text(statuses, now))
    return 0


def plan(args: argparse.Namespace) -> int:
    """What a rotation would do now, read-only."""
    cfg, app = _open(args)
    out: list[dict[str, Any]] = []
    with app:
        for name in _names(cfg, args.name):
            cred = cfg.credential(name)
            reconciler = app.reconciler(name)
            journal = app.store.load(name)
            vault = app.store.load_vault(name)
            targets = reconciler.targets()
            views = reconciler.read_targets(targets)
            actions: list[str] = [f"mint a new {cred.provider.key_noun} ({cred.provider.kind})"]
            actions.append(f"verify it pulls {', '.join(cred.registry.images)}")
            for view in views:
                where = f"{view.target.sink} secret {view.target.namespace}/{view.target.name}"
                if view.refused:
                    actions.append(f"skip {where}: {view.refused}")
                elif not view.exists:
                    actions.append(f"create {where}")
                else:
                    actions.append(f"update {where} (entry {cred.registry.server})")
            for sink in reconciler.sinks.values():
                for target in (t for t in targets if t.sink == sink.name):
                    for account in sink.service_account_missing(target):
                        where = f"{target.namespace}/{account}"
                        where = f"{sink.name} {where}" if getattr(sink, "cluster", "") else where
                        actions.append(f"add {target.name} to serviceaccount {where}")
            if journal.current:
                actions.append(
                    f"retire key {journal.current.id}: disable after {cred.grace_period}, "
                    f"delete {cred.delete_after} later"
                )
            if journal.rotation:
                actions.insert(0, f"first finish rotation {journal.rotation.id} (phase {journal.rotation.phase})")
            out.append({"credential": name, "actions": actions, "vault_has_current": bool(vault.current)})
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for item in out:
            print(f"credential {item['credential']}: a rotation would")
            for action in item["actions"]:
                print(f"  - {action}")
    return 0


def check(args: argparse.Namespace) -> int:
    """Config valid, API tokens, Kubernetes API server, state store, IAM reachable and allowed, targets
    readable and writable, registry reachable. The start-up checks of ``rotator run`` say the same."""
    from rotator import preflight
    from rotator.apiauth import TOKEN_FILE_FIELD, load_token_file

    cfg = _load(args)
    failures = 0

    def report(ok: bool, what: str, detail: str = "", *, warn: bool = False) -> None:
        nonlocal failures
        failures += 0 if ok else 1
        print(
            f"{'FAIL' if not ok else 'WARN' if warn else 'ok  '} {what}"
            + (f": {redact.clean(detail)}" if detail else "")
        )

    report(True, f"config {cfg.source}", f"{len(cfg.credentials)} credential(s)")
    for warning in cfg.insecure_endpoints():
        report(True, warning, warn=True)
    auth = cfg.server.auth
    if auth.mode == "token-file" and auth.file is not None:
        try:
            report(True, f"{TOKEN_FILE_FIELD} {auth.file}", f"{len(load_token_file(auth.file))} token(s)")
            warning = preflight.token_file_mode_warning(cfg)
            if warning:
                report(True, TOKEN_FILE_FIELD, warning.removeprefix(f"{TOKEN_FILE_FIELD}: "), warn=True)
        except RotatorError as exc:
            report(False, TOKEN_FILE_FIELD, str(exc).removeprefix(f"{TOKEN_FILE_FIELD}: "))
    else:
        report(True, "server.auth", f"mode {auth.mode}")
    try:
        report(True, "server.tls", preflight.check_tls(cfg.server))
    except RotatorError as exc:
        report(False, "server.tls", str(exc).removeprefix("server.tls: "))
    with App(cfg) as app:
        if _kubeconfig_skips_tls_verify(cfg, app):
            report(
                True,
                f"kubernetes: the kubeconfig ({cfg.kubernetes.kubeconfig or 'default'}) sets insecure-skip-tls-verify",
                "the API server's certificate is not checked; give its CA instead "
                "(certificate-authority or certificate-authority-data)",
                warn=True,
            )
        kube_ok = True
        if preflight.uses_kubernetes(cfg):
            try:
                report(True, "kubernetes API server", preflight.check_api_server(app))
            except RotatorError as exc:
                kube_ok = False
                report(False, "kubernetes API server", str(exc))
        try:
            if kube_ok or cfg.state.kind != "configmap":
                preflight.check_state(app)
                report(True, "state store")
            else:
                report(False, "state store", "not checked: see the kubernetes API server line")
        except RotatorError as exc:
            report(False, "state store", str(exc))
        if cfg.credentials_from != "file" and kube_ok:  # the resources' credentials are checked as the file's
            left_out: list[str] = []
            try:
                with_cluster = with_cluster_credentials(cfg, app.kube, note=left_out.append)
                added = len(with_cluster.credentials) - len(cfg.credentials)
                report(True, "RegistryCredentials", f"{added + len(left_out)} resource(s)")
                for line in left_out:  # the daemon starts without them: a warning, as it logs one
                    report(True, line, warn=True)
                cfg = app.settings = with_cluster
            except RotatorError as exc:
                report(False, "RegistryCredentials", str(exc))
        for name in _names(cfg, args.name):
            cred = cfg.credential(name)
            try:
                provider = app.provider(cred)
                provider.check_access()
                report(True, f"{name}: {cred.provider.service_label}", cred.provider.rights_label)
                margin = app.policy(cred).expiry_margin
                now = dt.datetime.now(dt.UTC)
                for key in provider.list_owned(credential=name):
                    ok, text = key_expiry_check(key.id, key.expires_at, margin, now)
                    report(ok, f"{name}: {text}")
            except RotatorError as exc:
                report(False, f"{name}: {cred.provider.service_label}", str(exc))
            if cred.kubernetes is not None and not kube_ok:
                report(False, f"{name}: targets", "not checked: see the kubernetes API server line")
            else:
                _check_targets(app, name, report)
            reachable, detail = _registry_reachable(app, cred.registry.server)
            report(reachable, f"{name}: registry {cred.registry.server}", detail)
    return 0 if failures == 0 else 1


def _kubeconfig_skips_tls_verify(cfg: settings.Settings, app: App) -> bool:
    """Whether the Kubernetes client rotator would use trusts any certificate (only if it uses one)."""
    uses = cfg.state.kind == "configmap" or any(c.kubernetes for c in cfg.credentials)
    uses = uses or cfg.daemon.leader_election or cfg.server.auth.mode == "kubernetes"
    if not uses or cfg.kubernetes.in_cluster:
        return False
    try:
        return not app.kube.configuration.verify_ssl
    except Exception:  # no kubeconfig: the checks below report it
        return False


def _check_targets(app: App, name: str, report: Callable[..., None]) -> None:
    try:
        reconciler = app.reconciler(name)
        targets = reconciler.targets()
        views = reconciler.read_targets(targets)
        refused = [v for v in views if v.refused]
        report(
            not refused,
            f"{name}: {len(views)} target(s) readable",
            "; ".join(f"{v.target.namespace}/{v.target.name}: {v.refused}" for v in refused[:5]),
        )
        lost = reconciler.unreachable_clusters()
        for cluster, why in lost.items():  # a rotation would go on without it, and keep the old key for it
            report(False, f"{name}: cluster {cluster} does not answer", why)
        for sink in reconciler.sinks.values():
            if getattr(sink, "cluster", "") in lost:
                continue
            denied = sink.check_writable([t for t in targets if t.sink == sink.name])
            report(not denied, f"{name}: {sink.name} targets writable", "; ".join(denied[:5]))
    except RotatorError as exc:
        report(False, f"{name}: targets", str(exc))


def _registry_reachable(app: App, server: str) -> tuple[bool, str]:
    """An anonymous ``GET /v2/``: 200 or 401 means a v2 registry answers (no credential is sent)."""
    import httpx

    from rotator.imageref import registry_for_server

    url = app.verifier.base_url(registry_for_server(server)) + "/v2/"
    try:
        response = app.http.get(url)
    except httpx.HTTPError as exc:
        return False, f"{url}: {type(exc).__name__}"
    ok = response.status_code in (200, 401)
    return ok, f"{url} answered {response.status_code}"


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from prometheus_client import CollectorRegistry

    from rotator.daemon import Daemon
    from rotator.metrics import Metrics

    cfg = _load(args)
    if args.resync is not None:
        cfg = dataclasses.replace(cfg, daemon=dataclasses.replace(cfg.daemon, resync=dt.timedelta(seconds=args.resync)))
    registry = CollectorRegistry()
    return Daemon(App(cfg, metrics=Metrics(registry)), registry=registry).serve()


def schema(args: argparse.Namespace) -> int:
    from rotator.schemas import GENERATORS

    sys.stdout.write(GENERATORS[args.name]())
    return 0
