"""Every setting, read once from the environment into one typed object.

The README's configuration table lists them all; keep the two in step.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Role(StrEnum):
    ALL = "all"
    API = "api"
    RELAY = "relay"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    shop_data_dir: Path = Field(
        Path("./var"), description="Where the SQLite write store and embedded FerretDB keep files."
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the write store; default SQLite in the data dir."
    )
    mongodb_url: str | None = Field(
        None, description="MongoDB URL of the read store; unset starts an embedded FerretDB."
    )
    mongodb_database: str = Field("shop", description="Database name in the read store.")
    shop_migrate_on_start: bool = Field(
        True,
        description="Migrate the write store to this release's schema at start; false: "
        "refuse to start unless it is there (run `cqrs-shop migrate` first).",
    )
    shop_consistency_timeout: float = Field(
        5.0, gt=0, description="Seconds a minVersion read waits before NOT_YET_CONSISTENT."
    )
    shop_relay_batch_size: int = Field(500, ge=1, description="Events the relay reads at once.")
    shop_relay_poll_interval: float = Field(
        0.5, gt=0, description="Seconds between outbox polls when no commit woke the relay."
    )
    shop_relay_lease_ttl: float = Field(
        2.0,
        ge=0.5,
        description="Seconds a relay's lease lasts unrenewed: a standby relay takes over "
        "within about 1.25 times this after the leader dies.",
    )
    shop_shutdown_grace: float = Field(
        10.0,
        gt=0,
        description="Seconds from SIGTERM to exit, whatever the stores do: requests in "
        "flight get half of it, background work most of the rest.",
    )
    shop_read_store_timeout: float = Field(
        5.0,
        gt=0,
        description="Seconds a read-store operation waits for an unreachable server "
        "before it fails (UNAVAILABLE).",
    )
    shop_max_page_size: int = Field(100, ge=1, description="Largest `first` a list query takes.")
    shop_idempotency_key_days: float = Field(
        7.0,
        ge=0,
        description="Days an idempotency key (and its stored answer) is kept; a retry "
        "after that runs its command again. 0 keeps them forever.",
    )
    shop_read_cache_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Memory for read-model documents and query results kept in each "
        "process, kept exact by the relay's change keys (LRU beyond it); 0 turns it off.",
    )
    shop_otlp_endpoint: str | None = Field(
        None,
        description="OpenTelemetry collector to send traces to over OTLP/HTTP, e.g. "
        "http://127.0.0.1:4318; unset: no tracing. OTEL_* variables tune the SDK.",
    )
    shop_service_name: str = Field("cqrs-shop", description="service.name of the traces.")
    # Identity (app.auth) and who may do what (schema.policy).
    shop_auth_jwks_url: str | None = Field(
        None, description="Production: the OIDC provider's JWKS URL (RS256/ES256 tokens)."
    )
    shop_auth_issuer: str | None = Field(None, description="Required `iss` of tokens, if set.")
    shop_auth_audience: str | None = Field(None, description="Required `aud` of tokens, if set.")
    shop_auth_secret: SecretStr | None = Field(
        None,
        description="HS256 secret (development, scripts); unset and no JWKS URL: "
        "a random one is created in the data dir.",
    )
    shop_auth_algorithms: Annotated[list[str], NoDecode] = Field(
        ["RS256", "ES256"], description="Algorithms accepted with the JWKS keys (comma-separated)."
    )
    shop_auth_roles_claim: str = Field(
        "roles", description="Claim holding the roles; dotted for nested (realm_access.roles)."
    )
    shop_auth_leeway: float = Field(
        0.0, ge=0, description="Seconds of clock skew allowed on `exp`."
    )
    shop_cors_origins: Annotated[list[str], NoDecode] = Field(
        [],
        description="Browser origins allowed to call the API (comma-separated); none by default.",
    )
    # Abuse limits: each refuses before execution, naming itself in the error.
    shop_max_body_bytes: int = Field(
        262_144, ge=1024, description="Largest HTTP request body; larger ones answer 413."
    )
    shop_max_tokens: int = Field(2000, ge=10, description="Most lexical tokens in a document.")
    shop_max_depth: int = Field(12, ge=2, description="Deepest nesting of fields.")
    shop_max_aliases: int = Field(30, ge=0, description="Most aliases in a document.")
    shop_max_cost: int = Field(
        5000,
        ge=10,
        description="Largest query cost: every field 1, times the page sizes "
        "(first, limit) above it; repeated fields cost more.",
    )
    shop_max_document_length: int = Field(
        65_536,
        ge=1024,
        description="Longest GraphQL document, in characters, comments included.",
    )
    shop_document_cache_bytes: int = Field(
        16 * 1024 * 1024,
        ge=0,
        description="Memory for parsed and validated GraphQL documents (their text "
        "included), least recently used out beyond it.",
    )
    # Per client address, for callers without a valid token (schema.throttle).
    shop_anonymous_signups_per_minute: float = Field(
        30.0, ge=0, description="registerCustomer calls an anonymous address may make a minute."
    )
    shop_anonymous_signup_burst: int = Field(
        10, ge=1, description="registerCustomer calls an anonymous address may make at once."
    )
    shop_anonymous_waits_per_client: int = Field(
        100,
        ge=1,
        description="minVersion waits an anonymous address may hold open at once; more "
        "answer LIMIT_EXCEEDED at once.",
    )
    shop_max_subscriptions_per_connection: int = Field(
        50, ge=1, description="Operations one WebSocket may run at once."
    )
    shop_max_ws_message_bytes: int = Field(
        65_536, ge=1024, description="Largest WebSocket message a client may send."
    )
    shop_max_sockets: int = Field(
        10_000, ge=1, description="Open WebSockets per process; more are closed with 1013."
    )
    # HTTP limits in front of the app (app.http), enforced before a request reaches it.
    shop_max_header_bytes: int = Field(
        16_384,
        ge=1024,
        description="Largest request line plus headers; larger are answered 431 and the "
        "connection is closed.",
    )
    shop_http_header_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a connection has to send a request's headers, from its opening "
        "or from the end of the previous response; then it is closed (408 if part came).",
    )
    shop_http_keep_alive: int = Field(
        5, ge=1, description="Seconds an idle kept-alive connection waits for its next request."
    )
    shop_max_connections: int = Field(
        11_000,
        ge=1,
        description="Open connections per process, WebSockets included; more are answered "
        "503 and closed.",
    )
    shop_http_body_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a request's body may take to arrive once its headers have; "
        "then the connection is closed (408).",
    )
    shop_forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        [],
        description="Addresses of the reverse proxies whose X-Forwarded-For is the client's "
        "address (comma-separated; `*` any); none by default: the peer is the client.",
    )
    shop_metrics_port: int | None = Field(
        None,
        ge=1,
        le=65_535,
        description="Serve /metrics only on this port (same host); unset: on the main port.",
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: str = Field("console", description="console (human) or json.")
    xdg_cache_home: Path = Field(
        Path.home() / ".cache", description="Cache root; the FerretDB binary goes under it."
    )

    @field_validator(
        "shop_auth_algorithms", "shop_cors_origins", "shop_forwarded_allow_ips", mode="before"
    )
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def write_store_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.shop_data_dir / 'write.db').resolve()}"

    @property
    def cache_dir(self) -> Path:
        return self.xdg_cache_home / "cqrs-shop"
