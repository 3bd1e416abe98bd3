"""The reseal engine: same label, same plaintext, only encryptedData values change."""

from __future__ import annotations

import base64
import copy
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealfleet.domain import documents, hybrid, keys, resealing, sealed_secrets
from sealfleet.domain.scopes import Scope
from sealfleet.errors import DecryptionError, InputError

FEW = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.function_scoped_fixture])
PLAINTEXTS = {"password": b"hunter2-plaintext", "token": b"tok-\x00\xffbinary", "empty": b""}


def _secret(data: dict[str, bytes], *, name: str = "db", namespace: str = "prod",
            annotations: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace,
                                "labels": {"app": "db", "tier": "backend"}}
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "Opaque",
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def _sealed(key: keys.SealingKey, data: dict[str, bytes] = PLAINTEXTS, *,
            scope: Scope = Scope.STRICT, **kwargs: Any) -> dict[str, Any]:
    return sealed_secrets.seal_secret(_secret(data, **kwargs), key.public_key, scope=scope)


def _opened(doc: dict[str, Any], key: keys.SealingKey) -> dict[str, bytes]:
    return sealed_secrets.decrypt_items(doc, [key.private_key])


@pytest.fixture(scope="module")
def ring(rsa2048_keys: list[keys.SealingKey]) -> resealing.KeyRing:
    return resealing.KeyRing(rsa2048_keys)


@pytest.mark.parametrize("scope", list(Scope))
def test_reseal_opens_with_the_target_key_under_the_same_label(
        rsa2048_keys: list[keys.SealingKey], ring: resealing.KeyRing, scope: Scope) -> None:
    old, _, new = rsa2048_keys
    sealed = _sealed(old, scope=scope)
    result = resealing.reseal(sealed, ring, new.certificate)
    resealed = result.apply(sealed)
    assert _opened(resealed, new) == PLAINTEXTS
    with pytest.raises(DecryptionError):
        _opened(resealed, old)
    label = sealed_secrets.identity_of(sealed).label
    for value in resealed["spec"]["encryptedData"].values():
        # Under the label of this object only: another name's label does not open it.
        hybrid.decrypt([new.private_key], base64.b64decode(value), label)
        if scope is Scope.STRICT:
            with pytest.raises(DecryptionError):
                hybrid.decrypt([new.private_key], base64.b64decode(value), b"prod/other")
    assert [(c.item, c.old_key, c.new_key, c.resealed) for c in result.changes] == [
        (item, old.fingerprint, new.fingerprint, True) for item in sealed["spec"]["encryptedData"]]


def test_only_encrypted_data_values_change(rsa2048_keys: list[keys.SealingKey],
                                           ring: resealing.KeyRing) -> None:
    old, _, new = rsa2048_keys
    sealed = _sealed(old, annotations={"team": "payments"}, scope=Scope.NAMESPACE_WIDE)
    sealed["metadata"]["labels"] = {"z": "1", "a": "2"}
    sealed["spec"]["template"]["data"] = {"config": "static"}
    before = copy.deepcopy(sealed)
    result = resealing.reseal(sealed, ring, new.certificate)
    after = result.apply(sealed)
    assert sealed == before  # the input is not modified
    assert list(after["spec"]["encryptedData"]) == list(before["spec"]["encryptedData"])
    for item, value in after["spec"]["encryptedData"].items():
        assert value != before["spec"]["encryptedData"][item]
    after["spec"]["encryptedData"] = before["spec"]["encryptedData"]
    assert json.dumps(after) == json.dumps(before)  # key order included


def test_items_already_sealed_with_the_target_are_kept_unless_forced(
        rsa2048_keys: list[keys.SealingKey], ring: resealing.KeyRing) -> None:
    old, other, new = rsa2048_keys
    sealed = _sealed(new)
    identity = sealed_secrets.identity_of(sealed)
    # A later --merge-into after a renewal: one item with another key.
    sealed["spec"]["encryptedData"]["token"] = sealed_secrets.seal_value(
        old.public_key, PLAINTEXTS["token"], identity)
    result = resealing.reseal(sealed, ring, new.certificate)
    assert result.replaced.keys() == {"token"}
    kept = {c.item: c for c in result.changes}
    assert kept["password"] == resealing.ItemChange("password", new.fingerprint,
                                                    new.fingerprint, resealed=False)
    assert kept["token"].old_key == old.fingerprint
    assert result.encrypted_data["password"] == sealed["spec"]["encryptedData"]["password"]
    assert _opened(result.apply(sealed), new) == PLAINTEXTS

    forced = resealing.reseal(sealed, ring, new.certificate, force=True)
    assert forced.replaced.keys() == set(PLAINTEXTS)
    assert not resealing.reseal(forced.apply(sealed), ring, new.certificate).changed
    assert other.fingerprint not in {c.old_key for c in forced.changes}


