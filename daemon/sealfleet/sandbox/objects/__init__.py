"""In-memory object storage for one emulated cluster: what etcd plus the registry give a real one.

The emulated apiserver and the emulated sealed-secrets controller both read and write
through one :class:`ObjectStore` per cluster, so they see the same objects, the same
resourceVersion sequence and the same watch events, exactly as the real controller and a
real client do through a real apiserver.

Why objects are kept as JSON bytes rather than dicts: a sandbox holds up to 100k objects
for 20 clusters and must serve a 5,000-item list in pages quickly.  Keeping the serialized
form (plus a tiny index of labels and selectable fields) costs about one copy of each
object, lets list pages be built by joining bytes, and makes every ``get`` a fresh,
independent copy for free (``json.loads``).

Semantics copied from the real kube-apiserver registry (facts, not code):
- one monotonically increasing resourceVersion per cluster, as etcd's revision;
- ``uid``, ``creationTimestamp``, ``generation`` are system-managed; generation exists
  only for kinds that have it (Deployments, Pods, CRDs and custom resources; not Secrets,
  Namespaces, Services, Events or Leases) and is bumped on spec changes only (custom
  resources: any change outside metadata and status; Deployments: also annotations);
- ``generateName`` appends 5 characters from apimachinery's vowel-less alphabet;
- an update carrying a stale resourceVersion is a 409 Conflict, a no-op update does not
  bump the resourceVersion and emits no event;
- with a status subresource, the main resource ignores ``.status`` and ``/status``
  changes only ``.status``;
- deleting an owner deletes its dependents (ownerReferences by uid), as the garbage
  collector does in the background, unless the propagation policy is ``Orphan``;
- watch history is bounded; asking for an older resourceVersion is 410 Gone.

Besides the verbs, :meth:`ObjectStore.load` stores a batch of complete objects the way
an etcd restore would (the seeding path: fresh uids and resourceVersions, status kept,
no validation, ``ADDED`` events as for creates).
"""

from sealfleet.sandbox.objects.entries import (
    Entry,
    Obj,
    WatchEvent,
    WatchStream,
    dump,
    now_rfc3339,
)
from sealfleet.sandbox.objects.errors import (
    ApiError,
    Causes,
    already_exists,
    bad_request,
    conflict,
    gone,
    invalid,
    method_not_allowed,
    not_found,
    too_old,
)
from sealfleet.sandbox.objects.registry import SECRET_MAX_BYTES
from sealfleet.sandbox.objects.resources import RESOURCE_TYPES, ResourceType, resource_type
from sealfleet.sandbox.objects.store import (
    BOOTSTRAP_NAMESPACES,
    DEFAULT_HISTORY,
    GENERATE_NAME_ALPHABET,
    Listener,
    ObjectStore,
)

__all__ = [
    "BOOTSTRAP_NAMESPACES",
    "DEFAULT_HISTORY",
    "GENERATE_NAME_ALPHABET",
    "RESOURCE_TYPES",
    "SECRET_MAX_BYTES",
    "ApiError",
    "Causes",
    "Entry",
    "Listener",
    "Obj",
    "ObjectStore",
    "ResourceType",
    "WatchEvent",
    "WatchStream",
    "already_exists",
    "bad_request",
    "conflict",
    "dump",
    "gone",
    "invalid",
    "method_not_allowed",
    "not_found",
    "now_rfc3339",
    "resource_type",
    "too_old",
]
