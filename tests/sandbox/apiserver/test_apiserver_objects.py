"""ObjectStore semantics: what the registry and etcd guarantee on a real cluster."""

from __future__ import annotations

import base64

import pytest

from sealfleet.sandbox.objects import GENERATE_NAME_ALPHABET, ApiError, ObjectStore

SEALED = "sealedsecrets.bitnami.com"


def sealed(name: str, data: str = "AAA") -> dict[str, object]:
    return {"metadata": {"name": name}, "spec": {"encryptedData": {"k": data}}}


def owned_secret(name: str, owner: dict[str, object]) -> dict[str, object]:
    meta = owner["metadata"]
    assert isinstance(meta, dict)
    return {
        "metadata": {
            "name": name,
            "ownerReferences": [
                {
                    "apiVersion": "bitnami.com/v1alpha1",
                    "kind": "SealedSecret",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                }
            ],
        },
        "data": {"k": base64.b64encode(b"v").decode()},
    }


def test_bootstrap_namespaces_and_monotonic_resource_version() -> None:
    store = ObjectStore()
    names = [n["metadata"]["name"] for n in store.list("namespaces", None)[0]]
    assert names == ["default", "kube-node-lease", "kube-public", "kube-system"]
    before = store.resource_version
    a = store.create("secrets", "default", {"metadata": {"name": "a"}})
    b = store.create(SEALED, "default", sealed("b"))
    assert int(a["metadata"]["resourceVersion"]) == before + 1
    assert int(b["metadata"]["resourceVersion"]) == before + 2
    assert store.resource_version == before + 2
    assert a["metadata"]["uid"] != b["metadata"]["uid"]
    assert a["kind"] == "Secret"
    assert a["apiVersion"] == "v1"


def test_get_returns_independent_copies() -> None:
    store = ObjectStore()
    store.create("secrets", "default", {"metadata": {"name": "a", "labels": {"x": "1"}}})
    first = store.get("secrets", "default", "a")
    first["metadata"]["labels"]["x"] = "changed"
    assert store.get("secrets", "default", "a")["metadata"]["labels"] == {"x": "1"}


def test_writes_never_mutate_the_callers_object() -> None:
    store = ObjectStore()
    body = {"metadata": {"name": "a", "labels": {"x": "1"}}, "stringData": {"k": "v"}}
    snapshot = repr(body)
    store.create("secrets", "default", body)
    assert repr(body) == snapshot
    update = store.get("secrets", "default", "a")
    update["stringData"] = {"k2": "v2"}
    snapshot = repr(update)
    store.update("secrets", "default", "a", update)
    assert repr(update) == snapshot
    with pytest.raises(ApiError) as unserializable:
        store.create("secrets", "default", {"metadata": {"name": "b"}, "data": {"k": object()}})
    assert unserializable.value.code == 400
    rv = store.resource_version
    with pytest.raises(ApiError):
        store.create("events", "default", {"metadata": {"name": "e"}, "x": object()})
    assert store.resource_version == rv


def test_generate_name_uses_the_vowel_free_alphabet() -> None:
    store = ObjectStore()
    names = {
        store.create("secrets", "default", {"metadata": {"generateName": "gen-"}})["metadata"][
            "name"
        ]
        for _ in range(30)
    }
    assert len(names) == 30
    for name in names:
        assert name.startswith("gen-")
        assert len(name) == len("gen-") + 5
        assert set(name[4:]) <= set(GENERATE_NAME_ALPHABET)


def test_errors_are_status_objects_with_real_reasons() -> None:
    store = ObjectStore()
    with pytest.raises(ApiError) as missing:
        store.get("secrets", "default", "nope")
    assert missing.value.status() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'secrets "nope" not found',
        "reason": "NotFound",
        "code": 404,
        "details": {"name": "nope", "kind": "secrets"},
    }
    store.create("secrets", "default", {"metadata": {"name": "a"}})
    with pytest.raises(ApiError) as dup:
        store.create("secrets", "default", {"metadata": {"name": "a"}})
    assert (dup.value.code, dup.value.reason) == (409, "AlreadyExists")
    with pytest.raises(ApiError) as bad_name:
        store.create("secrets", "default", {"metadata": {"name": "Not_Valid"}})
    assert (bad_name.value.code, bad_name.value.reason) == (422, "Invalid")
    assert bad_name.value.status()["details"]["causes"][0]["field"] == "metadata.name"