def test_wrong_hints_only_cost_time(rsa2048_keys: list[keys.SealingKey],
                                    ring: resealing.KeyRing) -> None:
    old, other, new = rsa2048_keys
    sealed = _sealed(old)
    hints: dict[str, str | None] = dict.fromkeys(PLAINTEXTS, other.fingerprint)
    hints["empty"] = "SHA256:not-a-known-key"
    result = resealing.reseal(sealed, ring, new.certificate, hints=hints)
    assert {c.old_key for c in result.changes} == {old.fingerprint}
    assert _opened(result.apply(sealed), new) == PLAINTEXTS


def test_undecryptable_items_are_named_without_values(rsa2048_keys: list[keys.SealingKey]) -> None:
    old, other, new = rsa2048_keys
    sealed = _sealed(old)
    identity = sealed_secrets.identity_of(sealed)
    sealed["spec"]["encryptedData"]["foreign"] = sealed_secrets.seal_value(
        other.public_key, b"foreign-plaintext", identity)
    with pytest.raises(sealed_secrets.ItemsDecryptionError):  # no keys at all
        resealing.reseal(sealed, resealing.KeyRing([]), new.certificate,
                         hints={"password": old.fingerprint})
    only_old = resealing.KeyRing([old])
    with pytest.raises(sealed_secrets.ItemsDecryptionError) as caught:
        resealing.reseal(sealed, only_old, new.certificate)
    assert caught.value.items == ["foreign"]
    message = str(caught.value)
    assert "prod/db" in message
    assert "foreign-plaintext" not in message
    assert sealed["spec"]["encryptedData"]["foreign"][:40] not in message


def test_malformed_values_are_input_errors_naming_the_item(
        rsa2048_keys: list[keys.SealingKey], ring: resealing.KeyRing) -> None:
    old, _, new = rsa2048_keys
    sealed = _sealed(old)
    sealed["spec"]["encryptedData"]["password"] = "not base64!"
    with pytest.raises(InputError, match="'password'"):
        resealing.reseal(sealed, ring, new.certificate)
    sealed["spec"]["encryptedData"]["password"] = "AAAA"  # base64, too short to be sealed
    with pytest.raises(sealed_secrets.ItemsDecryptionError, match="'password'"):
        resealing.reseal(sealed, ring, new.certificate)


def test_legacy_spec_data_becomes_encrypted_data_as_reencrypt_does(
        rsa2048_keys: list[keys.SealingKey], ring: resealing.KeyRing) -> None:
    old, _, new = rsa2048_keys
    inner = _secret({"password": b"legacy-plaintext"}, annotations={"owner": "ops"})
    legacy = {"apiVersion": sealed_secrets.API_VERSION, "kind": "SealedSecret",
              "metadata": {"name": "db", "namespace": "prod"},
              "spec": {"data": base64.b64encode(hybrid.encrypt(
                  old.public_key, json.dumps(inner).encode(), b"prod/db")).decode()}}
    result = resealing.reseal(legacy, ring, new.certificate)
    assert result.changed
    assert result.legacy_spec is not None
    assert [(c.item, c.old_key) for c in result.changes] == [("password", old.fingerprint)]
    after = result.apply(legacy)
    assert "data" not in after["spec"]
    assert after["spec"]["template"]["metadata"]["annotations"] == {"owner": "ops"}
    assert _opened(after, new) == {"password": b"legacy-plaintext"}


