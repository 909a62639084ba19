"""Bearer-token check: with a token configured, a request without it, or with another one, gets a 401.

The comparison takes the same time however much of the token matches (``hmac.compare_digest``), so the token
cannot be guessed byte by byte from response times.
"""

from __future__ import annotations

import hmac
from typing import NoReturn

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

# auto_error=False: a missing header is our 401 (with WWW-Authenticate), not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="the API token (CFPO_API_TOKEN of the server)")


def token_checker(token: SecretStr | None):
    """A dependency that lets every request through without a token configured, else only the right bearer."""
    expected = None if token is None else token.get_secret_value().encode()

    def check(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        if expected is None:
            return
        if credentials is None:
            _refuse("missing bearer token: send 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(credentials.credentials.encode(), expected):
            _refuse("wrong bearer token")

    return check


def _refuse(detail: str) -> NoReturn:
    raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})
