"""Bearer-token authentication and a two-user RBAC, enough to test least privilege.

Two users per cluster: an admin that may do everything, and a restricted service account
that may do everything except touch Secrets in the controller namespace (where the
sealing keys live) or list/watch Secrets across all namespaces.  Messages and details
follow the real authorizer's wording, so clients can be tested on real-looking 403s.
"""

from __future__ import annotations

import dataclasses
import hmac
import secrets

from sealfleet.sandbox.objects import ApiError

ADMIN_USER = "sandbox-admin"
RESTRICTED_USER = "system:serviceaccount:sealfleet:sealfleet-restricted"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


@dataclasses.dataclass(frozen=True)
class Tokens:
    admin: str = dataclasses.field(default_factory=new_token, repr=False)
    restricted: str = dataclasses.field(default_factory=new_token, repr=False)

    def user_for(self, authorization: str | None) -> str:
        """The user a request's Authorization header authenticates, or 401."""
        if not authorization or not authorization.startswith("Bearer "):
            raise unauthorized()
        token = authorization[len("Bearer ") :].strip()
        if hmac.compare_digest(token, self.admin):
            return ADMIN_USER
        if hmac.compare_digest(token, self.restricted):
            return RESTRICTED_USER
        raise unauthorized()


def authorize(
    user: str,
    *,
    verb: str,
    resource: str,
    group: str,
    namespace: str | None,
    name: str | None,
    protected_namespace: str,
) -> None:
    """Raise 403 Forbidden when ``user`` may not do ``verb`` on the resource."""
    if user == ADMIN_USER:
        return
    if resource == "secrets" and group == "" and namespace in (protected_namespace, None):
        where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        subject = f'secrets "{name}"' if name else "secrets"
        details: dict[str, str] = {"kind": "secrets"}
        if name:
            details["name"] = name
        raise ApiError(
            403,
            "Forbidden",
            f'{subject} is forbidden: User "{user}" cannot {verb} resource "secrets" '
            f'in API group "" {where}',
            details=details,
        )


def forbid_path(user: str, path: str, verb: str = "get") -> None:
    if user != ADMIN_USER:
        raise ApiError(
            403,
            "Forbidden",
            f'forbidden: User "{user}" cannot {verb} path "{path}"',
            details={},
        )
