"""Libraries' stdlib log records become rotator's JSON log lines, never bare text (Python warnings such as
InsecureRequestWarning: test_rotation_e2e.py::test_check_warns_of_plain_http_and_unverified_tls_and_logs_stay_json)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from logtail import LogTail

from rotator import logs


def test_library_log_records_are_json_log_lines() -> None:
    """urllib3 logs "Connection pool is full" with stdlib logging: it is one structured line in rotator's
    log (scrubbed like the rest), not text Python prints on stderr; below WARNING nothing is logged, nor its notes of
    connection retries (rotator's own retry.attempt / cluster.unreachable say that once)."""
    tail = LogTail()
    logs.register_secret("lib-echoed-secret-value")
    logging.getLogger("urllib3.connectionpool").warning(
        "Connection pool is full, discarding connection: %s (%s)", "127.0.0.1", "lib-echoed-secret-value"
    )
    logging.getLogger("urllib3.connectionpool").info("below the threshold: not logged")
    logging.getLogger("urllib3.connectionpool").warning(
        "Retrying (%r) after connection broken by '%r': %s", "Retry(total=2)", "refused", "/api/v1/namespaces"
    )
    logging.getLogger("urllib3.connectionpool").warning("%s %s", "x" * 290, "lib-echoed-secret-value")
    first, long = tail.events("python.log")
    assert first["logger"] == "urllib3.connectionpool" and first["level"] == "warning"
    assert first["message"] == "Connection pool is full, discarding connection: 127.0.0.1 (***)"
    assert "lib-echo" not in long["message"], "scrubbed before it is cut short, so no prefix survives"


def test_a_logger_made_before_configure_logs_as_configured() -> None:
    """Module-level loggers are made at import, before the CLI configures logging: they follow the
    configuration in force when they log (JSON on stderr at the configured level), not the defaults."""
    script = (
        "from rotator.adapters import kubernetes_events\n"
        "from rotator import logs\n"
        "logs.configure(level='info', json_output=True)\n"
        "kubernetes_events.log.debug('below.the.level')\n"
        "kubernetes_events.log.info('module.logger', a=1)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout == ""
    assert [json.loads(line)["event"] for line in out.stderr.splitlines()] == ["module.logger"]
