"""Tenants and API keys: keys are `sq_<id>_<secret>`, stored as HMAC-SHA256 of the secret."""

import hashlib
import hmac
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from jobs.errors import AuthError, SpecError
from storage.repos import ApiKeyRepo, TenantRepo
from storage.tables import ApiKeyRow, TenantRow

KEY_PATTERN = re.compile(r"^sq_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
SESSION_PATTERN = re.compile(r"^([0-9a-f]{16})\.([0-9]{1,12})\.([0-9a-f]{64})$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant the key belongs to, and the key's id (the actor)."""

    tenant_id: str
    tenant_name: str
    key_id: str


@dataclass(frozen=True)
class NewKey:
    tenant: str
    key_id: str
    secret: str  # the full key, shown once and never stored


class KeyStore:
    def __init__(self, sessions: sessionmaker[Session], hash_key: bytes) -> None:
        self.sessions = sessions
        self.hash_key = hash_key

    def create(self, tenant: str, name: str = "default") -> NewKey:
        """Create `tenant` if needed and a new key for it."""
        if not TENANT_PATTERN.fullmatch(tenant):
            raise SpecError("tenant names are 1-64 characters of a-z, 0-9, '_' and '-'")
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        with self.sessions.begin() as session:
            row = self._tenant(session, tenant)
            ApiKeyRepo(session).add(
                ApiKeyRow(id=key_id, tenant_id=row.id, name=name, secret_hash=self._hash(secret))
            )
        return NewKey(tenant=tenant, key_id=key_id, secret=f"sq_{key_id}_{secret}")

    def authenticate(self, token: str) -> Principal:
        match = KEY_PATTERN.fullmatch(token)
        if match is None:
            raise AuthError("malformed API key")
        key_id, secret = match.groups()
        with self.sessions() as session:
            row = ApiKeyRepo(session).find(key_id)
            tenant = session.get(TenantRow, row.tenant_id) if row else None
        valid = row is not None and hmac.compare_digest(row.secret_hash, self._hash(secret))
        if not valid or row is None or tenant is None:
            raise AuthError("unknown API key")
        if row.revoked_at is not None:
            raise AuthError("revoked API key")
        return Principal(tenant_id=tenant.id, tenant_name=tenant.name, key_id=key_id)

    def acting_as(self, admin: Principal, tenant: str) -> Principal:
        """`admin` looking at `tenant`'s resources (the dashboard's tenant filter, for admin
        tenants only: the caller checks that). Unknown tenant: AuthError."""
        if not TENANT_PATTERN.fullmatch(tenant):
            raise AuthError("no such tenant")  # not even a tenant name: not repeated
        with self.sessions() as session:
            row = TenantRepo(session).find_by_name(tenant)
        if row is None:
            raise AuthError(f"no tenant named '{tenant}'")
        return Principal(tenant_id=row.id, tenant_name=row.name, key_id=admin.key_id)

    def session_token(self, who: Principal, ttl_s: int, now: float | None = None) -> str:
        """A browser session for `who`'s key: `<key id>.<expiry>.<HMAC>`, so the key itself
        never sits in a cookie. It dies with the key (checked at every use)."""
        expires = int((now if now is not None else time.time()) + ttl_s)
        return f"{who.key_id}.{expires}.{self._session_mac(who.key_id, expires)}"

    def from_session(self, token: str, now: float | None = None) -> Principal:
        match = SESSION_PATTERN.fullmatch(token)
        if match is None:
            raise AuthError("malformed session")
        key_id, expires = match.group(1), int(match.group(2))
        if not hmac.compare_digest(match.group(3), self._session_mac(key_id, expires)):
            raise AuthError("invalid session")
        if expires < (now if now is not None else time.time()):
            raise AuthError("session expired: sign in again")
        with self.sessions() as session:
            row = ApiKeyRepo(session).find(key_id)
            tenant = session.get(TenantRow, row.tenant_id) if row else None
        if row is None or tenant is None or row.revoked_at is not None:
            raise AuthError("the session's API key is revoked")
        return Principal(tenant_id=tenant.id, tenant_name=tenant.name, key_id=key_id)

    def _session_mac(self, key_id: str, expires: int) -> str:
        message = f"session:{key_id}:{expires}".encode()
        return hmac.new(self.hash_key, message, hashlib.sha256).hexdigest()

    def revoke(self, key_id: str) -> bool:
        with self.sessions.begin() as session:
            row = ApiKeyRepo(session).find(key_id)
            if row is None or row.revoked_at is not None:
                return False
            row.revoked_at = datetime.now(UTC)
            return True

    def _tenant(self, session: Session, name: str) -> TenantRow:
        repo = TenantRepo(session)
        row = repo.find_by_name(name)
        if row is None:
            row = TenantRow(id=str(uuid.uuid4()), name=name)
            repo.add(row)
            session.flush()
        return row

    def _hash(self, secret: str) -> str:
        return hmac.new(self.hash_key, secret.encode(), hashlib.sha256).hexdigest()
