"""The API key of a served app: read where the app is built (the driver of `rayft serve`, or the head of a
RayService), and only its SHA-256 goes into the app, so neither Serve's config nor its logs hold the key.

Used by rayft.serve (the CLI side) and rayft.serve_app (the Ray Serve app, whose middleware compares a
request's key by its SHA-256); it imports neither.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from rayft_core.errors import UserInputError
from rayft_core.serve_config import AuthConfig

# The messages of `rayft serve`, under the logger name they had before these helpers left rayft.serve.
logger = logging.getLogger("rayft.serve")


def api_key_sha256(auth: AuthConfig) -> str | None:
    """The SHA-256 of the API key (None when auth is off). Read where the app is built: the driver of
    `rayft serve`, or the head of a RayService (its Secret mounted as a file or an env var)."""
    key = ""
    if auth.api_key_file:
        try:
            key = Path(auth.api_key_file).read_text().strip()
        except OSError as e:
            raise UserInputError(f"auth.api_key_file: cannot read {auth.api_key_file} ({e.strerror})") from None
        if not key:
            raise UserInputError(f"auth.api_key_file: {auth.api_key_file} is empty")
    else:
        key = os.environ.get(auth.api_key_env, "").strip()
    if not key:
        if auth.required:
            raise UserInputError(
                f"no API key: set the environment variable {auth.api_key_env} (or auth.api_key_file) to the key "
                "clients will send as 'Authorization: Bearer <key>'; auth.required: false serves without one"
            )
        logger.warning("serving without an API key (auth.required: false): anyone who reaches the port can use it")
        return None
    return sha256(key)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
