"""Key backups: the fleet's sealing keys in an age file that opens without sealfleet.

Why age (through pyrage, the Python binding of the Rust implementation ``rage``): a
small, well-specified format (age-encryption.org/v1) with a maintained reference CLI
that Debian ships (``apt install age``), so a backup opens with ``age -d`` on any
machine, years later, without sealfleet.  It encrypts to X25519 recipients
(``age1...``), to SSH public keys (``ssh-ed25519``, ``ssh-rsa``) or to a passphrase
(scrypt): never both kinds in one file (age does not allow a passphrase beside
other recipients).

What is inside the envelope is exactly what kubeseal's recovery already understands:
a ``v1`` ``List`` of the controller's key Secrets as ``kubectl get secret -n
kube-system -l sealedsecrets.bitnami.com/sealed-secrets-key -o yaml`` prints it, so::

    age -d -i backup-identity.txt backup.age > keys.yaml
    kubeseal --recovery-unseal --recovery-private-key keys.yaml < sealed.yaml

works.  sealfleet's own facts ride along as ``sealfleet/...`` annotations on each
Secret (fingerprint, state, source, fleet master flag, validity, backup time), and a
comment at the top says what the file is.  The label value follows the key's fleet
state, so ``kubectl apply -f keys.yaml`` gives a controller only the keys it should
load: ``active`` keys load; ``retired`` and ``compromised`` ones are kept but not
loaded (the controller loads only the value ``active``).  A key whose certificate the
fleet never saw has no ``tls.crt``, which would crash a controller, so it carries no
key label at all.  Nothing is ever written outside the envelope except by
:func:`plaintext_key_list`, which the CLI offers only behind an explicit flag.

Errors are one line naming the file (and the Secret); they never hold key material,
a passphrase or a library's message about either.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import pyrage
from pyrage import passphrase as age_passphrase
from pyrage import ssh as age_ssh
from pyrage import x25519 as age_x25519

from sealfleet import __version__
from sealfleet.adapters import credentials, files
from sealfleet.adapters.store.records import KeyRecord
from sealfleet.domain import documents
from sealfleet.domain import keys as domain_keys
from sealfleet.domain.key_secrets import read_key_secret
from sealfleet.domain.keys import KeyState, SealingKey
from sealfleet.errors import DecryptionError, InputError

Recipient: TypeAlias = age_x25519.Recipient | age_ssh.Recipient
Identity: TypeAlias = age_x25519.Identity | age_ssh.Identity

ANNOTATION = "sealfleet/"   # prefix of every annotation sealfleet adds to a key Secret
FORMAT_VERSION = "1"
NAMESPACE = "kube-system"
MIN_PASSPHRASE_CHARS = 12
_AGE_MAGIC = b"age-encryption.org/v1\n"
_AGE_ARMOR = b"-----BEGIN AGE ENCRYPTED FILE-----"
_MAX_LIST_FILE = 1 << 20       # recipients and identity files: a few lines each
_MAX_PASSPHRASE = 4096
_STATES = {state.value for state in KeyState}


@dataclass(frozen=True)
class Recipients:
    """Public keys a backup is encrypted to (from an age ``-R`` style file)."""

    recipients: tuple[Recipient, ...] = field(repr=False)
    source: str


@dataclass(frozen=True)
class Identities:
    """Private age or SSH identities that open a backup (from an ``-i`` style file)."""

    identities: tuple[Identity, ...] = field(repr=False)
    source: str


@dataclass(frozen=True)
class Passphrase:
    """A passphrase read from an owner-only file.  ``repr`` never shows it."""

    value: str = field(repr=False)
    source: str


Encryption: TypeAlias = Recipients | Passphrase
Decryption: TypeAlias = Identities | Passphrase


@dataclass(frozen=True)
class BackedUpKey:
    """What a backup says about one key besides the key itself (all public)."""

    fingerprint: str
    state: str                      # KeyState value
    source: str | None              # None: a List sealfleet did not write
    fleet_master: bool
    secret_name: str
    backed_up_at: dt.datetime | None


# ------------------------------------------------------------------ key files


def read_recipients_file(path: str | os.PathLike[str]) -> Recipients:
    """age recipients, one per line (``age1...``, ``ssh-ed25519 ...``, ``ssh-rsa ...``);
    blank lines and ``#`` comments skipped, as ``age -R`` reads them."""
    source = os.fspath(path)
    _refuse_writable_by_others(source)
    data = files.read_file(source)
    if len(data) > _MAX_LIST_FILE:
        raise InputError(f"{source}: larger than 1 MiB: not a recipients file")
    return parse_recipients(_text(data, source), source=source)


