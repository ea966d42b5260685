"""A small kopf operator used by test_kopf.py (run with `kopf run --standalone`)."""

import os

import kopf


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: object) -> None:
    settings.watching.server_timeout = 10
    settings.posting.level = 100  # keep the test output quiet


@kopf.on.create("example.com", "v1", "gadgets")
def created(spec: dict, patch: kopf.Patch, **_: object) -> dict:
    patch.status["phase"] = "Ready"
    return {"seen": spec.get("size")}


@kopf.on.update("example.com", "v1", "gadgets", field="spec.size")
def resized(new: int, patch: kopf.Patch, **_: object) -> None:
    patch.status["size"] = new


@kopf.on.delete("example.com", "v1", "gadgets")
def deleted(name: str, **_: object) -> None:
    with open(os.environ["KOPF_TEST_MARKER"], "a") as marker:
        marker.write(f"deleted {name}\n")
