"""Client TLS contexts for kube API servers, one per distinct CA, client certificate and verify.

A fleet kubeconfig usually repeats the same few CAs (and often no client certificate at
all) across hundreds of contexts.  Building an :class:`ssl.SSLContext` parses the CA
bundle (or loads the whole system trust store when there is none), so every connection
building its own, as kubernetes-asyncio does, is wasted work and memory.  Contexts are
shared by content: equal material means one context, whichever file or context it came
from.

Python's ``ssl`` loads a client certificate and key only from files, so those pass
through a private temporary directory that is removed as soon as the context holds them;
nothing is left on disk (kubernetes-asyncio keeps such files until the process exits).

:func:`limit_receive_buffers` keeps each TLS connection's receive buffer small: a fleet
daemon holds two or three connections per cluster, for as long as it runs.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import tempfile
import threading
import weakref
from asyncio import sslproto
from dataclasses import dataclass, field
from typing import Literal

# asyncio's TLS transport gives every connection a receive buffer of
# ``sslproto.SSLProtocol.max_size`` bytes (256 KiB in CPython 3.11 to 3.13), allocated
# and zero-filled when the connection opens and kept while it lives: with two watches and
# a pooled connection per cluster that was 600 KB of a daemon's memory per cluster, most
# of it at 1,000 clusters.  The socket is read into it, and each read is copied into
# OpenSSL's incoming memory BIO, whose buffer keeps the largest size it ever held: so
# the buffer's size counts about twice per connection.  Measured here (300 sandbox
# clusters, one idle watch each, RSS after the watches streamed): 107 KB per connection
# at 16 KiB, 90 at 8 KiB, 75 at 4 KiB, 72 at 1 KiB.  The price is CPU on bulk reads
# (a 16 KiB TLS record takes four socket reads): 78 instead of 43 CPU-ms per 20 MB body,
# some 17 ms on a 10 MB list page whose JSON parse alone takes 100 ms, while a fleet
# daemon's connections are mostly idle watches.
RECEIVE_BUFFER = 4 * 1024

# sha256 of CA, client certificate and key (None when absent), and the verify setting.
TlsIdentity = tuple[bytes | None, bytes | None, bytes | None, bool]


class TlsMaterialError(ValueError):
    """The material does not make a TLS context (bad PEM, key not matching the cert)."""

    def __init__(self, part: Literal["ca", "client"], message: str) -> None:
        super().__init__(message)
        self.part = part


@dataclass(frozen=True)
class TlsMaterial:
    """What a client TLS context is made of; bytes are PEM (a CA may also be DER)."""

    ca: bytes | None = field(default=None, repr=False)
    client_cert: bytes | None = field(default=None, repr=False)
    client_key: bytes | None = field(default=None, repr=False)
    verify: bool = True

    def identity(self) -> TlsIdentity:
        """Digests, not the bytes: the registry's keys never hold a private key."""
        return (_digest(self.ca), _digest(self.client_cert), _digest(self.client_key),
                self.verify)


def _digest(data: bytes | None) -> bytes | None:
    return hashlib.sha256(data).digest() if data is not None else None


def build_context(material: TlsMaterial) -> ssl.SSLContext:
    """A client context as kubectl would verify: the CA given, else the system store."""
    try:
        if material.ca is not None:
            ca = material.ca
            # cadata takes PEM as text and DER as bytes.
            cadata: str | bytes = ca.decode("ascii") if ca.lstrip().startswith(b"-----") else ca
            context = ssl.create_default_context(cadata=cadata)
        else:
            context = ssl.create_default_context()
    except (ssl.SSLError, ValueError) as exc:
        raise TlsMaterialError("ca", "not a PEM or DER certificate") from exc
    if material.client_cert is not None:
        _load_client_certificate(context, material.client_cert, material.client_key)
    if not material.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _load_client_certificate(context: ssl.SSLContext, cert: bytes, key: bytes | None) -> None:
    with tempfile.TemporaryDirectory(prefix="sealfleet-kube-tls-") as tmp:  # mode 0700
        cert_path = os.path.join(tmp, "client.crt")
        _write_private(cert_path, cert)
        key_path = None
        if key is not None:
            key_path = os.path.join(tmp, "client.key")
            _write_private(key_path, key)
        try:
            # An empty password: an encrypted key fails here instead of OpenSSL
            # prompting on the daemon's terminal.
            context.load_cert_chain(cert_path, key_path, password=b"")
        except ssl.SSLError:
            raise TlsMaterialError("client", "not a PEM certificate with its matching "
                                   "unencrypted key") from None


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def limit_receive_buffers(size: int = RECEIVE_BUFFER) -> None:
    """Make asyncio's TLS connections opened from now on read into *size*-byte buffers.

    Process-wide (asyncio offers no per-connection setting), and it only ever lowers
    the size.  Idempotent: every connect calls it.
    """
    current = getattr(sslproto.SSLProtocol, "max_size", None)
    if isinstance(current, int) and current > size:
        sslproto.SSLProtocol.max_size = size


class SharedTlsContexts:
    """Contexts by material identity, alive while any client or holder keeps them.

    Thread-safe: contexts are built on worker threads (the system trust store is a file
    read).  Weak values, so a context whose clusters are all gone (a kubeconfig edited
    to a new CA) is freed; whoever wants one kept between connections holds a reference
    (the kubeconfig cache does, per file version).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: weakref.WeakValueDictionary[TlsIdentity, ssl.SSLContext] = (
            weakref.WeakValueDictionary())
        self._built = 0

    @property
    def built(self) -> int:
        """How many contexts were built so far (a test and benchmark observable)."""
        return self._built

    def __len__(self) -> int:
        return len(self._live)

    def get(self, material: TlsMaterial) -> ssl.SSLContext:
        identity = material.identity()
        with self._lock:  # held while building: the next caller wants the same one
            context = self._live.get(identity)
            if context is None:
                context = build_context(material)
                self._live[identity] = context
                self._built += 1
            return context