def parse_recipients(text: str, *, source: str) -> Recipients:
    """A recipients file's text, read as :func:`read_recipients_file` reads the file."""
    if len(text) > _MAX_LIST_FILE:
        raise InputError(f"{source}: larger than 1 MiB: not a recipients file")
    parsed: list[Recipient] = []
    for number, line in _lines(text):
        try:
            if line.startswith("age1"):
                parsed.append(age_x25519.Recipient.from_str(line))
            elif line.startswith(("ssh-ed25519 ", "ssh-rsa ")):
                parsed.append(age_ssh.Recipient.from_str(line))
            else:
                raise InputError(f"{source}: line {number}: not an age X25519 recipient "
                                 "(age1...) or an ssh-ed25519 or ssh-rsa public key")
        except pyrage.RecipientError:
            raise InputError(f"{source}: line {number}: not a valid recipient") from None
    if not parsed:
        raise InputError(f"{source}: no recipients in the file")
    return Recipients(tuple(parsed), source)


def _refuse_writable_by_others(source: str) -> None:
    """Whoever can add a line to the recipients file receives every later backup."""
    try:
        mode = os.stat(source).st_mode
    except OSError as exc:
        raise InputError(f"{source}: cannot read: {exc.strerror or exc}") from None
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise InputError(f"{source}: mode {stat.S_IMODE(mode):04o} lets group or others "
                         f"change the recipients; run: chmod go-w {source}")


def read_identity_file(path: str | os.PathLike[str]) -> Identities:
    """age identities (``AGE-SECRET-KEY-1...`` lines) or one unencrypted SSH private key.

    The file is a secret: like every credential it must be owner-only (mode 0600).
    """
    source = os.fspath(path)
    data = credentials.read_private(source, limit=_MAX_LIST_FILE, label="age identity file")
    if data.lstrip().startswith(b"-----BEGIN "):
        try:
            return Identities((age_ssh.Identity.from_buffer(data),), source)
        except pyrage.IdentityError:
            raise InputError(f"{source}: not an unencrypted ssh-ed25519 or ssh-rsa private "
                             "key (decrypt a passphrase-protected one with `age -d`)") from None
    parsed: list[Identity] = []
    for number, line in _lines(_text(data, source)):
        try:
            parsed.append(age_x25519.Identity.from_str(line))
        except pyrage.IdentityError:
            raise InputError(f"{source}: line {number}: not an age identity "
                             "(AGE-SECRET-KEY-1...)") from None
    if not parsed:
        raise InputError(f"{source}: no identities in the file")
    return Identities(tuple(parsed), source)


def read_passphrase_file(path: str | os.PathLike[str]) -> Passphrase:
    """The passphrase in an owner-only file; one trailing newline is not part of it."""
    source = os.fspath(path)
    data = credentials.read_private(source, limit=_MAX_PASSPHRASE + 1,
                                    label="backup passphrase")
    if len(data) > _MAX_PASSPHRASE:
        raise InputError(f"{source}: passphrase longer than {_MAX_PASSPHRASE} bytes")
    value = _text(data, source).removesuffix("\n").removesuffix("\r")
    if not value:
        raise InputError(f"{source}: the passphrase is empty")
    return Passphrase(value, source)


