"""``seal``, ``unseal``, ``reencrypt`` and ``validate``: kubeseal's offline workflows.

Flag names follow kubeseal where the two overlap (``-f``, ``-w``, ``-o``, ``--cert``,
``--scope``, ``-n``, ``--name``, ``--raw``, ``--from-file``, ``--allow-empty-data``,
``--merge-into``, ``--recovery-private-key``), so a kubeseal user needs no new habits.
Nothing here contacts a cluster: certificates come from ``--cert`` (a file or a URL),
private keys from ``--recovery-private-key`` files.

Every error names the input, the document index and the item, and never a value.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from sealfleet.adapters import files
from sealfleet.domain import attribution, documents, keyfiles, keys, sealed_secrets
from sealfleet.domain.scopes import Scope, scope_from_annotations
from sealfleet.errors import DecryptionError, FleetError, InputError

CERT_ENV = "SEALED_SECRETS_CERT"  # kubeseal's env spelling of --cert
_YAML_SUFFIXES = (".yaml", ".yml")


# --------------------------------------------------------------------------- parsers

def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    seal = subparsers.add_parser(
        "seal", help="seal Secrets into SealedSecrets with a certificate (kubeseal)",
        description="Seal Secret(s) read from stdin or -f into SealedSecret(s), offline, "
                    "with the certificate given by --cert (a file or an http(s) URL).")
    _input_flag(seal, "Secret(s) to seal, YAML or JSON, several documents allowed")
    _output_flags(seal)
    _cert_flag(seal)
    seal.add_argument("--scope", choices=[s.cli_name for s in Scope],
                      help="scope to seal under (default: from the input's annotations, "
                           "else strict)")
    seal.add_argument("-n", "--namespace", help="namespace for Secrets that have none "
                      "(a different namespace on the input is an error)")
    seal.add_argument("--name", help="override the Secret's name (single Secret only)")
    seal.add_argument("--raw", action="store_true",
                      help="seal one bare value (stdin or --from-file); print bare base64")
    seal.add_argument("--from-file", action="append", default=[], metavar="[KEY=]PATH",
                      help="with --raw: the file holding the value (the key is ignored)")
    seal.add_argument("--allow-empty-data", action="store_true",
                      help="allow a Secret with neither data nor stringData")
    seal.add_argument("--merge-into", metavar="FILE",
                      help="seal the input and merge its items into this SealedSecret file, "
                           "rewriting it in place")
    seal.set_defaults(handler=run_seal)

    unseal = subparsers.add_parser(
        "unseal", help="decrypt SealedSecrets offline with private keys (kubeseal "
                       "--recovery-unseal)",
        description="Decrypt SealedSecret(s) from stdin or -f into Secret(s) with the given "
                    "private keys. The output holds plaintext: handle it with care.")
    _input_flag(unseal, "SealedSecret(s) to decrypt")
    _output_flags(unseal)
    _recovery_flag(unseal)
    unseal.set_defaults(handler=run_unseal)

    reencrypt = subparsers.add_parser(
        "reencrypt", help="re-seal SealedSecrets for a new certificate, offline",
        description="Decrypt every item with the recovery keys and seal it again for --cert, "
                    "keeping scope, metadata and item names. Other documents in the input "
                    "pass through unchanged.")
    _input_flag(reencrypt, "SealedSecret(s) to re-encrypt")
    _output_flags(reencrypt)
    _cert_flag(reencrypt)
    _recovery_flag(reencrypt)
    reencrypt.add_argument("--in-place", action="store_true",
                           help="rewrite the -f file atomically instead of printing")
    reencrypt.set_defaults(handler=run_reencrypt)

    validate = subparsers.add_parser(
        "validate", help="check that every item of every SealedSecret decrypts",
        description="Exit 0 when every item of every SealedSecret decrypts with the given "
                    "keys; otherwise exit 1 and name each failing document and item.")
    _input_flag(validate, "SealedSecret(s) to check")
    _recovery_flag(validate)
    validate.set_defaults(handler=run_validate)


def _input_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("-f", "--secret-file", dest="input", metavar="FILE",
                        help=f"{what} (default: stdin)")


def _output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--format", choices=["json", "yaml"], default=None,
                        help="output format (default json; a .yaml/.yml -w file forces yaml)")
    parser.add_argument("-w", "--sealed-secret-file", "--output-file", dest="output",
                        metavar="FILE", help="write the result atomically to FILE")


def _cert_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cert", default=os.environ.get(CERT_ENV) or None,
                        metavar="FILE|URL",
                        help=f"certificate to seal with: a file, http(s):// or file:// URL "
                             f"(env {CERT_ENV})")


def _recovery_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recovery-private-key", action="append", required=True,
                        metavar="FILE[,FILE...]",
                        help="private keys: PEM (PKCS#1/PKCS#8), key Secret(s) or a v1 List "
                             "of Secrets; comma-separated or repeated")
    parser.add_argument("-n", "--namespace",
                        help="namespace of SealedSecrets whose manifest has none (e.g. set "
                             "later by kustomize); a different one on the manifest is an error")


# --------------------------------------------------------------------------- helpers

def load_certificate(source: str | None) -> keys.Certificate:
    """The certificate behind ``--cert``; an expired one is refused, as kubeseal does."""
    if not source:
        raise InputError("no certificate: pass --cert FILE|URL (sealfleet seals offline)")
    try:
        cert = keys.load_certificate(files.read_certificate_source(source))
    except InputError as exc:
        message = str(exc)
        raise InputError(message if message.startswith(source) else f"{source}: {message}"
                         ) from None
    if cert.is_expired(dt.datetime.now(dt.UTC)):
        raise InputError(f"{source}: failed to encrypt using an expired certificate on "
                         f"{cert.not_after:%Y-%m-%d %H:%M:%S} UTC")
    return cert


def load_recovery_keys(values: Sequence[str]) -> list[keys.SealingKey]:
    """All keys of all ``--recovery-private-key`` files, one entry per fingerprint."""
    found: list[keys.SealingKey] = []
    for value in values:
        for path in (p.strip() for p in value.split(",")):
            if path:
                found.extend(keyfiles.keys_from_bytes(files.read_file(path), source=path))
    if not found:
        raise InputError("--recovery-private-key: no key file given")
    return keyfiles.dedupe(found)


def output_format(explicit: str | None, output: str | None,
                  fallback: documents.OutputFormat = "json") -> documents.OutputFormat:
    """kubeseal's rule: a .yaml/.yml output file forces yaml, else ``-o``, else json."""
    if output and output.lower().endswith(_YAML_SUFFIXES):
        return "yaml"
    if explicit == "yaml":
        return "yaml"
    if explicit == "json":
        return "json"
    return fallback


