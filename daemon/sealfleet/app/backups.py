"""Key backups as the daemon and the CLI make and restore them.

The race this closes (sealed-secrets #359): a controller renews its key, users seal
with the new one, and the cluster is lost before anyone re-ran the manual backup.
So a backup is written after *every* new key (a renewal, a controller's own renewal,
an adopted or imported key): :func:`write_after_new_key` writes
``sealfleet-keys-<UTC time>-<key set id>.age`` into ``[backup] dir`` atomically (a
temporary file, fsync, rename; mode 0600 from the first byte) and then deletes the
oldest such files beyond ``[backup] keep``.  Only files with that exact name pattern
are ever deleted, and never the one just written.

The format is :mod:`sealfleet.adapters.backup`'s.  :func:`export_backup` and
:func:`import_keys` are the ``keys export`` / ``keys import`` workflows, written
against a :class:`~sealfleet.adapters.store.Store` and the app's
:class:`~sealfleet.app.keystore.Keystore` so that a daemon job can run them as they
are.  An import refuses any key whose certificate is another key's, takes the keys
into custody through the keystore (store first, then memory), and restores a key's
state from the backup when that is more severe than the store's (a key never
silently becomes *less* severe, as in the store itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from sealfleet.adapters import backup, files
from sealfleet.adapters.store import Store
from sealfleet.adapters.store.records import KeyRecord
from sealfleet.app.config import BackupSettings
from sealfleet.app.keystore import Keystore
from sealfleet.domain import keys as domain_keys
from sealfleet.domain.keys import KeySource, KeyState, SealingKey
from sealfleet.errors import ConfigError, FleetError, InputError, StoreError

log = structlog.get_logger(__name__)

FILE_PREFIX = "sealfleet-keys-"
BACKUP_FILE = re.compile(r"^sealfleet-keys-(\d{8}T\d{6}\.\d{3}Z)-([0-9a-f]{8})\.age$")
_SEVERITY = {KeyState.ACTIVE.value: 0, KeyState.RETIRED.value: 1,
             KeyState.COMPROMISED.value: 2}


@dataclass(frozen=True)
class BackupPolicy:
    """Where automatic backups go, how many are kept, and how they are encrypted."""

    directory: Path
    keep: int
    encryption: backup.Encryption = field(repr=False)

    @classmethod
    def from_settings(cls, settings: BackupSettings, *,
                      where: str = "backup") -> BackupPolicy | None:
        """The policy ``[backup]`` configures (None when off), its files read now: a
        problem with them is a ConfigError naming the key, as at daemon start."""
        if settings.recipients_file is not None:
            key, path = "recipients_file", settings.recipients_file
        elif settings.passphrase_file is not None:
            key, path = "passphrase_file", settings.passphrase_file
        else:
            return None
        try:
            encryption: backup.Encryption = (
                backup.read_recipients_file(path) if key == "recipients_file"
                else backup.read_passphrase_file(path))
        except (InputError, ConfigError) as exc:
            raise ConfigError(f"{where}.{key}: {exc}") from None
        if isinstance(encryption, backup.Passphrase) \
                and len(encryption.value) < backup.MIN_PASSPHRASE_CHARS:
            raise ConfigError(f"{where}.{key}: {path}: the passphrase is shorter than "
                              f"{backup.MIN_PASSPHRASE_CHARS} characters")
        return cls(directory=settings.dir, keep=settings.keep, encryption=encryption)


# ------------------------------------------------------------------ automatic backups


def key_set_id(fingerprints: Sequence[str]) -> str:
    """Eight hex digits naming a set of keys: two backups with one id hold the same keys."""
    return hashlib.sha256("\n".join(sorted(set(fingerprints))).encode()).hexdigest()[:8]


def backup_file_name(now: dt.datetime, fingerprints: Sequence[str]) -> str:
    """``sealfleet-keys-20250102T030405.678Z-1a2b3c4d.age``: sorts by time (fixed width)."""
    when = now.astimezone(dt.UTC)
    stamp = when.strftime("%Y%m%dT%H%M%S") + f".{when.microsecond // 1000:03d}Z"
    return f"{FILE_PREFIX}{stamp}-{key_set_id(fingerprints)}.age"


def backup_files(directory: Path) -> list[Path]:
    """The backups in *directory*, oldest first (names that match the pattern only)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise InputError(f"{directory}: cannot list backups: {exc.strerror or exc}") from None
    return [directory / name for name in sorted(names) if BACKUP_FILE.match(name)]