def _text(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{source}: not UTF-8 text") from None


def _lines(text: str) -> Iterable[tuple[int, str]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


# ------------------------------------------------------------------ writing


def plaintext_key_list(keys: Sequence[SealingKey], records: Sequence[KeyRecord] = (), *,
                       now: dt.datetime | None = None) -> bytes:
    """The key List as YAML, unencrypted: what goes inside the envelope (and what
    ``--plaintext-kubeseal-list`` writes).  *records* supply states and sources."""
    when = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    by_fingerprint = {record.fingerprint: record for record in records}
    ordered = sorted({key.fingerprint: key for key in keys}.values(),
                     key=lambda key: (key.not_before, key.fingerprint))
    listing = {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
               "items": [_key_secret(key, by_fingerprint.get(key.fingerprint), when)
                         for key in ordered]}
    header = (f"# sealfleet key backup (format {FORMAT_VERSION}): {len(ordered)} sealing "
              f"key(s), written {_time(when)} by sealfleet {__version__}.\n"
              "# A v1 List of the controller's key Secrets, as `kubectl get secret -n "
              "kube-system -l sealedsecrets.bitnami.com/sealed-secrets-key -o yaml` "
              "prints it.\n"
              "# PRIVATE KEYS: whoever reads this can decrypt every SealedSecret sealed "
              "with them.\n")
    return (header + documents.dump_yaml(listing)).encode()


def write_backup(keys: Sequence[SealingKey], records: Sequence[KeyRecord],
                 encryption: Encryption, *, now: dt.datetime | None = None) -> bytes:
    """An age file (binary) holding :func:`plaintext_key_list`; runs scrypt for a
    passphrase (about a second), so call it off the event loop."""
    payload = plaintext_key_list(keys, records, now=now)
    try:
        if isinstance(encryption, Passphrase):
            if len(encryption.value) < MIN_PASSPHRASE_CHARS:
                raise InputError(f"{encryption.source}: the passphrase is shorter than "
                                 f"{MIN_PASSPHRASE_CHARS} characters: too weak to protect "
                                 "private keys")
            return age_passphrase.encrypt(payload, encryption.value)
        return pyrage.encrypt(payload, list(encryption.recipients))
    except pyrage.EncryptError:
        raise InputError(f"cannot encrypt the backup for {encryption.source}") from None


def _key_secret(key: SealingKey, record: KeyRecord | None,
                backed_up_at: dt.datetime) -> dict[str, Any]:
    state = record.state if record is not None else KeyState.ACTIVE.value
    has_certificate = bool(key.certificate.pem)
    annotations = {
        f"{ANNOTATION}backup-format": FORMAT_VERSION,
        f"{ANNOTATION}backed-up-at": _time(backed_up_at),
        f"{ANNOTATION}fingerprint": key.fingerprint,
        f"{ANNOTATION}state": state,
        f"{ANNOTATION}source": record.source if record is not None else "unknown",
        f"{ANNOTATION}fleet-master": "true" if record is not None and record.fleet_master
                                     else "false",
        f"{ANNOTATION}not-before": _time(key.not_before),
        f"{ANNOTATION}not-after": _time(key.not_after),
    }
    metadata: dict[str, Any] = {
        "name": secret_name(key.fingerprint), "namespace": NAMESPACE,
        "creationTimestamp": _time(key.not_before), "annotations": annotations}
    data = {"tls.key": base64.b64encode(key.private_key_pem()).decode()}
    if has_certificate:
        data["tls.crt"] = base64.b64encode(key.certificate.pem).decode()
        metadata["labels"] = {domain_keys.KEY_LABEL: state}
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": metadata, "data": data}


def secret_name(fingerprint: str) -> str:
    """A stable Secret name for a key: the prefix the controller uses plus a digest
    of the fingerprint in its generateName alphabet (lowercase letters and digits)."""
    digest = base64.b32encode(hashlib.sha256(fingerprint.encode()).digest()).decode()
    return f"{domain_keys.DEFAULT_KEY_PREFIX}{digest[:5].lower()}"


def _time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------ reading


def is_age(data: bytes) -> bool:
    """Whether *data* is an age file (binary or ASCII-armored)."""
    return data.startswith(_AGE_MAGIC) or data.lstrip().startswith(_AGE_ARMOR)


def decrypt_backup(data: bytes, decryption: Decryption, *, source: str) -> bytes:
    """The plaintext inside an age file; DecryptionError when *decryption* cannot open it."""
    if not is_age(data):
        raise InputError(f"{source}: not an age-encrypted file")
    stanzas = _stanza_types(data)
    try:
        if isinstance(decryption, Passphrase):
            if stanzas and "scrypt" not in stanzas:
                raise DecryptionError(f"{source}: not encrypted with a passphrase (it is "
                                      f"for {', '.join(sorted(stanzas))} recipients): "
                                      "use --identity-file")
            return age_passphrase.decrypt(data, decryption.value)
        if "scrypt" in stanzas:
            raise DecryptionError(f"{source}: encrypted with a passphrase: "
                                  "use --passphrase-file")
        return pyrage.decrypt(data, list(decryption.identities))
    except pyrage.DecryptError:
        if isinstance(decryption, Passphrase):
            raise DecryptionError(f"{source}: the passphrase in {decryption.source} does not "
                                  "open it (wrong passphrase, or a damaged file)") from None
        raise DecryptionError(f"{source}: no identity in {decryption.source} opens it "
                              "(encrypted to other recipients, or a damaged file)") from None


def _stanza_types(data: bytes) -> set[str]:
    """Recipient types named in a binary age header (``X25519``, ``scrypt``, ...);
    empty for an armored file (pyrage still reads it)."""
    if not data.startswith(_AGE_MAGIC):
        return set()
    kinds = set()
    for line in data[len(_AGE_MAGIC):len(_AGE_MAGIC) + 64 * 1024].split(b"\n"):
        if line.startswith(b"---"):
            break
        if line.startswith(b"-> "):
            kinds.add(line[3:].split(b" ", 1)[0].decode("ascii", "replace"))
    return kinds


def read_backup(data: bytes, decryption: Decryption | None, *,
                source: str) -> list[tuple[SealingKey, BackedUpKey]]:
    """The keys in a backup (age, or a plaintext key List when *decryption* is None),
    each checked: its certificate must be its private key's, and sealfleet's
    fingerprint annotation must name it.  Any bad Secret refuses the whole file."""
    if decryption is not None:
        data = decrypt_backup(data, decryption, source=source)
    elif is_age(data):
        raise InputError(f"{source}: is age-encrypted: give --identity-file or "
                         "--passphrase-file")
    found: dict[str, tuple[SealingKey, BackedUpKey]] = {}
    for index, secret in enumerate(_secrets(data, source)):
        entry = _read_entry(secret, f"{source}: Secret {index}")
        found.setdefault(entry[0].fingerprint, entry)
    if not found:
        raise InputError(f"{source}: no key Secrets in the backup")
    return list(found.values())


def _secrets(data: bytes, source: str) -> list[Mapping[str, Any]]:
    result: list[Mapping[str, Any]] = []
    for index, doc in enumerate(documents.parse_documents(data, source=source)):
        kind = doc.get("kind")
        if kind in ("List", "SecretList"):
            items = doc.get("items")
            if not isinstance(items, list):
                raise InputError(f"{source}: document {index}: items is not a list")
            result += [item for item in items if isinstance(item, Mapping)]
        elif kind == "Secret":
            result.append(doc)
        else:
            raise InputError(f"{source}: document {index}: expected a List of key Secrets "
                             f"or a Secret, got kind {_kind(kind)}")
    return result


def _kind(kind: object) -> str:
    return repr(kind)[:40] if isinstance(kind, str) else "none"


def _read_entry(secret: Mapping[str, Any], where: str) -> tuple[SealingKey, BackedUpKey]:
    metadata = secret.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    name = str(metadata.get("name") or "")
    where = f"{where} ({name})" if name else where
    try:
        observed = read_key_secret(secret)
        if observed.problem is not None:
            raise InputError(f"refused: {observed.problem}")
        key = observed.load()
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    annotations = metadata.get("annotations")
    notes: Mapping[str, Any] = annotations if isinstance(annotations, Mapping) else {}
    claimed = notes.get(f"{ANNOTATION}fingerprint")
    if claimed is not None and claimed != key.fingerprint:
        raise InputError(f"{where}: its {ANNOTATION}fingerprint annotation names another "
                         f"key than its private key ({key.fingerprint})")
    if observed.certificate is None:
        key = _with_recorded_validity(key, notes, where)
    label = observed.label
    state = notes.get(f"{ANNOTATION}state", label if label in _STATES else "active")
    if state not in _STATES:
        raise InputError(f"{where}: unknown key state in {ANNOTATION}state")
    source = notes.get(f"{ANNOTATION}source")
    return key, BackedUpKey(
        fingerprint=key.fingerprint, state=str(state),
        source=str(source) if source is not None else None,
        fleet_master=notes.get(f"{ANNOTATION}fleet-master") == "true", secret_name=name,
        backed_up_at=_parse_time(notes.get(f"{ANNOTATION}backed-up-at")))


def _with_recorded_validity(key: SealingKey, notes: Mapping[str, Any],
                            where: str) -> SealingKey:
    """A key without certificate: its validity as the backup recorded it, if it did."""
    not_before = _parse_time(notes.get(f"{ANNOTATION}not-before"))
    not_after = _parse_time(notes.get(f"{ANNOTATION}not-after"))
    if not_before is None or not_after is None:
        return key
    if not_after < not_before:
        raise InputError(f"{where}: {ANNOTATION}not-after is before {ANNOTATION}not-before")
    return SealingKey(key.private_key, domain_keys.Certificate(
        public_key=key.public_key, not_before=not_before, not_after=not_after, pem=b""))


def _parse_time(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)