def format_of(content: bytes) -> documents.OutputFormat:
    """The format an input was written in, so rewrites keep it."""
    return "json" if content.lstrip()[:1] in (b"{", b"[") else "yaml"


def describe(doc: Mapping[str, Any]) -> str:
    metadata = doc.get("metadata")
    if not isinstance(metadata, Mapping):
        return ""
    name, namespace = metadata.get("name"), metadata.get("namespace")
    if not name:
        return ""
    return f" ({namespace}/{name})" if namespace else f" ({name})"


@contextlib.contextmanager
def in_document(source: str, index: int, doc: Mapping[str, Any]) -> Iterator[None]:
    """Prefix any error raised for one document with the input, its index and its name."""
    where = f"{source}: document {index}{describe(doc)}"
    try:
        yield
    except sealed_secrets.ItemsDecryptionError as exc:
        raise DecryptionError(f"{where}: no key could decrypt item(s) "
                              f"{', '.join(repr(i) for i in exc.items)}") from None
    except DecryptionError as exc:
        raise DecryptionError(f"{where}: {exc}") from None
    except FleetError as exc:
        raise InputError(f"{where}: {exc}") from None


def read_documents(path: str | None) -> tuple[files.Input, list[dict[str, Any]]]:
    source = files.read_input(path)
    docs = documents.parse_documents(source.content, source=source.name)
    if not docs:
        raise InputError(f"{source.name}: no document found")
    return source, docs


