"""``keys generate`` and ``keys fingerprint``: sealing keys outside any cluster.

``generate`` makes a key exactly as the controller does (so a fleet can share one
master key, or a key can be prepared before a cluster exists) and writes the private
key, and the optional key Secret, with mode 0600 from the first byte.  ``fingerprint``
prints the controller's key id for a certificate, a private key or a key Secret.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sealfleet.adapters import files
from sealfleet.domain import documents, keyfiles
from sealfleet.domain import keys as sealing_keys
from sealfleet.errors import InputError

_MIN_BITS = 2048
_MAX_BITS = 16384


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = subparsers.add_parser("keys", help="generate sealing keys, print key fingerprints")
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

    group.set_defaults(handler=lambda _args: _usage(group))


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