def test_batch_keeps_request_order_and_isolates_failures(
        rsa2048_keys: list[keys.SealingKey], ring: resealing.KeyRing) -> None:
    old, _, new = rsa2048_keys
    docs = [_sealed(old, {"v": f"value-{i}".encode()}, name=f"s{i}") for i in range(9)]
    docs[4]["spec"]["encryptedData"]["v"] = "%%%"
    requests = [resealing.ResealRequest(f"ref-{i}", doc, new.certificate)
                for i, doc in enumerate(docs)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = resealing.reseal_batch(requests, ring, executor=pool, chunk_items=2)
    assert [o.ref for o in outcomes] == [r.ref for r in requests]
    assert outcomes[4].resealed is None
    assert outcomes[4].error is not None
    assert "'v'" in outcomes[4].error
    for i, outcome in enumerate(outcomes):
        if i == 4:
            continue
        assert outcome.resealed is not None
        assert outcome.error is None
        assert _opened(outcome.resealed.apply(docs[i]), new) == {"v": f"value-{i}".encode()}
    # Its own pool when none is given.
    assert [o.ref for o in resealing.reseal_batch(requests[:3], ring)] == ["ref-0", "ref-1",
                                                                          "ref-2"]


def test_chunks_group_requests_by_item_count(rsa2048_keys: list[keys.SealingKey]) -> None:
    key = rsa2048_keys[0]
    sizes = [1, 3, 1, 1, 5, 1]
    requests = [resealing.ResealRequest(str(i), _sealed(key, {f"i{j}": b"x" for j in range(n)},
                                                        name=f"n{i}"), key.certificate)
                for i, n in enumerate(sizes)]
    grouped = [[r.ref for r in chunk] for chunk in resealing.chunks(requests, 4)]
    assert grouped == [["0", "1"], ["2", "3", "4"], ["5"]]


def test_reprs_never_show_keys_or_plaintext(rsa2048_keys: list[keys.SealingKey],
                                            ring: resealing.KeyRing) -> None:
    old, _, new = rsa2048_keys
    sealed = _sealed(old)
    outcome = resealing.reseal_one(resealing.ResealRequest("r", sealed, new.certificate), ring)
    text = repr(outcome) + repr(ring)
    assert "hunter2" not in text
    assert "PRIVATE" not in text
    assert old.fingerprint in repr(ring)


@FEW
@given(scope=st.sampled_from(list(Scope)),
       data=st.dictionaries(st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True),
                            st.binary(max_size=200), min_size=1, max_size=4),
       old_index=st.integers(0, 2), new_index=st.integers(0, 2))
def test_reseal_round_trips_any_values(rsa2048_keys: list[keys.SealingKey], scope: Scope,
                                       data: dict[str, bytes], old_index: int,
                                       new_index: int) -> None:
    old, new = rsa2048_keys[old_index], rsa2048_keys[new_index]
    sealed = _sealed(old, data, scope=scope)
    result = resealing.reseal(sealed, resealing.KeyRing(rsa2048_keys), new.certificate)
    assert _opened(result.apply(sealed), new) == data
    assert result.changed is (old is not new)


# ------------------------------------------------------------------------- files


def _manifest(key: keys.SealingKey, *, name: str, nl: str = "\n",
              block_item: bool = False) -> str:
    sealed = _sealed(key, {"password": b"p-" + name.encode(), "token": b"t-" + name.encode()},
                     name=name)
    values = sealed["spec"]["encryptedData"]
    token = (f"|{nl}      {values['token']}{nl}" if block_item
             else f"\"{values['token']}\"  # rotated{nl}")
    return (f"# {name}: managed by hand{nl}apiVersion: bitnami.com/v1alpha1{nl}"
            f"kind: SealedSecret{nl}metadata:{nl}  name: {name}{nl}  namespace: prod{nl}"
            f"spec:{nl}  encryptedData:{nl}    password: {values['password']}{nl}"
            f"    token: {token}  template:{nl}    metadata:{nl}      name: {name}{nl}")