def is_sealed_secret(doc: Mapping[str, Any]) -> bool:
    return doc.get("kind") == sealed_secrets.KIND


def require_sealed_secret(doc: Mapping[str, Any]) -> None:
    if not is_sealed_secret(doc):
        raise InputError(f"expected kind SealedSecret, got {doc.get('kind')!r}")


@contextlib.contextmanager
def placed(doc: dict[str, Any], namespace: str | None) -> Iterator[dict[str, Any]]:
    """*doc* as the controller would see it once applied to *namespace*.

    The strict and namespace-wide labels include the namespace, so a manifest without
    one cannot be opened until it is known.  Yields the document to work on.
    """
    metadata = doc.get("metadata")
    current = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    if namespace and current and namespace != current:
        raise InputError(f"namespace mismatch: the manifest says {current!r}, "
                         f"--namespace is {namespace!r}")
    if current or sealed_secrets.identity_of(doc).scope is Scope.CLUSTER_WIDE:
        yield doc
        return
    if not namespace:
        raise InputError("the SealedSecret has no metadata.namespace: pass -n NAMESPACE")
    yield {**doc, "metadata": {**(metadata if isinstance(metadata, Mapping) else {}),
                               "namespace": namespace}}


def without_namespace(doc: dict[str, Any]) -> dict[str, Any]:
    metadata = {k: v for k, v in doc["metadata"].items() if k != "namespace"}
    return {**doc, "metadata": metadata}


def private_keys_of(found: Sequence[keys.SealingKey]) -> list[rsa.RSAPrivateKey]:
    return [key.private_key for key in found]


