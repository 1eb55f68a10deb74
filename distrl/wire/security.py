"""TLS and bearer-token settings shared by every server and client."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

REDACTED = "<redacted>"


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

    Without `role_tokens_dir` the token is shared: servers accept it for every call and
    clients send it. With `role_tokens_dir` (see `distrl.wire.roles`) servers accept one
    token per role, each for its role's calls only, and `token` / `token_file` is only
    what this process sends as a client.
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
    role_tokens_dir: Path | None = Field(
        None, description="server: per-role tokens, files admin, learner, actor, reader"
    )

    @model_validator(mode="after")
    def _check(self) -> SecurityConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.token is not None and self.token_file is not None:
            raise ValueError("give token or token_file, not both")
        if self.token is not None and not self.token.strip():
            raise ValueError("token is empty: give a token, or leave it out to turn auth off")
        if self.role_tokens_dir is not None and not Path(self.role_tokens_dir).is_dir():
            raise ValueError(f"role_tokens_dir: no such directory: {self.role_tokens_dir}")
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
        return self.token.strip() if self.token else None

    def redacted(self) -> dict:
        """These settings as a dict fit to write down: an inline token becomes `<redacted>`."""
        out = self.model_dump(mode="json", exclude_none=True)
        if "token" in out:
            out["token"] = REDACTED
        return out

    @property
    def server_tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def client_tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None


def write_private(path: Path, text: str | bytes) -> None:
    """Write a secret readable by its owner only (mode 0600, also when the file exists)."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)


def read_bytes(path: Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()