def test_stale_update_conflicts_and_noop_update_keeps_the_version() -> None:
    store = ObjectStore()
    created = store.create("secrets", "default", {"metadata": {"name": "a"}})
    fresh = store.get("secrets", "default", "a")
    fresh["metadata"]["labels"] = {"v": "2"}
    updated = store.update("secrets", "default", "a", fresh)
    assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    created["metadata"]["labels"] = {"v": "stale"}
    with pytest.raises(ApiError) as conflict:
        store.update("secrets", "default", "a", created)
    assert (conflict.value.code, conflict.value.reason) == (409, "Conflict")
    rv = store.resource_version
    same = store.update("secrets", "default", "a", store.get("secrets", "default", "a"))
    assert same["metadata"]["resourceVersion"] == updated["metadata"]["resourceVersion"]
    assert store.resource_version == rv


def test_generation_tracks_spec_only_and_secrets_have_none() -> None:
    store = ObjectStore()
    obj = store.create(SEALED, "default", sealed("s"))
    assert obj["metadata"]["generation"] == 1
    obj["metadata"]["labels"] = {"only": "metadata"}
    obj = store.update(SEALED, "default", "s", obj)
    assert obj["metadata"]["generation"] == 1
    obj["spec"]["encryptedData"]["k"] = "BBB"
    obj = store.update(SEALED, "default", "s", obj)
    assert obj["metadata"]["generation"] == 2
    secret = store.create("secrets", "default", {"metadata": {"name": "x"}})
    assert "generation" not in secret["metadata"]


def test_status_subresource_is_separate_from_the_main_resource() -> None:
    store = ObjectStore()
    obj = store.create(SEALED, "default", {**sealed("s"), "status": {"ignored": True}})
    assert "status" not in obj
    obj["status"] = {"observedGeneration": 1, "conditions": [{"type": "Synced", "status": "True"}]}
    obj["spec"]["encryptedData"]["k"] = "ignored-by-status"
    after = store.update(SEALED, "default", "s", obj, subresource="status")
    assert after["status"]["observedGeneration"] == 1
    assert after["spec"]["encryptedData"]["k"] == "AAA"
    assert after["metadata"]["generation"] == 1
    after["status"] = {"observedGeneration": 99}
    main = store.update(SEALED, "default", "s", after)
    assert main["status"]["observedGeneration"] == 1


def test_secret_string_data_base64_and_immutability() -> None:
    store = ObjectStore()
    secret = store.create(
        "secrets", "default", {"metadata": {"name": "s"}, "stringData": {"user": "admin"}}
    )
    assert secret["data"] == {"user": base64.b64encode(b"admin").decode()}
    assert "stringData" not in secret
    assert secret["type"] == "Opaque"
    with pytest.raises(ApiError) as bad:
        store.create("secrets", "default", {"metadata": {"name": "b"}, "data": {"k": "%%%"}})
    assert bad.value.code == 400
    frozen = store.create(
        "secrets", "default", {"metadata": {"name": "f"}, "data": {"k": "dg=="}, "immutable": True}
    )
    frozen["data"]["k"] = "dw=="
    with pytest.raises(ApiError) as refused:
        store.update("secrets", "default", "f", frozen)
    assert (refused.value.code, refused.value.reason) == (422, "Invalid")


def test_deleting_an_owner_collects_its_dependents() -> None:
    store = ObjectStore()
    owner = store.create(SEALED, "default", sealed("s"))
    store.create("secrets", "default", owned_secret("s", owner))
    events: list[tuple[str, str]] = []
    store.add_listener(lambda kind, resource, obj: events.append((kind, resource)))
    store.delete(SEALED, "default", "s")
    with pytest.raises(ApiError):
        store.get("secrets", "default", "s")
    assert events == [("DELETED", SEALED), ("DELETED", "secrets")]


def test_orphan_propagation_keeps_dependents_without_the_reference() -> None:
    store = ObjectStore()
    owner = store.create(SEALED, "default", sealed("s"))
    store.create("secrets", "default", owned_secret("s", owner))
    store.delete(SEALED, "default", "s", propagation="Orphan")
    assert "ownerReferences" not in store.get("secrets", "default", "s")["metadata"]


def test_delete_preconditions() -> None:
    store = ObjectStore()
    obj = store.create("secrets", "default", {"metadata": {"name": "a"}})
    with pytest.raises(ApiError) as wrong_uid:
        store.delete("secrets", "default", "a", uid="not-the-uid")
    assert wrong_uid.value.code == 409
    with pytest.raises(ApiError) as wrong_rv:
        store.delete("secrets", "default", "a", resource_version="1")
    assert wrong_rv.value.code == 409
    store.delete(
        "secrets",
        "default",
        "a",
        uid=obj["metadata"]["uid"],
        resource_version=obj["metadata"]["resourceVersion"],
    )
    assert store.list("secrets", "default")[0] == []


