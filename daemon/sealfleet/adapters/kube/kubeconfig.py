"""Kubeconfig files, each parsed once per version, and what one context needs to connect.

kubernetes-asyncio's ``new_client_from_config`` re-reads and re-parses the whole file
(pure-Python YAML) for every client, so N contexts in one file cost N parses per
(re)connect round: quadratic in the fleet.  It also writes base64 CA and client-key data
to temp files kept until exit, builds an SSL context per client, and reports a missing
file as "Expected key current-context" after printing "Config not found" on stderr.

Here a :class:`KubeconfigCache` parses each file once, with libyaml, and again only when
it changes (device, inode, size, mtime or ctime differ) or is invalidated (SIGHUP).  A
connection takes its context's entries, indexed by name, and runs kubernetes-asyncio's
``KubeConfigLoader`` on just those, for authentication (token, tokenFile, exec plugins,
OIDC, GCP, basic) and host, proxy and SNI settings, with the TLS fields taken out: TLS
contexts are built here and shared by content (:mod:`sealfleet.adapters.kube.tls`).

Errors are :class:`KubeconfigError`, permanent for the cluster: one line naming the file,
the context and the faulty key, never a token or key material.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import os
import ssl
import threading
from typing import Any

from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.config.config_exception import ConfigException
from kubernetes_asyncio.config.kube_config import KubeConfigLoader

from sealfleet.adapters.kube import kubeconfig_document as document
from sealfleet.adapters.kube import tls
from sealfleet.domain.redaction import mask_text

_CLUSTER_TLS_KEYS = ("certificate-authority", "certificate-authority-data")
_USER_TLS_KEYS = ("client-certificate", "client-certificate-data",
                  "client-key", "client-key-data")

# kubernetes-asyncio logs through stdlib logging, which this daemon leaves unconfigured
# (structlog writes our lines).  Without a handler, Python's last-resort handler prints
# the library's warnings and errors (exec plugin failures, with the plugin's stderr) as
# stray non-JSON lines on stderr.  Whatever they say reaches us as exceptions instead.
logging.getLogger("kubernetes_asyncio").addHandler(logging.NullHandler())

# Callers catch it from here, beside the cache that raises it.
KubeconfigError = document.KubeconfigError


class Credentials:
    """The Authorization header of one connection; never shows the token in a repr.

    Only the header is kept, not the loader's ``Configuration`` (a few KB of settings,
    loggers and a formatter, per cluster for as long as it is connected): the loader
    runs the exec plugin, refreshes OIDC or reads the token file when the connection is
    made, and sets no refresh hook, so the header is fixed for the connection's life
    (a reconnect loads afresh).  A configuration with a refresh hook is kept and asked
    on every request.
    """

    def __init__(self, configuration: Configuration) -> None:
        self._configuration: Configuration | None = None
        self._header: str | None = None
        if configuration.refresh_api_key_hook is not None:
            self._configuration = configuration
        else:
            self._header = _bearer(configuration.api_key, configuration.api_key_prefix)

    async def authorization(self) -> str | None:
        if self._configuration is None:
            return self._header
        value = await self._configuration.get_api_key_with_prefix("BearerToken")
        return str(value) if value else None

    def __repr__(self) -> str:
        return "Credentials(<hidden>)"


def _bearer(api_key: dict[str, str], prefixes: dict[str, str]) -> str | None:
    """What ``Configuration.get_api_key_with_prefix("BearerToken")`` answers."""
    key = api_key.get("BearerToken")
    if not key:
        return None
    prefix = prefixes.get("BearerToken")
    return f"{prefix} {key}" if prefix else str(key)


@dataclasses.dataclass(frozen=True)
class ClusterAccess:
    """Everything a connection to one context's API server needs."""

    server: str
    ssl_context: ssl.SSLContext | None  # None for an http:// server
    tls_server_name: str | None
    proxy: str | None
    credentials: Credentials


@dataclasses.dataclass
class _Entry:
    """The cache's slot for one file version: the document or the error it gave."""

    signature: tuple[int, ...]
    parsed: document.Document | None
    error: str | None
    # Strong references to the TLS contexts built for this version, so reconnects reuse
    # them; a newer version of the file drops them with this entry.
    held: set[ssl.SSLContext] = dataclasses.field(default_factory=set)


