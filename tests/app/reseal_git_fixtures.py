"""A GitOps repository for the Git reseal tests: a bare remote, the user's clone (the
configured tree), SealedSecrets sealed with real keys in YAML (comments, anchors, CRLF,
several documents, a block scalar sealfleet must not rewrite) and JSON; a real Store and
keystore behind a JobContext, as the daemon builds them."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.adapters.store.records import JobRecord
from sealfleet.app import config
from sealfleet.app.jobs.context import JobContext
from sealfleet.app.keystore import Keystore
from sealfleet.domain import sealed_secrets
from sealfleet.domain.keys import KeySource, SealingKey
from sealfleet.domain.planning.resealing import ItemKey, PlannedReseal, Source
from sealfleet.domain.scopes import Scope
from sealfleet.domain.sealed_secrets import SealedIdentity
from sealfleet.domain.staleness import SecretState

PLAINTEXT = b"plaintext-never-in-git-Zm9vYmFy"
ENV = {"PATH": os.environ["PATH"], "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
       "LC_ALL": "C", "GIT_AUTHOR_NAME": "u", "GIT_AUTHOR_EMAIL": "u@example.org",
       "GIT_COMMITTER_NAME": "u", "GIT_COMMITTER_EMAIL": "u@example.org"}


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=ENV, check=True,
                          capture_output=True).stdout.decode()


def value(key: SealingKey, namespace: str, name: str, plaintext: bytes = PLAINTEXT) -> str:
    return sealed_secrets.seal_value(key.public_key, plaintext,
                                     SealedIdentity(namespace, name, Scope.STRICT))


def multi_yaml(key: SealingKey) -> str:
    """Three documents: a ConfigMap, a SealedSecret with an anchor, an alias, comments and
    both quoting styles, and one whose only item is a block scalar."""
    return ("# apps, owned by the payments team\n"
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: prod}\n"
            "data:\n  mode: fast   # tuned\n"
            "---\n"
            "apiVersion: bitnami.com/v1alpha1\nkind: SealedSecret\nmetadata:\n"
            "  name: db\n  namespace: prod\n  labels: &labels\n    app: db\n"
            "spec:\n  encryptedData:\n"
            f"    password: {value(key, 'prod', 'db')}   # rotated yearly\n"
            f"    user: '{value(key, 'prod', 'db', b'admin')}'\n"
            "  template:\n    metadata:\n      labels: *labels\n"
            "---\n"
            "apiVersion: bitnami.com/v1alpha1\nkind: SealedSecret\nmetadata:\n"
            "  name: blocky\n  namespace: prod\nspec:\n  encryptedData:\n"
            f"    password: |\n      {value(key, 'prod', 'blocky')}\n")


def crlf_yaml(key: SealingKey, name: str) -> str:
    return "\r\n".join([
        "apiVersion: bitnami.com/v1alpha1", "kind: SealedSecret", "metadata:",
        f"  name: {name}", "  namespace: prod", "spec:", "  encryptedData:",
        f"    token: \"{value(key, 'prod', name)}\"", ""])


def api_json(key: SealingKey) -> str:
    return json.dumps({"apiVersion": "bitnami.com/v1alpha1", "kind": "SealedSecret",
                       "metadata": {"name": "api", "namespace": "prod"},
                       "spec": {"encryptedData": {"key": value(key, "prod", "api")},
                                "template": {"type": "Opaque"}}}, indent=4) + "\n"


@dataclass
class Repo:
    remote: Path
    tree: Path
    files: dict[str, bytes]
    old: SealingKey
    new: SealingKey

    def entry(self, path: str, document: int, name: str, *items: str) -> PlannedReseal:
        return PlannedReseal(Source.GIT, SecretState.STALE, "prod", name, Scope.STRICT,
                             self.new.fingerprint,
                             tuple(ItemKey(i, self.old.fingerprint) for i in items),
                             repo="gitops", path=path, document=document)

    @property
    def db(self) -> PlannedReseal:
        return self.entry("apps/multi.yaml", 1, "db", "password", "user")

    @property
    def blocky(self) -> PlannedReseal:
        return self.entry("apps/multi.yaml", 2, "blocky", "password")

    @property
    def crlf(self) -> PlannedReseal:
        return self.entry("apps/crlf.yaml", 0, "windows", "token")

    @property
    def api(self) -> PlannedReseal:
        return self.entry("apps/api.json", 0, "api", "key")

    @property
    def current(self) -> PlannedReseal:
        return self.entry("apps/current.yaml", 0, "current", "token")

    def remote_branches(self) -> list[str]:
        return git("for-each-ref", "--format=%(refname:short)", "refs/heads/sealfleet/",
                   cwd=self.remote).split()

    def show(self, ref: str, path: str) -> bytes:
        return subprocess.run(["git", "show", f"{ref}:{path}"], cwd=self.remote, env=ENV,
                              check=True, capture_output=True).stdout


def make_repo(tmp_path: Path, old: SealingKey, new: SealingKey) -> Repo:
    files = {
        "README.md": b"# apps\n",
        "apps/multi.yaml": multi_yaml(old).encode(),
        "apps/crlf.yaml": crlf_yaml(old, "windows").encode(),
        "apps/api.json": api_json(old).encode(),
        "apps/current.yaml": crlf_yaml(new, "current").encode(),
        "apps/untouched.yaml": crlf_yaml(old, "untouched").encode(),
    }
    seed = tmp_path / "seed"
    for path, content in files.items():
        (seed / path).parent.mkdir(parents=True, exist_ok=True)
        (seed / path).write_bytes(content)
    git("init", "-q", "-b", "main", str(seed), cwd=tmp_path)
    git("add", "-A", cwd=seed)
    git("commit", "-qm", "initial", cwd=seed)
    remote = tmp_path / "remote.git"
    git("clone", "-q", "--bare", str(seed), str(remote), cwd=tmp_path)
    tree = tmp_path / "tree"
    git("clone", "-q", str(remote), str(tree), cwd=tmp_path)
    return Repo(remote, tree, files, old, new)


def settings_for(tmp_path: Path, repo: Repo, **options: Any) -> config.Settings:
    entry = {"name": "gitops", "path": str(repo.tree), "clusters": ["prod"],
             "base_branch": "main", "remote": "origin", "push": True, **options}
    if entry["remote"] is None:
        del entry["remote"]
    return config.settings_from_mapping({
        "store": {"database": str(tmp_path / "state" / "inventory.db")},
        "clusters": [{"name": "prod", "kubeconfig": "kubeconfig"}],
        "repos": [entry]}, base_dir=tmp_path, env={})


@asynccontextmanager
async def job_context(settings: config.Settings, keys: Sequence[SealingKey] = (),
                      ) -> AsyncIterator[JobContext]:
    """A JobContext as the daemon makes one at start: the store opened, the keystore
    refreshed from it (*keys* adopted first, as a key sync would)."""
    settings.store.database.parent.mkdir(exist_ok=True)
    async with Store.open(settings.store.database, kek=KeyEncryptionKey(b"k" * 32)) as store:
        keystore = Keystore(store)
        await keystore.refresh()
        if keys:
            await keystore.adopt(list(keys), source=KeySource.IMPORTED)
        yield JobContext(store=store, keystore=keystore, settings=lambda: settings)


async def new_job(ctx: JobContext, job_id: str) -> JobRecord:
    await ctx.store.jobs.create_job("reseal", {}, ["repo:gitops"], job_id=job_id)
    job = await ctx.store.jobs.get_job(job_id)
    assert job is not None
    return job


def hang_once(tmp_path: Path, subcommand: str, marker: Path, *, after: int = 0) -> str:
    """A ``git`` on PATH that, the first time sealfleet (its hermetic ``-c`` flags) runs
    *subcommand* (``push``, ``worktree remove``...) after *after* such runs, leaves
    *marker* and hangs until killed: the daemon dying at that point.  Returns the PATH
    to use."""
    real = subprocess.run(["sh", "-c", "command -v git"], capture_output=True, check=True,
                          text=True).stdout.strip()
    words = subcommand.split()
    shim = tmp_path / "shim" / "git"
    shim.parent.mkdir(exist_ok=True)
    counter = tmp_path / "shim" / "runs"
    counter.write_text("")
    second = words[1] if len(words) > 1 else ""
    shim.write_text(f"""#!/bin/sh
hermetic=0; sub=""; next=""; skip=0
for arg in "$@"; do
  if [ "$skip" = 1 ]; then
    skip=0; [ "$arg" = "core.hooksPath=/dev/null" ] && hermetic=1; continue
  fi
  if [ -n "$sub" ]; then next="$arg"; break; fi
  case "$arg" in -c) skip=1 ;; -*) ;; *) sub="$arg" ;; esac
done
if [ "$hermetic" = 1 ] && [ "$sub" = "{words[0]}" ] && [ "{second}" = "$next" -o -z "{second}" ] \
   && [ ! -e "{marker}" ]; then
  if [ "$(wc -l < "{counter}")" -ge {after} ]; then
    : > "{marker}"
    exec sleep 3600
  fi
  echo run >> "{counter}"
fi
exec "{real}" "$@"
""")
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return f"{shim.parent}{os.pathsep}{os.environ['PATH']}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