async def test_watch_replays_history_and_expires_old_versions() -> None:
    store = ObjectStore(history=5)
    start = store.resource_version
    with store.watch("secrets", "default", start) as stream:
        for n in range(3):
            store.create("secrets", "default", {"metadata": {"name": f"s{n}"}})
        store.create("secrets", "other", {"metadata": {"name": "elsewhere"}})
        got = [await anext(stream) for _ in range(3)]
        assert [(e.type, e.name) for e in got] == [
            ("ADDED", "s0"),
            ("ADDED", "s1"),
            ("ADDED", "s2"),
        ]
        assert stream.get_nowait() is None
    replay = store.watch("secrets", None, start + 1)
    assert [replay.get_nowait().name for _ in range(3)] == ["s1", "s2", "elsewhere"]  # type: ignore[union-attr]
    replay.close()
    for n in range(10):
        store.create("secrets", "default", {"metadata": {"name": f"more{n}"}})
    with pytest.raises(ApiError) as too_old:
        store.watch("secrets", None, start)
    assert (too_old.value.code, too_old.value.reason) == (410, "Expired")


async def test_bulk_load_assigns_what_create_does_and_notifies_like_creates() -> None:
    store = ObjectStore()
    seen: list[tuple[str, str, str]] = []
    store.add_listener(lambda kind, resource, obj: seen.append(
        (kind, resource, obj["metadata"]["name"])))
    start = store.resource_version
    batch = [sealed("one"), sealed("two")]
    batch[0]["status"] = {"observedGeneration": 1}  # kept: a restore, not a create
    with store.watch(SEALED, None, start) as stream:
        loaded = store.load(SEALED, ({**o, "metadata": {**o["metadata"], "namespace": "app"}}
                                     for o in batch), created_at="2026-01-02T03:04:05Z")
        assert [(e.type, e.name, e.rv) for e in (await anext(stream), await anext(stream))] \
            == [("ADDED", "one", start + 1), ("ADDED", "two", start + 2)]
    assert seen == [("ADDED", SEALED, "one"), ("ADDED", SEALED, "two")]
    assert store.resource_version == start + 2
    one = store.get(SEALED, "app", "one")
    assert one == loaded[0]  # the caller's dicts, filled in place, are what is stored
    meta = one["metadata"]
    assert (one["kind"], one["apiVersion"]) == ("SealedSecret", "bitnami.com/v1alpha1")
    assert (meta["resourceVersion"], meta["generation"]) == (str(start + 1), 1)
    assert meta["creationTimestamp"] == "2026-01-02T03:04:05Z"
    assert meta["uid"] != store.get(SEALED, "app", "two")["metadata"]["uid"]
    assert one["status"] == {"observedGeneration": 1}
    (secret,) = store.load("secrets", [{"metadata": {"name": "s", "namespace": "app"}}])
    assert "generation" not in secret["metadata"]  # as create: Secrets have none


def test_bulk_load_keeps_given_creation_timestamps_only_when_asked() -> None:
    store = ObjectStore()
    aged = {"metadata": {"name": "aged", "namespace": "default",
                         "creationTimestamp": "2025-10-01T00:00:00Z"}}
    fresh = {"metadata": {"name": "fresh", "namespace": "default"}}
    store.load("secrets", [aged, fresh], created_at="2026-01-02T03:04:05Z",
               keep_creation_timestamps=True)
    assert store.get("secrets", "default", "aged")["metadata"]["creationTimestamp"] \
        == "2025-10-01T00:00:00Z"
    assert store.get("secrets", "default", "fresh")["metadata"]["creationTimestamp"] \
        == "2026-01-02T03:04:05Z"
    (reset,) = store.load("secrets", [{"metadata": {
        "name": "reset", "namespace": "default", "creationTimestamp": "2025-10-01T00:00:00Z"}}],
        created_at="2026-01-02T03:04:05Z")
    assert reset["metadata"]["creationTimestamp"] == "2026-01-02T03:04:05Z"  # as create


def test_bulk_load_is_all_or_nothing() -> None:
    store = ObjectStore()
    store.create("secrets", "default", {"metadata": {"name": "taken"}})
    before = store.resource_version
    for batch in (
        [{"metadata": {"name": "new", "namespace": "default"}},
         {"metadata": {"name": "taken", "namespace": "default"}}],
        [{"metadata": {"name": "twice", "namespace": "default"}},
         {"metadata": {"name": "twice", "namespace": "default"}}],
        [{"metadata": {"name": "nowhere"}}],  # a namespaced kind needs a namespace
        [{"metadata": {"namespace": "default"}}],
    ):
        with pytest.raises(ApiError) as refused:
            store.load("secrets", batch)
        assert refused.value.code in (400, 409)
        assert store.resource_version == before
    assert [o["metadata"]["name"] for o in store.list("secrets", None)[0]] == ["taken"]