def _signature(st: os.stat_result) -> tuple[int, ...]:
    # ctime too: an in-place rewrite of the same size within the mtime granularity, or
    # an mtime restored by a tool, still moves it.
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class KubeconfigCache:
    """Parsed kubeconfig files and shared TLS contexts; own one per daemon, or use
    :func:`shared_cache`.

    Thread-safe; files are read and TLS contexts built on worker threads.  Concurrent
    connections to one file wait for a single parse rather than each parsing it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._file_locks: dict[str, threading.Lock] = {}
        self._entries: dict[str, _Entry] = {}
        self._tls = tls.SharedTlsContexts()
        self._parses = 0

    @property
    def parses(self) -> int:
        """How many times a kubeconfig file was read and parsed."""
        return self._parses

    @property
    def tls_contexts_built(self) -> int:
        return self._tls.built

    def invalidate(self, path: str | None = None) -> None:
        """Forget *path* (or every file): the next connection re-reads it (SIGHUP)."""
        with self._lock:
            if path is None:
                self._entries.clear()
            else:
                self._entries.pop(_key(path), None)

    async def access(self, path: str, context: str | None) -> ClusterAccess:
        """What connecting to *context* of *path* takes; :class:`KubeconfigError` if not."""
        selection = await asyncio.to_thread(self._prepare, path, context)
        configuration = await _authenticate(selection)
        ssl_context = selection.ssl_context
        if selection.material is not None and configuration.cert_file:
            # An exec plugin answered with a client certificate instead of a token.
            ssl_context = await asyncio.to_thread(
                self._with_plugin_certificate, selection, str(configuration.cert_file),
                configuration.key_file and str(configuration.key_file))
        return ClusterAccess(server=str(configuration.host), ssl_context=ssl_context,
                             tls_server_name=configuration.tls_server_name or None,
                             proxy=configuration.proxy or None,
                             credentials=Credentials(configuration))

    def _prepare(self, path: str, context: str | None) -> document.Selection:
        entry = self._entry(path, context)
        if entry.parsed is None:
            raise KubeconfigError(str(entry.error))
        base_dir = os.path.dirname(_key(path))
        selection = document.select(entry.parsed, path, context, base_dir=base_dir)
        material = document.static_material(selection)
        if material is None:
            return selection
        return dataclasses.replace(selection, material=material,
                                   ssl_context=self._context_for(entry, material, selection))

    def _entry(self, path: str, context: str | None) -> _Entry:
        key = _key(path)
        where = (f"kubeconfig {path} context {context!r}" if context is not None
                 else f"kubeconfig {path} (current-context)")
        try:
            entry = self._fresh(key)
            if entry is not None:
                return entry
            with self._lock:
                file_lock = self._file_locks.setdefault(key, threading.Lock())
            with file_lock:  # one parse per file at a time; the others wait for it
                entry = self._fresh(key)
                if entry is not None:
                    return entry
                with open(key, "rb") as f:
                    # fstat before reading: a write racing the read moves the signature
                    # past this one, and the next connection reads the file again.
                    signature = _signature(os.fstat(f.fileno()))
                    data = f.read()
                try:
                    entry = _Entry(signature, document.parse_document(data, path), None)
                except KubeconfigError as exc:
                    entry = _Entry(signature, None, str(exc))  # broken: parsed once, too
                with self._lock:
                    self._parses += 1
                    self._entries[key] = entry
                return entry
        except FileNotFoundError:
            raise KubeconfigError(f"{where}: file not found") from None
        except OSError as exc:
            raise KubeconfigError(f"{where}: cannot read the file: "
                                  f"{exc.strerror or type(exc).__name__}") from None

    def _fresh(self, key: str) -> _Entry | None:
        """The cached entry if the file on disk is still that version."""
        signature = _signature(os.stat(key))
        with self._lock:
            entry = self._entries.get(key)
        return entry if entry is not None and entry.signature == signature else None

    def _context_for(self, entry: _Entry | None, material: tls.TlsMaterial,
                     selection: document.Selection) -> ssl.SSLContext:
        try:
            context = self._tls.get(material)
        except tls.TlsMaterialError as exc:
            if exc.part == "ca":
                keys = f"clusters[name={selection.cluster_name}].cluster.certificate-authority"
            elif entry is None:
                keys = "the exec plugin's client certificate"
            else:
                keys = f"users[name={selection.user_name}].user.client-certificate/client-key"
            raise KubeconfigError(f"{selection.where}: {keys}: {exc}") from None
        if entry is not None:
            with self._lock:
                entry.held.add(context)
        return context

    def _with_plugin_certificate(self, selection: document.Selection, cert_file: str,
                                 key_file: str | None) -> ssl.SSLContext:
        static = selection.material or tls.TlsMaterial()
        try:
            with open(cert_file, "rb") as f:
                cert = f.read()
            key = None
            if key_file:
                with open(key_file, "rb") as f:
                    key = f.read()
        except OSError as exc:
            raise KubeconfigError(f"{selection.where}: the exec plugin's client certificate: "
                                  f"{exc.strerror or type(exc).__name__}") from None
        material = tls.TlsMaterial(ca=static.ca, client_cert=cert, client_key=key,
                                   verify=static.verify)
        # Not held past its clients: a plugin may hand out a fresh certificate each time.
        return self._context_for(None, material, selection)


def _key(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


async def _authenticate(selection: document.Selection) -> Configuration:
    """kubernetes-asyncio's loader on this context alone, TLS fields removed."""
    cluster = {k: v for k, v in selection.cluster.items() if k not in _CLUSTER_TLS_KEYS}
    config: dict[str, Any] = {
        "current-context": selection.name,
        "contexts": [{"name": selection.name, "context": selection.context}],
        "clusters": [{"name": selection.cluster_name, "cluster": cluster}],
        "users": [],
    }
    if selection.user_name is not None:
        # A copy: OIDC and GCP refreshes write tokens into the user entry.
        user = {k: v for k, v in copy.deepcopy(selection.user or {}).items()
                if k not in _USER_TLS_KEYS}
        config["users"] = [{"name": selection.user_name, "user": user}]
    configuration = Configuration()
    try:
        loader = KubeConfigLoader(config_dict=config, active_context=selection.name,
                                  config_base_path=selection.base_dir)
        await loader.load_and_set(configuration)
    except (ConfigException, OSError, ValueError, TypeError, KeyError) as exc:
        raise KubeconfigError(f"{selection.where}: {type(exc).__name__}: "
                              f"{mask_text(str(exc))[:document.MAX_MESSAGE]}") from exc
    return configuration


_SHARED = KubeconfigCache()


def shared_cache() -> KubeconfigCache:
    """The process-wide cache, for callers that do not pass their own."""
    return _SHARED