def prune(directory: Path, keep: int, *, protect: Path | None = None) -> list[Path]:
    """Delete the oldest backups beyond *keep* (never *protect*); returns those deleted."""
    existing = [path for path in backup_files(directory) if path != protect]
    excess = len(existing) + (protect is not None) - keep
    deleted = []
    for path in existing[:max(excess, 0)]:
        # Another writer may have pruned it already: gone is what we wanted.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            deleted.append(path)
    return deleted


async def write_after_new_key(policy: BackupPolicy, keys: Sequence[SealingKey],
                              records: Sequence[KeyRecord], *,
                              now: dt.datetime | None = None) -> Path:
    """Write a backup of *keys* into the policy's directory and prune; returns its path.

    *now* is when the key set was read (the file's name): of two backups taken one
    after the other, the later snapshot always sorts last, whichever finishes first.
    """
    if not keys:
        raise FleetError("no private keys to back up")
    when = now or dt.datetime.now(dt.UTC)
    data = await asyncio.to_thread(backup.write_backup, keys, records, policy.encryption,
                                   now=when)
    path = policy.directory / backup_file_name(when, [key.fingerprint for key in keys])
    await asyncio.to_thread(_write_private, path, data)
    deleted = await asyncio.to_thread(prune, policy.directory, policy.keep, protect=path)
    log.info("key_backup_written", path=str(path), keys=len(keys), pruned=len(deleted))
    return path


async def back_up_keystore(policy: BackupPolicy, keystore: Keystore, store: Store) -> Path:
    """:func:`write_after_new_key` for every private key the store holds.

    The keystore is refreshed first: a key stored by another path (a job's journal
    write, another process) is in the backup even before the keystore's own refresh
    would have seen it.  Call it after ``Keystore.adopt`` returns, never from inside
    (both take the keystore's load lock).
    """
    await keystore.refresh()
    await keystore.materialize()
    now = dt.datetime.now(dt.UTC)
    keys = keystore.loaded_keys()
    return await write_after_new_key(policy, keys, await store.keys.list_keys(), now=now)


def _write_private(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{path.parent}: cannot create the backup directory: "
                         f"{exc.strerror or exc}") from None
    files.atomic_write(path, data, mode=0o600)


# ------------------------------------------------------------------ export and import


async def stored_keys(store: Store) -> tuple[list[SealingKey], list[KeyRecord]]:
    """Every private key the store holds that opens, with the keys' records.

    A row that does not open is logged and left out (its fingerprint, never more).
    """
    loaded = await store.keys.load_private_keys()
    for rejected in loaded.rejected:
        log.warning("stored_key_rejected", fingerprint=rejected.fingerprint,
                    reason=rejected.reason)
    return list(loaded.keys), await store.keys.list_keys()


async def export_backup(store: Store, encryption: backup.Encryption | None) -> bytes:
    """The backup of every stored key; the plaintext key List when *encryption* is None."""
    keys, records = await stored_keys(store)
    if not keys:
        raise FleetError(f"{store.path}: holds no private keys: nothing to export")
    if encryption is None:
        return backup.plaintext_key_list(keys, records)
    return await asyncio.to_thread(backup.write_backup, keys, records, encryption)


@dataclass(frozen=True)
class ImportResult:
    """What an import did, by fingerprint."""

    added: tuple[str, ...] = ()           # private key new to the store
    already_held: tuple[str, ...] = ()    # the store held it already
    states: tuple[tuple[str, str], ...] = ()   # (fingerprint, state) restored from the backup


