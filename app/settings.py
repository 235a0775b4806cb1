"""Every setting, read once from the environment into one typed object.

The README's configuration table lists them all; keep the two in step.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    shop_consistency_timeout: float = Field(
        5.0, gt=0, description="Seconds a minVersion read waits before NOT_YET_CONSISTENT."
    )
    shop_relay_batch_size: int = Field(500, ge=1, description="Events the relay reads at once.")
    shop_relay_poll_interval: float = Field(
        0.5, gt=0, description="Seconds between outbox polls when no commit woke the relay."
    )
    shop_max_page_size: int = Field(100, ge=1, description="Largest `first` a list query takes.")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: str = Field("console", description="console (human) or json.")
    xdg_cache_home: Path = Field(
        Path.home() / ".cache", description="Cache root; the FerretDB binary goes under it."
    )

    @property
    def write_store_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.shop_data_dir / 'write.db').resolve()}"

    @property
    def cache_dir(self) -> Path:
        return self.xdg_cache_home / "cqrs-shop"
