"""``keys generate``, ``fingerprint``, ``export`` and ``import``: sealing keys by hand.

``generate`` makes a key exactly as the controller does (so a fleet can share one
master key, or a key can be prepared before a cluster exists) and writes the private
key, and the optional key Secret, with mode 0600 from the first byte.  ``fingerprint``
prints the controller's key id for a certificate, a private key or a key Secret.

``export`` writes an age-encrypted backup of every key the store holds (the format is
:mod:`sealfleet.adapters.backup`'s); ``import`` restores one, or takes a PEM
certificate and private key pair.  Both open the store themselves, with the KEK of
the config (the daemon, if running, sees imported keys at its next keystore refresh);
the workflows are :mod:`sealfleet.app.backups`' functions, which take the store.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sealfleet.adapters import files
from sealfleet.domain import documents, keyfiles
from sealfleet.domain import keys as sealing_keys
from sealfleet.errors import FleetError, InputError

if TYPE_CHECKING:
    from sealfleet.adapters import backup
    from sealfleet.adapters.store import KeyEncryptionKey
    from sealfleet.app.backups import ImportResult
    from sealfleet.app.config import Settings

_MIN_BITS = 2048
_MAX_BITS = 16384


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = subparsers.add_parser("keys", help="sealing keys: generate, fingerprint, back up "
                                  "(export, import) and key jobs")
    commands = group.add_subparsers(dest="keys_command", metavar="COMMAND",
                                    parser_class=type(group))

    generate = commands.add_parser(
        "generate", help="generate a sealing key and certificate as the controller does",
        description="Generate an RSA sealing key with a self-signed certificate identical in "
                    "form to the controller's (empty subject unless --cn, 10-year validity, "
                    "EncipherOnly + CA). The key files are written with mode 0600.")
    generate.add_argument("--cert-out", required=True, metavar="FILE",
                          help="write the PEM certificate here")
    generate.add_argument("--key-out", required=True, metavar="FILE",
                          help="write the PKCS#1 PEM private key here (mode 0600)")
    generate.add_argument("--secret-out", metavar="FILE",
                          help="also write the controller's key Secret (yaml, or json for a "
                               ".json file; mode 0600)")
    generate.add_argument("--namespace", default="kube-system",
                          help="namespace of the key Secret (default kube-system)")
    generate.add_argument("--secret-name", metavar="NAME",
                          help="name of the key Secret (default: generateName "
                               f"{sealing_keys.DEFAULT_KEY_PREFIX}, for `kubectl create`)")
    generate.add_argument("--cn", default="", metavar="NAME",
                          help="certificate common name (the controller's --my-cn; "
                               "default empty)")
    generate.add_argument("--bits", type=int, default=sealing_keys.DEFAULT_KEY_BITS,
                          help=f"RSA key size (default {sealing_keys.DEFAULT_KEY_BITS})")
    generate.add_argument("--force", action="store_true",
                          help="replace existing output files")
    generate.set_defaults(handler=run_generate)
    # The commands that change keys run as jobs in the daemon (app/cli/jobs.py).
    from sealfleet.app.cli import jobs
    jobs.add_key_commands(commands)

    fingerprint = commands.add_parser(
        "fingerprint", help="print the SHA256:... key id of a certificate, key or key Secret",
        description="Print one line per key found: the controller's key id (the SSH-style "
                    "SHA-256 public key fingerprint), followed by the Secret's name if any.")
    fingerprint.add_argument("file", metavar="FILE",
                             help="PEM certificate, PEM private key, key Secret(s) or a List "
                                  "of them; - for stdin")
    fingerprint.set_defaults(handler=run_fingerprint)

    _register_backup(commands)
    group.set_defaults(handler=lambda _args: _usage(group))


def _register_backup(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = commands.add_parser(
        "export", help="write an encrypted backup (age) of every key the store holds",
        description="Write every private key of the store, as a v1 List of the controller's "
                    "key Secrets inside an age file (mode 0600): `age -d` opens it without "
                    "sealfleet, and kubeseal --recovery-private-key takes what it holds. "
                    "Without --recipients-file or --passphrase-file, [backup]'s setting of "
                    "the config is used.")
    export.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    how = export.add_mutually_exclusive_group()
    how.add_argument("--recipients-file", metavar="FILE", type=Path,
                     help="encrypt to these age recipients (age1..., ssh-ed25519, ssh-rsa; "
                          "one per line)")
    how.add_argument("--passphrase-file", metavar="FILE", type=Path,
                     help="encrypt with the passphrase in this owner-only file")
    how.add_argument("--plaintext-kubeseal-list", action="store_true",
                     help="write the key List UNENCRYPTED (what kubeseal "
                          "--recovery-private-key takes): the file is the private keys")
    export.add_argument("--force", action="store_true", help="replace an existing FILE")
    _add_store_location(export)
    export.set_defaults(handler=run_export)

    restore = commands.add_parser(
        "import", help="restore keys from a backup, or take a PEM certificate and key",
        description="Store the keys of a backup written by `keys export` (or of any key "
                    "Secret List, age-encrypted or not), or one PEM certificate and private "
                    "key pair, encrypted under the KEK. A key whose certificate is another "
                    "key's is refused. States (retired, compromised) are restored when "
                    "more severe than the store's.")
    restore.add_argument("file", metavar="FILE", nargs="?",
                         help="the backup (age), or a plaintext key List")
    opener = restore.add_mutually_exclusive_group()
    opener.add_argument("--identity-file", metavar="FILE", type=Path,
                        help="age identities (AGE-SECRET-KEY-1...) or an SSH private key "
                             "that open FILE (owner-only)")
    opener.add_argument("--passphrase-file", metavar="FILE", type=Path,
                        help="the passphrase that opens FILE (owner-only)")
    restore.add_argument("--cert", metavar="PEM", type=Path,
                         help="bring your own key: its PEM certificate (with --key)")
    restore.add_argument("--key", metavar="PEM", type=Path,
                         help="bring your own key: its PEM private key (with --cert)")
    _add_store_location(restore)
    restore.set_defaults(handler=run_import)


def _add_store_location(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="CONFIG", type=Path,
                        help="daemon config: [store] database and kek_file, [backup] "
                             "(default /etc/sealfleet/sealfleet.toml)")
    parser.add_argument("--database", metavar="PATH", type=Path,
                        help="SQLite file (overrides the config)")
    parser.add_argument("--kek-file", metavar="PATH", type=Path,
                        help="key-encryption key file (overrides the config)")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_usage()
    return 2


def run_generate(args: argparse.Namespace) -> int:
    if not _MIN_BITS <= args.bits <= _MAX_BITS or args.bits % 8:
        raise InputError(f"--bits must be a multiple of 8 between {_MIN_BITS} and {_MAX_BITS}")
    outputs = [p for p in (args.cert_out, args.key_out, args.secret_out) if p]
    if len({str(Path(p).resolve()) for p in outputs}) != len(outputs):
        raise InputError("--cert-out, --key-out and --secret-out must be different files")
    if not args.force:
        for path in outputs:
            if Path(path).exists():
                raise InputError(f"{path}: already exists (use --force to replace it)")
    key = sealing_keys.generate_sealing_key(bits=args.bits, common_name=args.cn)
    # Key first: a certificate without its key is useless, a key without the cert is not.
    files.atomic_write(args.key_out, key.private_key_pem(), mode=0o600)
    files.atomic_write(args.cert_out, key.certificate.pem)
    if args.secret_out:
        manifest = sealing_keys.key_secret_manifest(key, namespace=args.namespace,
                                                    name=args.secret_name)
        fmt: documents.OutputFormat = ("json" if args.secret_out.lower().endswith(".json")
                                       else "yaml")
        files.atomic_write(args.secret_out, documents.dump(manifest, fmt), mode=0o600)
    print(key.fingerprint)
    return 0


def run_fingerprint(args: argparse.Namespace) -> int:
    source = files.read_input(args.file)
    for identity in keyfiles.identities_from_bytes(source.content, source=source.name):
        print(identity.fingerprint + (f" {identity.name}" if identity.name else ""))
    return 0


# ----------------------------------------------------------------------- export, import


# An export runs scrypt (a passphrase) and opens every stored key on the daemon's side:
# seconds on a loaded host, more than the API client's usual 10 s allows for.
_TRANSFER_TIMEOUT = 120.0
_HOW_TO_ENCRYPT = ("give --recipients-file or --passphrase-file (or -c CONFIG with [backup] "
                   "recipients_file or passphrase_file), or --plaintext-kubeseal-list")


@dataclass(frozen=True)
class _Location:
    database: Path
    kek: KeyEncryptionKey
    settings: Settings | None


def _location(args: argparse.Namespace, *, need_settings: bool) -> _Location:
    """The database and KEK: flags first, the config for whatever they leave open."""
    from sealfleet.adapters.store import KeyEncryptionKey
    from sealfleet.app import preflight
    from sealfleet.app.cli.main import DEFAULT_CONFIG_PATH
    from sealfleet.app.config import load_settings

    if not need_settings and args.config is None and args.database is not None \
            and args.kek_file is not None:
        return _Location(args.database, KeyEncryptionKey.from_file(args.kek_file), None)
    settings = load_settings(args.config or DEFAULT_CONFIG_PATH)
    kek = (KeyEncryptionKey.from_file(args.kek_file) if args.kek_file is not None
           else preflight.load_kek(settings))
    database = args.database if args.database is not None else settings.store.database
    return _Location(Path(database), kek, settings)


def _daemon_settings(args: argparse.Namespace) -> Settings | None:
    """The config when a daemon runs on it (its socket is there) and no flag points at
    a store of its own: the export or import then goes through the daemon, as a job
    with its audit entry; otherwise the store is opened here, as without a daemon."""
    from sealfleet.app.cli.main import DEFAULT_CONFIG_PATH
    from sealfleet.app.config import load_settings

    if args.database is not None or args.kek_file is not None:
        return None
    path = args.config or DEFAULT_CONFIG_PATH
    if args.config is None and not Path(path).exists():
        return None
    settings = load_settings(path)
    socket_path = settings.api.socket
    return settings if socket_path is not None and socket_path.exists() else None


def _configure_cli_logging() -> None:
    from sealfleet.app.logging import configure_logging

    configure_logging(level="warning", fmt="console", stream=sys.stderr)


def run_export(args: argparse.Namespace) -> int:
    import asyncio

    from sealfleet.adapters import backup
    from sealfleet.app import backups
    from sealfleet.app.preflight import check_database
    from sealfleet.errors import StoreError

    out = Path(args.out)
    if out.exists() and not args.force:
        raise InputError(f"{out}: already exists (use --force to replace it)")
    explicit = args.recipients_file is not None or args.passphrase_file is not None \
        or args.plaintext_kubeseal_list
    if not explicit and args.config is None and args.database is not None \
            and args.kek_file is not None:
        raise InputError(_HOW_TO_ENCRYPT)
    daemon = _daemon_settings(args)
    if daemon is not None:
        return _export_via_daemon(args, daemon, out)
    where = _location(args, need_settings=not explicit)
    encryption: backup.Encryption | None = None
    if args.recipients_file is not None:
        encryption = backup.read_recipients_file(args.recipients_file)
    elif args.passphrase_file is not None:
        encryption = backup.read_passphrase_file(args.passphrase_file)
    elif not args.plaintext_kubeseal_list:
        assert where.settings is not None
        policy = backups.BackupPolicy.from_settings(
            where.settings.backup, where=f"{where.settings.config_path}: backup")
        if policy is None:
            raise InputError(_HOW_TO_ENCRYPT)
        encryption = policy.encryption
    if not where.database.is_file():
        raise StoreError(f"{where.database}: no such database")
    check_database(where.database, where=None, writable=False)
    _configure_cli_logging()
    data = asyncio.run(_export(where, encryption))
    files.atomic_write(out, data, mode=0o600)
    kind = ("UNENCRYPTED key List: keep it as safe as the keys themselves"
            if encryption is None else f"age, encrypted for {encryption.source}")
    print(f"wrote {out} ({kind})")
    return 0


def _export_via_daemon(args: argparse.Namespace, settings: Settings, out: Path) -> int:
    import asyncio
    import json

    from sealfleet.adapters import backup
    from sealfleet.adapters.http_api.client import ApiClient

    body: dict[str, Any] = {}
    if args.recipients_file is not None:
        recipients = backup.read_recipients_file(args.recipients_file)   # checked here
        body["recipients"] = files.read_file(args.recipients_file).decode()
        how = f"age, encrypted for {recipients.source}"
    elif args.passphrase_file is not None:
        body["passphrase"] = backup.read_passphrase_file(args.passphrase_file).value
        how = f"age, encrypted with the passphrase of {args.passphrase_file}"
    elif args.plaintext_kubeseal_list:
        body["plaintext"] = True
        how = "UNENCRYPTED key List: keep it as safe as the keys themselves"
    else:
        how = "age, encrypted as the daemon's [backup] says"
    client = ApiClient(socket_path=settings.api.socket, timeout=_TRANSFER_TIMEOUT)
    data = asyncio.run(client.post_bytes("/api/v1/keys/export", json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}))
    files.atomic_write(out, data, mode=0o600)
    print(f"wrote {out} ({how}; exported by the daemon, audited)")
    return 0


async def _export(where: _Location, encryption: backup.Encryption | None) -> bytes:
    from sealfleet.adapters.store import Store
    from sealfleet.app import backups

    async with Store.open(where.database, kek=where.kek, migrate=False) as store:
        return await backups.export_backup(store, encryption)


def run_import(args: argparse.Namespace) -> int:
    import asyncio

    from sealfleet.adapters import backup
    from sealfleet.app import backups
    from sealfleet.app.preflight import check_database

    pair = args.cert is not None or args.key is not None
    if pair == (args.file is not None):
        raise InputError("give a backup FILE, or --cert and --key (not both)")
    if pair:
        if args.cert is None or args.key is None:
            raise InputError("--cert and --key go together")
        if args.identity_file is not None or args.passphrase_file is not None:
            raise InputError("--identity-file and --passphrase-file open a backup FILE; "
                             "a PEM pair needs neither")
        entries = [backups.key_from_pem_pair(
            files.read_file(args.cert), files.read_file(args.key),
            cert_source=str(args.cert), key_source=str(args.key))]
        origin = f"{args.cert} and {args.key}"
    else:
        decryption: backup.Decryption | None = None
        if args.identity_file is not None:
            decryption = backup.read_identity_file(args.identity_file)
        elif args.passphrase_file is not None:
            decryption = backup.read_passphrase_file(args.passphrase_file)
        entries = backup.read_backup(files.read_file(args.file), decryption,
                                     source=str(args.file))
        origin = str(args.file)
    daemon = _daemon_settings(args)
    if daemon is not None:
        return _import_via_daemon(args, daemon, entries, origin)
    where = _location(args, need_settings=False)
    check_database(where.database, where=None, writable=True)
    _configure_cli_logging()
    result, written = asyncio.run(_import(where, entries, origin))
    for fingerprint in result.added:
        print(f"imported {fingerprint}")
    for fingerprint in result.already_held:
        print(f"already held {fingerprint}")
    for fingerprint, state in result.states:
        print(f"restored state {state} of {fingerprint}")
    if isinstance(written, Path):
        print(f"wrote backup {written}")
    elif written is not None:   # the keys are stored; say so, and that the backup is not
        print(f"sealfleet: error: keys imported, but no backup was written: {written}",
              file=sys.stderr)
        return 1
    return 0


def _import_via_daemon(args: argparse.Namespace, settings: Settings,
                       entries: list[tuple[sealing_keys.SealingKey, backup.BackedUpKey]],
                       origin: str) -> int:
    """The opened keys, as a key List with their states, to the daemon's ``key_import``
    job over its socket; waits for the job and prints what it did."""
    import asyncio
    import json

    from sealfleet.adapters import backup
    from sealfleet.adapters.http_api.client import ApiClient
    from sealfleet.adapters.store.records import KeyRecord

    records = [KeyRecord(fingerprint=key.fingerprint, not_before=key.not_before,
                         not_after=key.not_after, source=facts.source or "imported",
                         state=facts.state) for key, facts in entries]
    document = backup.plaintext_key_list([key for key, _ in entries], records)
    client = ApiClient(socket_path=settings.api.socket, timeout=_TRANSFER_TIMEOUT)

    async def run() -> int:
        answer = await client.post_bytes("/api/v1/keys/import", document, headers={
            "Content-Type": "application/yaml",
            "X-Sealfleet-Origin": origin.encode("ascii", "replace").decode()[:200]})
        job = json.loads(answer)
        while job["state"] not in ("succeeded", "failed", "cancelled"):
            await asyncio.sleep(0.2)
            job = await client.get_json(f"/api/v1/jobs/{job['id']}")
        result = job.get("result") or {}
        for fingerprint in result.get("added", []):
            print(f"imported {fingerprint}")
        for fingerprint in result.get("already_held", []):
            print(f"already held {fingerprint}")
        for restored in result.get("states_restored", []):
            print(f"restored state {restored['state']} of {restored['fingerprint']}")
        print(f"job {job['id']} {job['state']} (the daemon backs up new keys itself)")
        if job["state"] != "succeeded":
            print(f"sealfleet: error: {job.get('error')}", file=sys.stderr)
            return 1
        return 0

    return asyncio.run(run())


async def _import(where: _Location, entries: list[tuple[sealing_keys.SealingKey,
                                                        backup.BackedUpKey]],
                  origin: str) -> tuple[ImportResult, Path | str | None]:
    """The import's result, and the backup written after it (or why it failed)."""
    from sealfleet.adapters.store import Store
    from sealfleet.app import backups
    from sealfleet.app.keystore import Keystore

    policy = (backups.BackupPolicy.from_settings(
        where.settings.backup, where=f"{where.settings.config_path}: backup")
        if where.settings is not None else None)
    async with Store.open(where.database, kek=where.kek) as store:
        keystore = Keystore(store)
        result = await backups.import_keys(store, keystore, entries,
                                           actor="sealfleet keys import", origin=origin)
        if policy is None or not result.added:
            return result, None
        try:   # a new key: back up at once (sealed-secrets #359)
            return result, await backups.back_up_keystore(policy, keystore, store)
        except FleetError as exc:
            return result, str(exc)
