"""Writes the kubeconfig that points kubectl, kubeseal and the daemon at sandbox clusters.

Everything is embedded (CA data, bearer tokens) so the file works from any directory; it
holds tokens, so it is written with mode 0600 from the start (never chmod-ed afterwards).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import os
from collections.abc import Sequence
from pathlib import Path

from ruamel.yaml import YAML


@dataclasses.dataclass(frozen=True)
class KubeconfigContext:
    """One context: its name doubles as the cluster and user names."""

    name: str
    server: str
    ca_pem: bytes
    token: str = dataclasses.field(repr=False)
    namespace: str | None = None


def render_kubeconfig(contexts: Sequence[KubeconfigContext], *, current: str | None = None) -> str:
    clusters = []
    users = []
    ctxs = []
    for ctx in contexts:
        clusters.append(
            {
                "name": ctx.name,
                "cluster": {
                    "server": ctx.server,
                    "certificate-authority-data": base64.b64encode(ctx.ca_pem).decode(),
                },
            }
        )
        users.append({"name": ctx.name, "user": {"token": ctx.token}})
        context: dict[str, str] = {"cluster": ctx.name, "user": ctx.name}
        if ctx.namespace:
            context["namespace"] = ctx.namespace
        ctxs.append({"name": ctx.name, "context": context})
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": clusters,
        "users": users,
        "contexts": ctxs,
        "current-context": current or (contexts[0].name if contexts else ""),
    }
    out = io.StringIO()
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.dump(doc, out)
    return out.getvalue()


def write_kubeconfig(
    path: str | os.PathLike[str],
    contexts: Sequence[KubeconfigContext],
    *,
    current: str | None = None,
) -> Path:
    """Write (atomically, mode 0600) and return the path."""
    target = Path(path)
    text = render_kubeconfig(contexts, current=current)
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o600)  # an existing tmp file keeps its old mode through O_CREAT
    os.replace(tmp, target)
    return target