def test_a_file_is_resealed_in_place_touching_only_ciphertext_lines(
        rsa2048_keys: list[keys.SealingKey], ring: resealing.KeyRing) -> None:
    old, _, new = rsa2048_keys
    nl = "\r\n"
    text = (_manifest(old, name="a", nl=nl) + f"---{nl}kind: ConfigMap{nl}data: {{x: y}}{nl}"
            + f"---{nl}" + _manifest(old, name="b", nl=nl, block_item=True))
    outcome = resealing.reseal_file(
        resealing.FileRequest("apps/db.yaml", text.encode(), new.certificate), ring)
    assert outcome.changed
    assert outcome.result is not None
    after = outcome.result.content.decode()
    changed = [(a, b) for a, b in zip(text.split(nl), after.split(nl), strict=True) if a != b]
    assert [a.split(":")[0].strip() for a, _ in changed] == ["password", "token", "password"]
    assert outcome.errors == (
        "apps/db.yaml: document 2: spec.encryptedData.token: is a block scalar (| or >)",)
    assert [(d.index, d.display, [(c.item, c.old_key, c.new_key) for c in d.changes])
            for d in outcome.documents] == [
        (0, "prod/a", [("password", old.fingerprint, new.fingerprint),
                       ("token", old.fingerprint, new.fingerprint)]),
        (2, "prod/b", [("password", old.fingerprint, new.fingerprint)])]
    docs = documents.parse_documents(outcome.result.content)
    assert _opened(docs[0], new) == {"password": b"p-a", "token": b"t-a"}
    assert sealed_secrets.decrypt_items(
        {**docs[2], "spec": {"encryptedData": {"password": docs[2]["spec"]["encryptedData"][
            "password"]}}}, [new.private_key]) == {"password": b"p-b"}


def test_only_the_requested_documents_are_resealed(rsa2048_keys: list[keys.SealingKey],
                                                   ring: resealing.KeyRing) -> None:
    old, _, new = rsa2048_keys
    text = _manifest(old, name="a") + "---\n" + _manifest(old, name="b")
    outcome = resealing.reseal_file(resealing.FileRequest(
        "x.yaml", text.encode(), new.certificate,
        documents={1: {"password": old.fingerprint}, 5: {}}), ring)
    assert [d.index for d in outcome.documents] == [1]
    assert outcome.errors == ("x.yaml: document 5: is not a SealedSecret",)
    assert outcome.result is not None
    assert outcome.result.content.decode().split("---\n")[0] == text.split("---\n")[0]


def test_current_and_unreadable_files_are_not_touched(rsa2048_keys: list[keys.SealingKey],
                                                      ring: resealing.KeyRing) -> None:
    _, _, new = rsa2048_keys
    content = _manifest(new, name="a").encode()
    requests = [resealing.FileRequest("current.yaml", content, new.certificate),
                resealing.FileRequest("bad.yaml", b"a: [unclosed\n", new.certificate),
                resealing.FileRequest("foreign.yaml", _manifest(rsa2048_keys[0], name="f")
                                      .encode(), new.certificate)]
    current, bad, foreign = resealing.iter_reseal_files(
        requests, resealing.KeyRing([new]), chunk_files=1)
    assert not current.changed
    assert current.result is not None
    assert current.result.content == content
    assert current.errors == ()
    assert bad.result is None
    assert bad.errors == ("bad.yaml: invalid YAML at line 2",)
    assert not foreign.changed
    assert foreign.errors == ("foreign.yaml: document 0: prod/f: no key could decrypt "
                              "item(s) 'password', 'token'",)


def test_items_hinted_current_are_kept_when_the_target_key_is_not_held(
        rsa2048_keys: list[keys.SealingKey]) -> None:
    old, _, new = rsa2048_keys
    sealed = _sealed(new)
    identity = sealed_secrets.identity_of(sealed)
    sealed["spec"]["encryptedData"]["token"] = sealed_secrets.seal_value(
        old.public_key, PLAINTEXTS["token"], identity)
    hints: dict[str, str | None] = {"password": new.fingerprint, "empty": new.fingerprint,
                                    "token": old.fingerprint}
    result = resealing.reseal(sealed, resealing.KeyRing([old]), new.certificate, hints=hints)
    assert result.replaced.keys() == {"token"}
    assert _opened(result.apply(sealed), new) == PLAINTEXTS
    with pytest.raises(sealed_secrets.ItemsDecryptionError, match=r"'empty', 'password'$"):
        resealing.reseal(sealed, resealing.KeyRing([old]), new.certificate)
