"""TLS and bearer-token settings shared by every server and client."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


class KeepaliveConfig(BaseModel):
    """HTTP/2 keepalive: a dead peer is noticed within time + timeout."""

    model_config = ConfigDict(extra="forbid")

    time_s: float = Field(30.0, gt=0, description="ping an idle connection this often")
    timeout_s: float = Field(10.0, gt=0, description="drop the connection if a ping is not answered in time")


class SecurityConfig(BaseModel):
    """Optional TLS and bearer token.

    Servers use `tls_cert` + `tls_key` (and `tls_client_ca` to require client
    certificates); clients use `tls_ca` to verify the server (and `tls_cert` +
    `tls_key` for mutual TLS). The token may be given inline or as a file.
    """

    model_config = ConfigDict(extra="forbid")

    token: str | None = None
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tls_ca: Path | None = None
    tls_server_name: str | None = Field(
        None, description="override the name checked in the server certificate"
    )

    @model_validator(mode="after")
    def _check(self) -> SecurityConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.token is not None and self.token_file is not None:
            raise ValueError("give token or token_file, not both")
        for name in ("token_file", "tls_cert", "tls_key", "tls_client_ca", "tls_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: no such file: {path}")
        return self

    def resolved_token(self) -> str | None:
        if self.token_file is not None:
            token = Path(self.token_file).read_text().strip()
            if not token:
                raise ValueError(f"token_file {self.token_file} is empty")
            return token
        return self.token or None

    @property
    def server_tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def client_tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None


def read_bytes(path: Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()
