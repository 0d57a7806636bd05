"""The secrets as last seen: kept only while the watch keeps them current, never older than what is held."""

from __future__ import annotations

from typing import Any

from rotator.seensecrets import SeenSecrets


def secret(version: str, *, managed: bool = True, value: str = "x") -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": "rotator"} if managed else {}
    meta = {"name": "pull", "namespace": "team-a", "resourceVersion": version, "labels": labels}
    return {"metadata": meta, "data": {"k": value}}


def test_nothing_is_kept_before_the_watch_lists_nor_from_a_read_begun_before_it_listed_again() -> None:
    seen = SeenSecrets()
    seen.put(secret("5"))
    assert seen.get("team-a", "pull") is None, "kept before the watch listed: its stream would not follow it"
    seen.reset()
    epoch = seen.epoch
    seen.reset()  # the watch listed again while a read was under way
    seen.put(secret("6"), epoch=epoch)
    assert seen.get("team-a", "pull") is None
    seen.put(secret("7"), epoch=seen.epoch)
    assert seen.get("team-a", "pull") == secret("7")


def test_an_older_version_does_not_replace_a_newer_one_and_copies_are_handed_out() -> None:
    seen = SeenSecrets()
    seen.reset()
    seen.put(secret("9", value="new"))
    seen.put(secret("8", value="old"))  # a read answered before the event that is newer
    held = seen.get("team-a", "pull")
    assert held is not None and held["data"]["k"] == "new"
    held["data"]["k"] = "changed by a caller"
    again = seen.get("team-a", "pull")
    assert again is not None and again["data"]["k"] == "new"


def test_a_secret_no_longer_labelled_or_deleted_is_dropped() -> None:
    seen = SeenSecrets()
    seen.reset()
    seen.put(secret("3"))
    seen.put(secret("4", managed=False))  # out of the watch's label selector: its changes would not come
    assert seen.get("team-a", "pull") is None
    seen.put(secret("5"))
    seen.forget("team-a", "pull")
    assert len(seen) == 0
