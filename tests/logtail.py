"""Reading what rotator logged in-process during one test (conftest sends it all to one JSON-lines file)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class LogTail:
    """The suite's in-process structlog JSON lines written after this object was made."""

    def __init__(self) -> None:
        self.path = Path(os.environ["ROTATOR_TEST_LOG_DIR"]) / "in-process.jsonl"
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def events(self, event: str, **match: Any) -> list[dict[str, Any]]:
        with open(self.path, "rb") as stream:
            stream.seek(self.offset)
            lines = stream.read().decode(errors="replace").splitlines()
        out = []
        for line in lines:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if item.get("event") == event and all(item.get(k) == v for k, v in match.items()):
                out.append(item)
        return out
