"""Deterministic fleets of SealedSecrets for the sandbox, made fast.

``--seed S`` fixes everything a test can reason about: namespaces, names, scopes, item
names, plaintexts, which key seals which item.  (RSA keys and ciphertexts are random
as the real ones are; ``seed.json`` records the fingerprints they came out with.)

Why it is fast: seeding 20 clusters x 5,000 SealedSecrets means ~300k RSA-OAEP
encryptions and ~80 RSA-4096 key generations.  Both run on a process pool: key
generation holds the GIL (measured with cryptography 50: two threads generating keys
take as long as one doing both), so on threads it would serialize with the main
thread.  The pool is fed cluster by cluster: cluster k+2's keys are queued just ahead
of cluster k's encryption chunks, so the workers never wait for keys and the main
thread, which only assembles objects and bulk-loads them (``ObjectStore.load``: one
serialization per object, no copies, no validation of what is well-formed by
construction) as chunks arrive, has chunks to work on from the first seconds.  The
seed knows the plaintexts, so it creates each SealedSecret's Secret and ``Synced=True``
status itself and tells the controller which keys sealed what (its restart then trusts
those without decrypting 15k items); anything created or changed later is really
unsealed.

Keys are backdated: with R keys their certificates' NotBefore are 5, 35, 65, 95 ... days
ago (the newest is the sealing key); their Secrets are created at seeding time, so only
the certificates carry the age.  ``shared_key`` makes that newest key one identical
key in every cluster.  ``malformed`` adds, per cluster, SealedSecrets that cannot be
unsealed (half with an invalid ciphertext, half sealed to a key the cluster does not
have), left for the controller to fail on.

Objects are as old as the keys that sealed them: each SealedSecret (and its Secret) is
created at a random time between the NotBefore of the key that sealed its first item
and the next newer key's (or now), the time when kubeseal sealed with that key, as on a
real cluster whose objects were created over the keys' lifetimes.

``gitops_fraction`` makes that share of each cluster's good SealedSecrets (chosen per
object from the seed, without moving anything else the seed decides) applied by Flux:
they carry the labels the kustomize-controller sets, and the sandbox writes them, the
same ciphertext byte for byte, into its GitOps repository (:mod:`sealfleet.sandbox.gitops`).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import datetime as dt
import gc
import hashlib
import json
import multiprocessing
import os
import random
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sealfleet.domain import hybrid
from sealfleet.domain import keys as keys_domain
from sealfleet.domain import sealed_secrets as sealing
from sealfleet.domain.scopes import Scope, encryption_label, with_scope_annotations
from sealfleet.sandbox.controller.keyring import remember_parsed
from sealfleet.sandbox.controller.unsealing import SyncKnowledge, build_secret
from sealfleet.sandbox.gitops import document_path, flux_labels
from sealfleet.sandbox.objects import ApiError, ObjectStore

SEALED = "sealedsecrets.bitnami.com"
KEY_AGE_STEP_DAYS = 30
NEWEST_KEY_AGE_DAYS = 5
CHUNK_SECRETS = 400
KEYS_AHEAD = 2  # clusters whose keys are queued before the first encryption chunk
SMALL_SEED_ITEMS = 3000
_WORDS = ("payments", "billing", "checkout", "search", "ledger", "identity", "mailer",
          "catalog", "reports", "gateway", "orders", "storage", "metrics", "notify",
          "profile", "pricing", "auth", "backup", "ingest", "scheduler")
_ITEMS = ("password", "username", "token", "api-key", "database-url", "client-secret",
          "tls.key", "webhook-secret", "dsn", "private-key")


@dataclasses.dataclass(frozen=True)
class SeedSpec:
    namespaces: int = 3
    sealed_secrets: int = 20
    keys: int = 2
    seed: int = 0
    shared_key: bool = False
    key_bits: int = 4096
    malformed: int = 0
    gitops_fraction: float = 0.0  # share of good SealedSecrets applied by Flux from Git

    def __post_init__(self) -> None:
        if not 0.0 <= self.gitops_fraction <= 1.0:
            raise ValueError("gitops_fraction must be between 0 and 1")


@dataclasses.dataclass(frozen=True)
class SeedTarget:
    """Where one cluster's seed goes: its store and its controller's sync knowledge."""

    name: str
    store: ObjectStore
    knowledge: SyncKnowledge
    namespace: str = "kube-system"


@dataclasses.dataclass
class _Item:
    name: str
    key_index: int  # into the cluster's key list; -1: the foreign key; -2: garbage
    plaintext: bytes


@dataclasses.dataclass
class _Planned:
    namespace: str
    name: str
    scope: Scope
    items: list[_Item]
    broken: bool = False
    gitops: bool = False  # applied by Flux from the sandbox's GitOps repository

    @property
    def label(self) -> bytes:
        return encryption_label(self.scope, self.namespace, self.name)


def namespace_names(count: int) -> list[str]:
    return [f"{_WORDS[i % len(_WORDS)]}-{i // len(_WORDS) + 1}" for i in range(count)]


def key_ages(count: int) -> list[int]:
    """Ages in days of R seeded keys, oldest first: e.g. 95, 65, 35, 5."""
    return [NEWEST_KEY_AGE_DAYS + KEY_AGE_STEP_DAYS * i for i in reversed(range(count))]


def plan_cluster(spec: SeedSpec, rng: random.Random) -> list[_Planned]:
    """The SealedSecrets of one cluster (no crypto): names, scopes, items, keys."""
    namespaces = namespace_names(spec.namespaces)
    newest = spec.keys - 1
    planned: list[_Planned] = []
    for index in range(spec.sealed_secrets + spec.malformed):
        broken = index >= spec.sealed_secrets
        roll = rng.random()
        scope = (Scope.STRICT if roll < 0.7 else
                 Scope.NAMESPACE_WIDE if roll < 0.9 else Scope.CLUSTER_WIDE)
        name = f"{rng.choice(_WORDS)}-{'broken' if broken else 'secret'}-{index:05d}"
        # Most SealedSecrets were sealed with the newest key, the rest with older ones;
        # a few mix keys between items (a later --merge-into after a renewal).
        key_index = newest if rng.random() < 0.55 or newest == 0 else rng.randrange(newest)
        mixed = rng.random() < 0.1
        items = []
        for item_name in sorted(rng.sample(_ITEMS, rng.randint(1, 5))):
            item_key = rng.randrange(spec.keys) if mixed else key_index
            if broken:
                item_key = -2 if index % 2 == 0 else -1
            value = f"{item_name}-{rng.getrandbits(96):024x}".encode()
            items.append(_Item(item_name, item_key, value))
        planned.append(_Planned(rng.choice(namespaces), name, scope, items, broken))
    return planned


# ------------------------------------------------------------------ worker side

_PUBLIC_KEYS: dict[bytes, rsa.RSAPublicKey] = {}


def _public_key(der: bytes) -> rsa.RSAPublicKey:
    key = _PUBLIC_KEYS.get(der)
    if key is None:
        loaded = serialization.load_der_public_key(der)
        assert isinstance(loaded, rsa.RSAPublicKey)
        key = _PUBLIC_KEYS[der] = loaded
    return key


def encrypt_chunk(public_keys: Sequence[bytes],
                  work: Sequence[tuple[int, bytes, bytes]]) -> list[str]:
    """Seal (key index, label, plaintext) triples; runs in a worker process."""
    keys = [_public_key(der) for der in public_keys]
    return [base64.b64encode(hybrid.encrypt(keys[index], plaintext, label)).decode()
            for index, label, plaintext in work]


def generate_key_material(bits: int, not_before: dt.datetime) -> tuple[bytes, bytes]:
    """A fresh sealing key as (PKCS#1 private key PEM, certificate PEM); runs in a worker
    process (RSA keys cannot be pickled, their PEM can)."""
    key = keys_domain.generate_sealing_key(bits=bits, now=not_before)
    return key.private_key_pem(), key.certificate.pem


def _key_from_material(material: tuple[bytes, bytes]) -> keys_domain.SealingKey:
    key_pem, cert_pem = material
    # The key was generated a moment ago by our own worker: OpenSSL's consistency check
    # (a primality test of both primes, ~250 ms for RSA-4096, as long as generating
    # it) would only re-prove what generation guarantees.
    private_key = serialization.load_pem_private_key(
        key_pem, password=None, unsafe_skip_rsa_key_validation=True)
    assert isinstance(private_key, rsa.RSAPrivateKey)
    return keys_domain.SealingKey(private_key, keys_domain.load_certificate(cert_pem))


def sealing_windows(keys: Sequence[keys_domain.SealingKey], now: dt.datetime,
                    ) -> list[tuple[dt.datetime, dt.datetime]]:
    """Per key: from its NotBefore until the next newer key's (or *now*), the time when
    kubeseal and the controller sealed with it."""
    windows = []
    for key in keys:
        later = [k.not_before for k in keys if k.not_before > key.not_before]
        windows.append((key.not_before, min(later, default=now)))
    return windows


def _der(key: keys_domain.SealingKey) -> bytes:
    return key.public_key.public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)


# ------------------------------------------------------------------- seeding


def _exists(store: ObjectStore, namespace: str) -> bool:
    try:
        store.entry("namespaces", None, namespace)
    except ApiError:
        return False
    return True


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while seeding.

    Seeding allocates millions of long-lived containers (objects, index entries, the
    seed.json record) and almost no cycles; each full collection re-walks everything
    allocated so far, which cost a quarter of the main thread's seeding time (measured:
    7.0 s against 5.2 s of main-thread CPU for 10 clusters x 5,000).  Reference counting
    still frees everything else; the collector resumes (if it was on) afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Seeder:
    """Seeds a set of clusters; returns the ``seed.json`` document."""

    def __init__(self, spec: SeedSpec, *, processes: int | None = None) -> None:
        self.spec = spec
        self._processes = (os.cpu_count() or 2) if processes is None else processes
        self._now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        self._created_at = self._now.strftime("%Y-%m-%dT%H:%M:%SZ")
        # seed.json's "sealed_secrets" entries, encoded per chunk while the RSA work is
        # still running (encoding 100k entries at the end would delay ``ready``).
        self._encoded: dict[str, tuple[int, list[bytes]]] = {}  # cluster: (entries, chunks)

    async def seed(self, targets: Sequence[SeedTarget]) -> dict[str, Any]:
        spec = self.spec
        loop = asyncio.get_running_loop()
        with _gc_paused(), self._encryption_pool(len(targets)) as pool, \
                self._key_pool(pool) as key_pool:
            # Start key generation first (it also spawns the worker processes, which
            # takes a while), then plan while it runs.
            ages = key_ages(spec.keys)
            shared = self._submit_keys(loop, key_pool, ages[-1:]) if spec.shared_key else []
            foreign = self._submit_keys(loop, key_pool, [0]) if spec.malformed else []
            own_ages = ages[:-1] if spec.shared_key else ages
            first = [self._submit_keys(loop, key_pool, own_ages)
                     for _ in range(min(KEYS_AHEAD, len(targets)))]
            ready = {target.name: loop.create_future() for target in targets}
            rng = random.Random(spec.seed)
            plans = {target.name: plan_cluster(spec, rng) for target in targets}
            for target in targets:
                self._choose_gitops(target.name, plans[target.name])
            async with asyncio.TaskGroup() as group:
                group.create_task(self._keys_in_turn(loop, key_pool, own_ages, first, shared,
                                                     ready), name="seed-keys")
                tasks = [group.create_task(
                    self._seed_cluster(loop, pool, target, plans[target.name],
                                       ready[target.name], foreign[0] if foreign else None),
                    name=f"seed-{target.name}") for target in targets]
            records = [task.result() for task in tasks]
        return {"seed": spec.seed, "generated_at": self._now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "spec": dataclasses.asdict(spec),
                "clusters": {t.name: r[0] for t, r in zip(targets, records, strict=True)},
                "sealed_secrets": [entry for r in records for entry in r[1]]}

    def _choose_gitops(self, cluster: str, planned: list[_Planned]) -> None:
        """Which objects Flux applies: a draw of their own per object (not from the
        plan's random sequence, so a seed's objects stay what they were without it)."""
        fraction = self.spec.gitops_fraction
        if fraction <= 0:
            return
        for p in planned:
            draw = random.Random(f"{self.spec.seed}/{cluster}/{p.namespace}/{p.name}/gitops")
            p.gitops = not p.broken and draw.random() < fraction

    def encoded(self, record: dict[str, Any]) -> list[bytes]:
        """``seed.json`` in parts: together exactly ``json.dumps(record, separators=(",",
        ":"))``, with the entries that :meth:`seed` already encoded chunk by chunk spliced
        in (write them in order; joining them would copy 65 MB for a 20 x 5,000 seed)."""
        encoded, self._encoded = self._encoded, {}
        entries = record.get("sealed_secrets")
        if (list(record)[-1:] != ["sealed_secrets"] or set(encoded) != set(record["clusters"])
                or sum(count for count, _ in encoded.values()) != len(entries or ())):
            return [json.dumps(record, separators=(",", ":")).encode()]  # not as we made it
        head = {k: v for k, v in record.items() if k != "sealed_secrets"}
        chunks = [chunk for name in record["clusters"] for chunk in encoded[name][1]]
        return [json.dumps(head, separators=(",", ":")).encode()[:-1], b',"sealed_secrets":[',
                *(part for index, chunk in enumerate(chunks)
                  for part in ((b",", chunk) if index else (chunk,))), b"]}"]

    def _encryption_pool(self, clusters: int) -> Executor:
        """Worker processes (spawned: safe beside threads), or one thread for small seeds,
        where starting interpreters would cost more than the encryption."""
        items = clusters * (self.spec.sealed_secrets + self.spec.malformed) * 3
        if self._processes == 0 or items < SMALL_SEED_ITEMS:
            return ThreadPoolExecutor(max_workers=1, thread_name_prefix="seed-encrypt")
        return ProcessPoolExecutor(max_workers=self._processes,
                                   mp_context=multiprocessing.get_context("spawn"))

    def _key_pool(self, pool: Executor) -> contextlib.AbstractContextManager[Executor]:
        """Where keys are generated: the worker processes, or for small seeds (no
        processes) a thread pool beside the encryption thread."""
        if isinstance(pool, ProcessPoolExecutor):
            return contextlib.nullcontext(pool)
        return ThreadPoolExecutor(max_workers=max(self._processes, 1),
                                  thread_name_prefix="seed-keygen")

    def _submit_keys(self, loop: asyncio.AbstractEventLoop, pool: Executor,
                     ages: Sequence[int]) -> list[asyncio.Future[tuple[bytes, bytes]]]:
        return [loop.run_in_executor(pool, generate_key_material, self.spec.key_bits,
                                     self._now - dt.timedelta(days=age)) for age in ages]

    async def _keys_in_turn(self, loop: asyncio.AbstractEventLoop, pool: Executor,
                            ages: Sequence[int],
                            first: list[list[asyncio.Future[tuple[bytes, bytes]]]],
                            shared: list[asyncio.Future[tuple[bytes, bytes]]],
                            ready: dict[str, asyncio.Future[list[keys_domain.SealingKey]]],
                            ) -> None:
        """Generate the clusters' keys one cluster at a time, in order.

        Submitting all keys up front would put every key ahead of every encryption in
        the pool's queue: the main thread would idle until the last key was made, then
        have all the assembling to do at once.  In turn, cluster k+2's keys are
        submitted the moment cluster k's are made, just before cluster k's chunks: two
        clusters ahead, so that while the slowest key of cluster k+1 is still being
        generated (key generation times vary severalfold) the other workers have
        cluster k's chunks to encrypt instead of waiting for it.
        """
        shared_key = _key_from_material(await shared[0]) if shared else None
        pending = collections.deque(first)
        names = list(ready)
        unsubmitted = len(names) - len(pending)
        for name in names:
            materials = await asyncio.gather(*pending.popleft())
            if unsubmitted > 0:
                pending.append(self._submit_keys(loop, pool, ages))
                unsubmitted -= 1
            keys = [_key_from_material(material) for material in materials]
            ready[name].set_result(keys + ([shared_key] if shared_key is not None else []))

    async def _seed_cluster(self, loop: asyncio.AbstractEventLoop, pool: Executor,
                            target: SeedTarget, planned: list[_Planned],
                            keys_ready: asyncio.Future[list[keys_domain.SealingKey]],
                            foreign_future: asyncio.Future[tuple[bytes, bytes]] | None,
                            ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        for namespace in namespace_names(self.spec.namespaces):
            # As on a real cluster, the namespaces exist before anything is put in them.
            if not _exists(target.store, namespace):
                target.store.create("namespaces", None, {"metadata": {"name": namespace}})
        keys = await keys_ready
        foreign = (_key_from_material(await foreign_future)
                   if foreign_future is not None else None)
        key_records = self._write_keys(target, keys)
        ders = [_der(k) for k in keys] + ([_der(foreign)] if foreign is not None else [])
        fingerprints = [k.fingerprint for k in keys]
        windows = sealing_windows(keys, self._now)
        chunks = [planned[i:i + CHUNK_SECRETS] for i in range(0, len(planned), CHUNK_SECRETS)]
        futures = []
        for chunk in chunks:
            work = [(item.key_index if item.key_index >= 0 else len(keys), s.label,
                     item.plaintext)
                    for s in chunk for item in s.items if item.key_index != -2]
            futures.append(loop.run_in_executor(pool, encrypt_chunk, ders, work))
        entries: list[dict[str, Any]] = []
        encoded: list[bytes] = []
        for chunk, future in zip(chunks, futures, strict=True):
            stored = self._store_chunk(target, chunk, iter(await future), fingerprints,
                                      windows)
            entries += stored
            encoded.append(json.dumps(stored, separators=(",", ":")).encode()[1:-1])
            await asyncio.sleep(0)  # let the servers breathe between chunks
        self._encoded[target.name] = (len(entries), encoded)
        newest = keys_domain.most_recent_key(keys)
        cluster_record = {"keys": key_records,
                          "sealing_key": newest.fingerprint if newest else None}
        return cluster_record, entries

    def _write_keys(self, target: SeedTarget, keys: list[keys_domain.SealingKey]
                    ) -> list[dict[str, Any]]:
        newest = keys_domain.most_recent_key(keys)
        records = []
        for key in keys:  # oldest first, as they would have been created
            manifest = keys_domain.key_secret_manifest(key, namespace=target.namespace)
            created = target.store.create("secrets", target.namespace, manifest)
            remember_parsed(manifest, key)  # the controller need not parse it again
            records.append({"fingerprint": key.fingerprint,
                            "not_before": key.not_before.strftime("%Y-%m-%dT%H:%M:%SZ"),
                            "not_after": key.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                            "secret": created["metadata"]["name"],
                            "sealing": key is newest})
        return records

    def _store_chunk(self, target: SeedTarget, chunk: list[_Planned], ciphertexts: Any,
                     fingerprints: list[str], windows: list[tuple[dt.datetime, dt.datetime]],
                     ) -> list[dict[str, Any]]:
        """Bulk-load one chunk: its SealedSecrets, then the Secrets they own (which need
        the owners' uids), then the controller's knowledge of which keys sealed what."""
        sealed_objects = [self._sealed_object(p, ciphertexts) for p in chunk]
        for planned, sealed in zip(chunk, sealed_objects, strict=True):
            sealed["metadata"]["creationTimestamp"] = self._creation(target, planned, windows)
            if planned.gitops:
                sealed["metadata"]["labels"].update(flux_labels())
        target.store.load(SEALED, sealed_objects, keep_creation_timestamps=True)
        owned = [(p, o) for p, o in zip(chunk, sealed_objects, strict=True) if not p.broken]
        secrets = [build_secret(sealed, sealing.identity_of(sealed),
                                {i.name: i.plaintext for i in planned.items})
                   for planned, sealed in owned]
        for (_, sealed), secret in zip(owned, secrets, strict=True):
            # Unsealed when its SealedSecret was created.
            secret["metadata"]["creationTimestamp"] = sealed["metadata"]["creationTimestamp"]
        target.store.load("secrets", secrets, keep_creation_timestamps=True)
        for planned, sealed in owned:
            used = frozenset(fingerprints[i.key_index] for i in planned.items)
            meta = sealed["metadata"]
            target.knowledge.remember(meta["uid"], 1, used, int(meta["resourceVersion"]))
        return [{
            "cluster": target.name, "namespace": p.namespace, "name": p.name,
            "scope": p.scope.cli_name, "broken": p.broken,
            "items": [{"name": i.name,
                       "key": fingerprints[i.key_index] if i.key_index >= 0 else None,
                       "sha256": hashlib.sha256(i.plaintext).hexdigest()}
                      for i in p.items],
            **({"git_path": document_path(target.name, p.namespace, p.name)}
               if p.gitops else {}),
        } for p in chunk]

    def _creation(self, target: SeedTarget, planned: _Planned,
                  windows: list[tuple[dt.datetime, dt.datetime]]) -> str:
        """A creationTimestamp within the window of the key that sealed the first item
        (the newest key's for one with no key of the cluster's), the same for every
        run with this seed."""
        newest = max(range(len(windows)), key=lambda i: windows[i][0])
        first = next((i.key_index for i in planned.items if i.key_index >= 0), newest)
        start, end = windows[first]
        rng = random.Random(f"{self.spec.seed}/{target.name}/{planned.namespace}/{planned.name}")
        return (start + (end - start) * rng.random()).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _sealed_object(self, planned: _Planned, ciphertexts: Any) -> dict[str, Any]:
        """The SealedSecret as ``kubeseal`` would have made it; a good one also carries the
        status the controller would have set after unsealing it (``Synced=True``): the
        seed knows the plaintexts, so it writes the Secret itself (see ``_store_chunk``).
        A broken one is left for the controller to fail on, as a user's would be."""
        encrypted: dict[str, str] = {}
        for item in planned.items:
            encrypted[item.name] = ("bm90IGEgc2VhbGVkIHZhbHVl" if item.key_index == -2
                                    else next(ciphertexts))
        annotations = with_scope_annotations(None, planned.scope)
        template_meta: dict[str, Any] = {
            "name": planned.name, "namespace": planned.namespace, "creationTimestamp": None,
            "labels": {"app.kubernetes.io/part-of": planned.namespace}}
        top: dict[str, Any] = {"name": planned.name, "namespace": planned.namespace,
                               "labels": {"app.kubernetes.io/part-of": planned.namespace}}
        if annotations:
            template_meta["annotations"] = dict(annotations)
            top["annotations"] = dict(annotations)
        sealed: dict[str, Any] = {
            "kind": sealing.KIND, "apiVersion": sealing.API_VERSION, "metadata": top,
            "spec": {"template": {"metadata": template_meta, "type": "Opaque"},
                     "encryptedData": encrypted}}
        if not planned.broken:
            sealed["status"] = {"conditions": [{"type": "Synced", "status": "True",
                                                "lastUpdateTime": self._created_at,
                                                "lastTransitionTime": self._created_at}],
                                "observedGeneration": 1}
        return sealed