async def import_keys(store: Store, keystore: Keystore,
                      entries: Sequence[tuple[SealingKey, backup.BackedUpKey]], *,
                      actor: str, origin: str) -> ImportResult:
    """Take the keys of a backup (or a PEM pair) into the fleet's custody.

    *origin* names the file in audit reasons.  A key refused by the store (its
    certificate is another key's) fails the import with a StoreError; keys stored
    before it stay stored (each is a valid key).
    """
    for key, _ in entries:
        if domain_keys.fingerprint(key.public_key) != key.fingerprint:
            raise InputError(f"{origin}: refused: the certificate of {key.fingerprint} is not "
                             "its private key's")
    await keystore.refresh()            # what the store holds already (maybe another process)
    held = keystore.fingerprints()
    await keystore.adopt([key for key, _ in entries], source=KeySource.IMPORTED)
    records = {record.fingerprint: record for record in await store.keys.list_keys()}
    missing = [key.fingerprint for key, _ in entries
               if not (key.fingerprint in records and records[key.fingerprint].has_private_key)]
    if missing:
        raise StoreError(f"{store.path}: the store refused key(s) {', '.join(missing)} "
                         "(see the log for why)")
    restored = []
    for _, facts in entries:
        current = records[facts.fingerprint].state
        if _SEVERITY.get(facts.state, 0) > _SEVERITY.get(current, 0):
            await store.keys.set_key_state(facts.fingerprint, facts.state, actor=actor,
                                           reason=f"restored from {origin}")
            restored.append((facts.fingerprint, facts.state))
    if restored:
        await keystore.refresh()        # the compromised set, through the keystore's lock
    fingerprints = [key.fingerprint for key, _ in entries]
    result = ImportResult(added=tuple(f for f in fingerprints if f not in held),
                          already_held=tuple(f for f in fingerprints if f in held),
                          states=tuple(restored))
    log.info("keys_imported", origin=origin, added=list(result.added),
             already_held=len(result.already_held), states_restored=len(restored))
    return result


def key_from_pem_pair(certificate_pem: bytes, private_key_pem: bytes, *, cert_source: str,
                      key_source: str) -> tuple[SealingKey, backup.BackedUpKey]:
    """Bring your own key: a PEM certificate and its PEM private key, checked as a pair."""
    try:
        certificate = domain_keys.load_certificate(certificate_pem)
    except InputError as exc:
        raise InputError(f"{cert_source}: {exc}") from None
    try:
        private_key = domain_keys.load_private_key_pem(private_key_pem)
    except InputError as exc:
        raise InputError(f"{key_source}: {exc}") from None
    own = domain_keys.fingerprint(private_key.public_key())
    if own != certificate.fingerprint:
        raise InputError(f"{cert_source}: refused: the certificate is for "
                         f"{certificate.fingerprint} but {key_source} is the private key "
                         f"of {own}")
    key = SealingKey(private_key, certificate)
    return key, backup.BackedUpKey(fingerprint=key.fingerprint, state=KeyState.ACTIVE.value,
                                   source=KeySource.IMPORTED.value, fleet_master=False,
                                   secret_name="", backed_up_at=None)


class BackupKeeper:
    """A backup after every new key (renewal, a controller's own renewal, adopt, import):
    this closes the race of sealed-secrets #359, where a key made between two manual
    backups was lost with its cluster.  It follows the keystore's changes and writes a
    backup whenever the key set differs from the newest backup's (the file name carries
    the key set's id), so a restart with nothing new writes nothing."""

    def __init__(self, policy: BackupPolicy, keystore: Keystore, store: Store) -> None:
        self._policy = policy
        self._keystore = keystore
        self._store = store

    def _backed_up(self, fingerprints: Sequence[str]) -> bool:
        files = backup_files(self._policy.directory)
        return bool(files) and files[-1].name.endswith(f"-{key_set_id(fingerprints)}.age")

    async def run(self) -> None:
        changed = self._keystore.subscribe()
        try:
            while True:
                fingerprints = sorted(self._keystore.fingerprints())
                if fingerprints and not await asyncio.to_thread(self._backed_up, fingerprints):
                    try:
                        await back_up_keystore(self._policy, self._keystore, self._store)
                    except (FleetError, OSError) as error:
                        # Said once per failure; the next key change tries again, and the
                        # "backup missing after a new key" alert watches the metric.
                        log.error("key_backup_failed", error=str(error))
                await changed.wait()
                changed.clear()
        finally:
            self._keystore.unsubscribe(changed)
