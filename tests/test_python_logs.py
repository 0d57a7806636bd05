"""Libraries' stdlib log records become rotator's JSON log lines, never bare text (Python warnings such as
InsecureRequestWarning: test_rotation_e2e.py::test_check_warns_of_plain_http_and_unverified_tls_and_logs_stay_json)."""

from __future__ import annotations

import logging

from logtail import LogTail

from rotator import logs


def test_library_log_records_are_json_log_lines() -> None:
    """urllib3 logs "Connection pool is full" with stdlib logging: it is one structured line in rotator's
    log (scrubbed like the rest), not text Python prints on stderr; below WARNING nothing is logged."""
    tail = LogTail()
    logs.register_secret("lib-echoed-secret-value")
    logging.getLogger("urllib3.connectionpool").warning(
        "Connection pool is full, discarding connection: %s (%s)", "127.0.0.1", "lib-echoed-secret-value"
    )
    logging.getLogger("urllib3.connectionpool").info("below the threshold: not logged")
    logging.getLogger("urllib3.connectionpool").warning("%s %s", "x" * 290, "lib-echoed-secret-value")
    first, long = tail.events("python.log")
    assert first["logger"] == "urllib3.connectionpool" and first["level"] == "warning"
    assert first["message"] == "Connection pool is full, discarding connection: 127.0.0.1 (***)"
    assert "lib-echo" not in long["message"], "scrubbed before it is cut short, so no prefix survives"
