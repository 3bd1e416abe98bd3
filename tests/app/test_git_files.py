"""The per-file work of a Git reseal (git_files.reseal_one_file) with real keys: one
file with two documents for two target keys is spliced in one pass, and the in-step
check really opens each new value (a value that would not decrypt is never written)."""

from __future__ import annotations

from reseal_git_fixtures import crlf_yaml, multi_yaml

from sealfleet.app.jobs import git_files
from sealfleet.domain import sealed_secrets, splice
from sealfleet.domain.keys import SealingKey
from sealfleet.domain.planning.resealing import ItemKey, PlannedReseal, Source
from sealfleet.domain.resealing import KeyRing
from sealfleet.domain.scopes import Scope
from sealfleet.domain.staleness import SecretState


def _entry(path: str, document: int, name: str, target: SealingKey, old: SealingKey,
           *items: str) -> PlannedReseal:
    return PlannedReseal(Source.GIT, SecretState.STALE, "prod", name, Scope.STRICT,
                         target.fingerprint, tuple(ItemKey(i, old.fingerprint) for i in items),
                         repo="gitops", path=path, document=document)


def test_two_targets_in_one_file_are_spliced_and_every_new_value_opened(
        rsa2048_keys: list[SealingKey]) -> None:
    old, other, new = rsa2048_keys
    path = "apps/two.yaml"
    content = (multi_yaml(old).split("---\n")[1] + "---\n" + crlf_yaml(old, "windows")
               .replace("\r\n", "\n")).encode()
    entries = [_entry(path, 0, "db", new, old, "password", "user"),
               _entry(path, 1, "windows", other, old, "token")]
    keys = {k.fingerprint: k for k in (new, other)}
    result = git_files.reseal_one_file(path, content, entries, keys, KeyRing([old]), keys)
    assert result.problems == ()
    assert (result.verified_items, result.unverified_items) == (3, 0)
    assert result.content is not None
    located = splice.locate(result.content, source=path)
    db, windows = located.documents
    assert set(sealed_secrets.decrypt_items(db.sealed_secret(), [new.private_key])) == {
        "password", "user"}
    assert set(sealed_secrets.decrypt_items(windows.sealed_secret(),
                                            [other.private_key])) == {"token"}


def test_a_new_value_that_does_not_open_with_the_target_key_is_not_written(
        rsa2048_keys: list[SealingKey]) -> None:
    old, wrong, new = rsa2048_keys
    path = "apps/crlf.yaml"
    content = crlf_yaml(old, "windows").encode()
    entry = _entry(path, 0, "windows", new, old, "token")
    # The private key held under the certificate's fingerprint is another key (a store
    # gone wrong): what is sealed for the certificate does not open with it, and the
    # check, a real decrypt, must catch that.
    result = git_files.reseal_one_file(path, content, [entry],
                                       {new.fingerprint: wrong.certificate},
                                       KeyRing([old]), {wrong.fingerprint: new})
    assert result.content is None
    assert result.documents == ()
    assert result.problems == (
        f"{path}: document 0: spec.encryptedData.token: the new value does not decrypt "
        f"with {wrong.fingerprint}; file left unchanged",)
