"""``keys export`` and ``keys import`` through the real entry point, and the recovery drill:
collect a sandbox fleet's keys, export, wipe the database, import into a fresh one, and
every seeded SealedSecret still unseals with ``sealfleet unseal``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from age_cli import age_decrypt, age_keygen
from polling import eventually
from running_fleet import running
from sealfleet.adapters import retry
from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.app import config
from sealfleet.app.cluster.state import WorkerOptions
from sealfleet.app.fleet import FleetManager
from sealfleet.domain import documents, keyfiles
from sealfleet.domain import keys as domain_keys
from sealfleet.sandbox import Sandbox, SeedSpec

if TYPE_CHECKING:  # fixtures' types only; conftest modules are not importable
    from tests.cli.conftest import Cli, KeyFiles, Run

SEALED = "sealedsecrets.bitnami.com"
PASSPHRASE = "a passphrase long enough for keys"


def private_file(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def no_key_material(run: Run) -> None:
    for stream in (run.stdout, run.stderr):
        assert "PRIVATE KEY" not in stream
        assert "tls.key" not in stream
        assert "AGE-SECRET-KEY" not in stream


def new_store(directory: Path, cli: Cli) -> list[str]:
    """``--database DB --kek-file KEK`` of an empty, migrated store."""
    kek = directory / "kek"
    assert cli("db", "kek-generate", kek).code == 0
    database = directory / "inventory.db"
    assert cli("db", "migrate", "--database", database).code == 0
    return ["--database", str(database), "--kek-file", str(kek)]


@pytest.fixture
def store_args(tmp_path: Path, cli: Cli) -> list[str]:
    return new_store(tmp_path, cli)


@pytest.fixture(scope="module")
def filled(cli: Cli, tmp_path_factory: pytest.TempPathFactory,
           key_files: list[KeyFiles]) -> list[str]:
    """A store holding the first two test keys (brought as PEM pairs); tests only read it."""
    store_args = new_store(tmp_path_factory.mktemp("filled"), cli)
    for files in key_files[:2]:
        run = cli("keys", "import", "--cert", files.cert, "--key", files.private_key,
                  *store_args)
        assert run.code == 0, run.stderr
        assert run.stdout == f"imported {files.key.fingerprint}\n"
        no_key_material(run)
    return store_args


def sealed_file(path: Path, key: domain_keys.SealingKey) -> Path:
    from sealfleet.domain import sealed_secrets

    sealed = sealed_secrets.seal_secret({"kind": "Secret", "metadata": {
        "name": "db", "namespace": "prod"}, "stringData": {"password": "hunter2"}},
        key.public_key)
    path.write_text(documents.dump_yaml(sealed))
    return path


def test_export_opens_with_age_and_unseals_with_sealfleet(
        cli: Cli, filled: list[str], key_files: list[KeyFiles], tmp_path: Path) -> None:
    identity, recipient = age_keygen(tmp_path)
    (tmp_path / "recipients").write_text(recipient + "\n")
    out = tmp_path / "keys.age"
    run = cli("keys", "export", "--out", out, "--recipients-file", tmp_path / "recipients",
              *filled)
    assert run.code == 0, run.stderr
    assert run.stdout == f"wrote {out} (age, encrypted for {tmp_path / 'recipients'})\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    opened = age_decrypt(out, tmp_path / "keys.yaml", identity=identity)
    assert opened.returncode == 0, opened.stderr
    for files in key_files[:2]:
        unsealed = cli("unseal", "--recovery-private-key", tmp_path / "keys.yaml",
                       "-f", sealed_file(tmp_path / "sealed.yaml", files.key), "-o", "json")
        assert unsealed.code == 0, unsealed.stderr
        assert base64.b64decode(json.loads(unsealed.stdout)["data"]["password"]) == b"hunter2"
    again = cli("keys", "export", "--out", out, "--recipients-file", tmp_path / "recipients",
                *filled)
    assert (again.code, again.stderr.strip()) == (
        2, f"sealfleet: error: {out}: already exists (use --force to replace it)")


def test_plaintext_list_only_on_request_and_owner_only(
        cli: Cli, filled: list[str], key_files: list[KeyFiles], tmp_path: Path) -> None:
    refused = cli("keys", "export", "--out", tmp_path / "keys.yaml", *filled)
    assert refused.code == 2
    assert "give --recipients-file or --passphrase-file" in refused.stderr
    assert not (tmp_path / "keys.yaml").exists()
    run = cli("keys", "export", "--out", tmp_path / "keys.yaml", "--plaintext-kubeseal-list",
              *filled)
    assert run.code == 0, run.stderr
    assert "UNENCRYPTED" in run.stdout
    assert stat.S_IMODE((tmp_path / "keys.yaml").stat().st_mode) == 0o600
    found = keyfiles.keys_from_bytes((tmp_path / "keys.yaml").read_bytes(), source="k")
    assert {k.fingerprint for k in found} == {f.key.fingerprint for f in key_files[:2]}


def test_passphrase_export_and_import_into_a_fresh_store(
        cli: Cli, filled: list[str], key_files: list[KeyFiles], tmp_path: Path) -> None:
    passphrase = private_file(tmp_path / "pass", PASSPHRASE + "\n")
    run = cli("keys", "export", "--out", tmp_path / "keys.age", "--passphrase-file",
              passphrase, *filled)
    assert run.code == 0, run.stderr
    fresh = ["--database", str(tmp_path / "fresh.db"), "--kek-file", str(tmp_path / "kek2")]
    assert cli("db", "kek-generate", tmp_path / "kek2").code == 0
    restored = cli("keys", "import", tmp_path / "keys.age", "--passphrase-file", passphrase,
                   *fresh)
    assert restored.code == 0, restored.stderr
    assert sorted(restored.stdout.splitlines()) == sorted(
        f"imported {f.key.fingerprint}" for f in key_files[:2])
    no_key_material(restored)
    wrong = private_file(tmp_path / "wrong", "not the right passphrase\n")
    failed = cli("keys", "import", tmp_path / "keys.age", "--passphrase-file", wrong, *fresh)
    assert (failed.code, failed.stderr.strip()) == (
        1, f"sealfleet: error: {tmp_path / 'keys.age'}: the passphrase in {wrong} does not "
           "open it (wrong passphrase, or a damaged file)")


def test_import_refuses_a_certificate_of_another_key(
        cli: Cli, store_args: list[str], key_files: list[KeyFiles], tmp_path: Path) -> None:
    run = cli("keys", "import", "--cert", key_files[1].cert, "--key",
              key_files[0].private_key, *store_args)
    assert run.code == 2
    assert run.stderr.strip() == (
        f"sealfleet: error: {key_files[1].cert}: refused: the certificate is for "
        f"{key_files[1].key.fingerprint} but {key_files[0].private_key} is the private key "
        f"of {key_files[0].key.fingerprint}")
    empty = cli("keys", "export", "--out", tmp_path / "k.yaml", "--plaintext-kubeseal-list",
                *store_args)
    assert empty.code == 1
    assert "holds no private keys: nothing to export" in empty.stderr


def test_import_with_a_backup_policy_writes_a_backup_at_once(
        cli: Cli, key_files: list[KeyFiles], tmp_path: Path) -> None:
    identity, recipient = age_keygen(tmp_path)
    (tmp_path / "recipients").write_text(recipient + "\n")
    assert cli("db", "kek-generate", tmp_path / "kek").code == 0
    (tmp_path / "sealfleet.toml").write_text(
        '[store]\ndatabase = "inventory.db"\nkek_file = "kek"\n'
        '[backup]\ndir = "backups"\nkeep = 2\nrecipients_file = "recipients"\n')
    run = cli("keys", "import", "--cert", key_files[2].cert, "--key", key_files[2].private_key,
              "-c", tmp_path / "sealfleet.toml")
    assert run.code == 0, run.stderr
    (written,) = (tmp_path / "backups").iterdir()
    assert run.stdout.splitlines()[-1] == f"wrote backup {written}"
    opened = age_decrypt(written, tmp_path / "keys.yaml", identity=identity)
    assert opened.returncode == 0, opened.stderr
    (key,) = keyfiles.keys_from_bytes((tmp_path / "keys.yaml").read_bytes(), source="k")
    assert key.fingerprint == key_files[2].key.fingerprint
    # The config's [backup] encryption is also export's default.
    export = cli("keys", "export", "--out", tmp_path / "manual.age",
                 "-c", tmp_path / "sealfleet.toml")
    assert export.code == 0, export.stderr


# ------------------------------------------------------------------ the recovery drill

OPTIONS = WorkerOptions(backoff=retry.BackoffPolicy(initial=0.05, cap=0.3),
                        resync_interval=600, request_timeout=3, watch_timeout=2)
SPEC = SeedSpec(namespaces=2, sealed_secrets=8, keys=3, seed=23, key_bits=2048)


async def collect_keys(sandbox: Sandbox, executor: ThreadPoolExecutor,
                       expected: set[str]) -> str:
    """Run the fleet until the store holds every cluster's private key; mark one key
    compromised (its state must survive the drill).  Returns that key."""
    settings = config.load_settings(sandbox.config)
    kek = KeyEncryptionKey.from_file(settings.store.kek_file)
    async with Store.open(settings.store.database, kek=kek) as store:
        async with running(FleetManager(settings, store, executor=executor, options=OPTIONS)):
            async def holds_all() -> bool:
                held = {r.fingerprint for r in await store.keys.list_keys()
                        if r.has_private_key}
                return held == expected

            await eventually(holds_all)
        compromised = sorted(expected)[0]
        await store.keys.set_key_state(compromised, "compromised", actor="test",
                                       reason="drill")
    return compromised


def unseal_all(cli: Cli, keys_file: Path, sealed: dict[str, list[dict[str, Any]]],
               tmp_path: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    """Every SealedSecret through ``sealfleet unseal``: (cluster, ns, name) -> item hashes."""
    result = {}
    for cluster, objects in sealed.items():
        path = tmp_path / f"{cluster}-sealed.yaml"
        path.write_text("".join(documents.dump_yaml(o) for o in objects))
        run = cli("unseal", "--recovery-private-key", keys_file, "-f", path, "-o", "json")
        assert run.code == 0, run.stderr
        secrets = [json.loads(line) for line in _json_documents(run.stdout)]
        for secret in secrets:
            meta = secret["metadata"]
            result[(cluster, meta["namespace"], meta["name"])] = {
                item: hashlib.sha256(base64.b64decode(value)).hexdigest()
                for item, value in secret["data"].items()}
    return result


def _json_documents(text: str) -> list[str]:
    decoder = json.JSONDecoder()
    found, position = [], 0
    while position < len(text.rstrip()):
        value, end = decoder.raw_decode(text, position)
        found.append(json.dumps(value))
        position = end
        while position < len(text) and text[position].isspace():
            position += 1
    return found


@pytest.mark.slow
async def test_recovery_drill_every_seeded_sealed_secret_unseals_after_a_wiped_database(
        cli: Cli, tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    async with Sandbox(tmp_path / "sandbox", clusters=2, seed=SPEC, seed_processes=0,
                       bookmark_interval=0.3) as sandbox:
        seed = json.loads(sandbox.seed_file.read_text())
        fleet_keys = {k["fingerprint"] for c in seed["clusters"].values() for k in c["keys"]}
        compromised = await collect_keys(sandbox, executor, fleet_keys)
        sealed = {name: sandbox.cluster(name).store.list(SEALED, None)[0]
                  for name in sandbox.names}
    expected = {(e["cluster"], e["namespace"], e["name"]): {i["name"]: i["sha256"]
                                                           for i in e["items"]}
                for e in seed["sealed_secrets"]}
    assert sum(len(objects) for objects in sealed.values()) == len(expected) == 16

    identity, recipient = age_keygen(tmp_path)
    (tmp_path / "recipients").write_text(recipient + "\n")
    backup_file = tmp_path / "fleet-keys.age"
    export = await asyncio.to_thread(cli, "keys", "export", "--out", backup_file,
                                     "--recipients-file", tmp_path / "recipients",
                                     "-c", sandbox.config)
    assert export.code == 0, export.stderr
    no_key_material(export)

    # The disaster: the database is gone (the KEK with it, for good measure).
    database = sandbox.state_dir / "inventory.db"
    for path in (database, database.with_name("inventory.db-wal"),
                 database.with_name("inventory.db-shm"), sandbox.state_dir / "kek"):
        path.unlink(missing_ok=True)
    fresh = ["--database", str(tmp_path / "restored.db"), "--kek-file", str(tmp_path / "kek")]
    assert (await asyncio.to_thread(cli, "db", "kek-generate", tmp_path / "kek")).code == 0
    restore = await asyncio.to_thread(cli, "keys", "import", backup_file, "--identity-file",
                                      identity, *fresh)
    assert restore.code == 0, restore.stderr
    assert sorted(restore.stdout.splitlines()) == sorted(
        [f"imported {f}" for f in fleet_keys] + [f"restored state compromised of {compromised}"])
    no_key_material(restore)

    # Every SealedSecret unseals with the keys of the restored database...
    listing = tmp_path / "restored-keys.yaml"
    exported = await asyncio.to_thread(cli, "keys", "export", "--out", listing,
                                       "--plaintext-kubeseal-list", *fresh)
    assert exported.code == 0, exported.stderr
    assert await asyncio.to_thread(unseal_all, cli, listing, sealed, tmp_path) == expected
    (items,) = [documents.parse_documents(listing.read_bytes())[0]["items"]]
    labels = {s["metadata"]["annotations"]["sealfleet/fingerprint"]:
              s["metadata"]["labels"][domain_keys.KEY_LABEL] for s in items}
    assert labels == {f: "compromised" if f == compromised else "active" for f in fleet_keys}
    # ...and with the backup opened by Debian's age alone, no sealfleet store involved.
    opened = age_decrypt(backup_file, tmp_path / "from-age.yaml", identity=identity)
    assert opened.returncode == 0, opened.stderr
    assert await asyncio.to_thread(unseal_all, cli, tmp_path / "from-age.yaml", sealed,
                                   tmp_path) == expected