def note(message: str) -> None:
    """A progress or summary line for humans: stderr, so stdout stays a clean manifest."""
    print(f"sealfleet: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- seal

def run_seal(args: argparse.Namespace) -> int:
    if args.from_file and not args.raw:
        raise InputError("--from-file is only valid with --raw")
    if args.raw and args.merge_into:
        raise InputError("--raw and --merge-into cannot be combined")
    scope = Scope.parse(args.scope) if args.scope else None
    if args.raw:
        return _seal_raw(args, scope)
    cert = load_certificate(args.cert)
    source, docs = read_documents(args.input)
    if args.merge_into:
        return _merge_into(args, cert, source.name, docs, scope)
    if args.name and len(docs) > 1:
        raise InputError(f"{source.name}: --name applies to a single Secret, "
                         f"the input holds {len(docs)} documents")
    sealed = []
    for index, doc in enumerate(docs):
        with in_document(source.name, index, doc):
            sealed.append(sealed_secrets.seal_secret(
                doc, cert.public_key, namespace=args.namespace, name=args.name, scope=scope,
                allow_empty_data=args.allow_empty_data))
    fmt = output_format(args.format, args.output)
    files.write_output(args.output, documents.dump_all(sealed, fmt))
    return 0


def _seal_raw(args: argparse.Namespace, scope: Scope | None) -> int:
    scope = scope or Scope.STRICT
    namespace = args.namespace or ""
    name = args.name or ""
    if scope is Scope.STRICT and not (namespace and name):
        raise InputError("--raw with strict scope needs --namespace and --name")
    if scope is Scope.NAMESPACE_WIDE and not namespace:
        raise InputError("--raw with namespace-wide scope needs --namespace")
    if len(args.from_file) > 1:
        raise InputError("--raw takes exactly one --from-file")
    if args.from_file:
        # kubeseal accepts kubectl's key=path spelling; the key means nothing here.
        path = args.from_file[0].split("=", 1)[-1]
        value = files.read_file(path)
    else:
        value = files.read_input(None).content
    cert = load_certificate(args.cert)
    identity = sealed_secrets.SealedIdentity(namespace=namespace, name=name, scope=scope)
    # Bare base64, no trailing newline: made to be pasted into a YAML value.
    files.write_output(args.output, sealed_secrets.seal_value(cert.public_key, value, identity))
    return 0


def _merge_into(args: argparse.Namespace, cert: keys.Certificate, source: str,
                docs: list[dict[str, Any]], scope: Scope | None) -> int:
    target = args.merge_into
    if len(docs) != 1:
        raise InputError(f"{source}: --merge-into takes a single Secret, "
                         f"the input holds {len(docs)} documents")
    content = files.read_file(target)
    existing_docs = documents.parse_documents(content, source=target)
    if len(existing_docs) != 1:
        raise InputError(f"{target}: --merge-into needs a file with exactly one SealedSecret")
    existing = existing_docs[0]
    with in_document(target, 0, existing):
        require_sealed_secret(existing)
        identity = sealed_secrets.identity_of(existing)
    secret = copy.deepcopy(docs[0])
    metadata = secret.setdefault("metadata", {})
    if not isinstance(metadata, dict):
        raise InputError(f"{source}: document 0: metadata is not a mapping")
    metadata["name"] = identity.name
    if identity.namespace:
        metadata["namespace"] = identity.namespace
    input_scope = scope_from_annotations(metadata.get("annotations") or {})
    if scope is None and input_scope is Scope.STRICT:
        # Items of one SealedSecret must share its label; inheriting the file's scope
        # avoids producing items the controller cannot open.
        scope = identity.scope
    effective = scope if scope is not None and scope is not Scope.STRICT else input_scope
    if effective is not identity.scope:
        raise InputError(f"{target}: scope mismatch: the file is {identity.scope.cli_name}, "
                         f"the new items would be {effective.cli_name}")
    with in_document(source, 0, secret):
        sealed = sealed_secrets.seal_secret(secret, cert.public_key, namespace=args.namespace,
                                            scope=scope, allow_empty_data=args.allow_empty_data)
    merged = _merge(existing, sealed)
    fmt = output_format(args.format, target, format_of(content))
    files.atomic_write(target, documents.dump(merged, fmt))
    return 0


def _merge(existing: dict[str, Any], sealed: Mapping[str, Any]) -> dict[str, Any]:
    """kubeseal's merge: new items, template labels, annotations and data win."""
    merged = copy.deepcopy(existing)
    spec = merged.get("spec")
    if not isinstance(spec, dict):
        spec = merged["spec"] = {}
    encrypted = spec.get("encryptedData")
    if not isinstance(encrypted, dict):
        encrypted = spec["encryptedData"] = {}
    encrypted.update(sealed["spec"]["encryptedData"])
    spec["encryptedData"] = dict(sorted(encrypted.items()))
    new_template = sealed["spec"]["template"]
    template = spec.get("template")
    if not isinstance(template, dict):
        template = spec["template"] = {}
    template_meta = template.get("metadata")
    if not isinstance(template_meta, dict):
        template_meta = template["metadata"] = {}
    for key in ("labels", "annotations"):
        incoming = new_template["metadata"].get(key) or {}
        if incoming:
            current = template_meta.get(key)
            template_meta[key] = {**(current if isinstance(current, dict) else {}), **incoming}
    if new_template.get("data"):
        template["data"] = {**(template.get("data") or {}), **new_template["data"]}
    return merged


# --------------------------------------------------------------------------- unseal

def run_unseal(args: argparse.Namespace) -> int:
    private_keys = private_keys_of(load_recovery_keys(args.recovery_private_key))
    source, docs = read_documents(args.input)
    secrets_out = []
    for index, doc in enumerate(docs):
        with in_document(source.name, index, doc):
            require_sealed_secret(doc)
            with placed(doc, args.namespace) as located:
                secrets_out.append(sealed_secrets.unseal(located, private_keys))
    text = documents.dump_all(secrets_out, output_format(args.format, args.output))
    if args.output and args.output != "-":
        files.atomic_write(args.output, text, mode=0o600)  # plaintext: owner only
    else:
        files.write_output(None, text)
    return 0


# --------------------------------------------------------------------------- reencrypt

def run_reencrypt(args: argparse.Namespace) -> int:
    if args.in_place and (not args.input or args.input == "-"):
        raise InputError("--in-place needs -f FILE")
    if args.in_place and args.output:
        raise InputError("--in-place and -w cannot be combined")
    cert = load_certificate(args.cert)
    recovery = load_recovery_keys(args.recovery_private_key)
    private_keys = private_keys_of(recovery)
    target_key = next((k for k in recovery if k.fingerprint == cert.fingerprint), None)
    source, docs = read_documents(args.input)
    result: list[dict[str, Any]] = []
    resealed = unchanged = 0
    for index, doc in enumerate(docs):
        if not is_sealed_secret(doc):
            result.append(doc)  # a multi-document GitOps file may bundle other objects
            continue
        with in_document(source.name, index, doc), placed(doc, args.namespace) as located:
            if target_key is not None and _sealed_only_with(located, target_key):
                result.append(doc)  # already sealed for the new key: keep the git diff empty
                unchanged += 1
                continue
            updated = sealed_secrets.reencrypt(located, private_keys, cert.public_key)
            result.append(updated if located is doc else without_namespace(updated))
            resealed += 1
    if resealed + unchanged == 0:
        raise InputError(f"{source.name}: no SealedSecret found")
    fmt = output_format(args.format, args.output if not args.in_place else args.input,
                        format_of(source.content))
    text = documents.dump_all(result, fmt)
    if args.in_place:
        files.atomic_write(args.input, text)
    else:
        files.write_output(args.output, text)
    note(f"{source.name}: re-encrypted {resealed} SealedSecret(s) for {cert.fingerprint}"
         + (f", {unchanged} already sealed with it" if unchanged else ""))
    return 0


def _sealed_only_with(doc: Mapping[str, Any], key: keys.SealingKey) -> bool:
    spec = doc.get("spec")
    if isinstance(spec, Mapping) and spec.get("data"):
        return False  # legacy format: re-encrypting modernises it
    items = sealed_secrets.encrypted_items(doc)
    label = sealed_secrets.identity_of(doc).label
    return bool(items) and all(
        attribution.attribute_item(value, label, [key]).fingerprint == key.fingerprint
        for value in items.values())


# --------------------------------------------------------------------------- validate

def run_validate(args: argparse.Namespace) -> int:
    private_keys = private_keys_of(load_recovery_keys(args.recovery_private_key))
    source, docs = read_documents(args.input)
    checked = items = failing_docs = 0
    for index, doc in enumerate(docs):
        if not is_sealed_secret(doc):
            continue
        checked += 1
        with in_document(source.name, index, doc), placed(doc, args.namespace) as located:
            problems = sealed_secrets.failing_items(located, private_keys)
            items += len(sealed_secrets.encrypted_items(located))
        if problems:
            failing_docs += 1
            shown = "; ".join(f"item {item!r}: {reason}" for item, reason in problems.items())
            print(f"sealfleet: error: {source.name}: document {index}{describe(doc)}: {shown}",
                  file=sys.stderr)
    if checked == 0:
        raise InputError(f"{source.name}: no SealedSecret found")
    if failing_docs:
        note(f"{source.name}: {failing_docs} of {checked} SealedSecret(s) do not decrypt")
        return 1
    print(f"{source.name}: {checked} SealedSecret(s), {items} item(s): all decrypt")
    return 0
