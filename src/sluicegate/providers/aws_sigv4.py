"""AWS Signature Version 4 for Bedrock requests, with botocore's own signer and credential chain.

botocore is an optional extra (`sluicegate[bedrock]`) and is imported on first use. Credentials come from
botocore's standard chain (environment, shared files, SSO, container and instance roles). Looking them up can
block for seconds (files, the container or instance metadata endpoints with their retries, an STS or SSO call),
so it never runs on the event loop: `ready()` does it in a worker thread, one lookup at a time for every request
waiting on it. Requests are signed with a frozen copy of the credentials; the copy is renewed from the chain
(which refreshes expiring credentials itself) in the background every `CHECK_EVERY` seconds, so requests never
wait for a refresh. A failed lookup is remembered for `RETRY_AFTER` seconds: a broken chain is not asked again
by every request.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from typing import Any

from sluicegate.types import GatewayError

_REGION_IN_HOST = re.compile(r"bedrock-runtime(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com")

CHECK_EVERY = 60.0  # refreshable credentials are renewed by botocore 10-15 minutes before they expire
RETRY_AFTER = 5.0


def _config_error(message: str) -> GatewayError:
    return GatewayError(500, message, type="server_error", code="provider_config_error")


class SigV4Signer:
    def __init__(self, service: str = "bedrock", clock: Callable[[], float] = time.monotonic) -> None:
        self._service = service
        self._clock = clock
        self._chain: Any = None  # botocore Credentials, possibly refreshable
        self._frozen: Any = None  # the ReadOnlyCredentials requests are signed with
        self._frozen_at = 0.0
        self._failure: str | None = None  # the message of the last failed lookup
        self._failed_at = 0.0
        self._lookup: asyncio.Future[None] | None = None

    def _botocore(self) -> tuple[Any, Any, Any]:
        try:
            from botocore.auth import SigV4Auth
            from botocore.awsrequest import AWSRequest
            from botocore.session import Session
        except ImportError:
            raise _config_error("Provider bedrock needs botocore: install sluicegate[bedrock].") from None
        return SigV4Auth, AWSRequest, Session

    async def ready(self) -> None:
        """Make sure there are credentials to sign with, without blocking the event loop. Raises GatewayError
        (500, provider_config_error) when there are none."""
        now = self._clock()
        if self._frozen is not None:
            if now - self._frozen_at >= CHECK_EVERY and now - self._failed_at >= RETRY_AFTER:
                self._start_lookup()  # renew in the background; this request signs with the current copy
            return
        if self._failure is not None and now - self._failed_at < RETRY_AFTER:
            raise _config_error(self._failure)  # a new exception per request: no traceback chained onto another
        lookup = self._start_lookup()
        await asyncio.shield(lookup)  # a request that is cancelled must not cancel the others' lookup
        if self._frozen is None:
            raise _config_error(self._failure or "No AWS credentials for provider bedrock.")

    def _start_lookup(self) -> asyncio.Future[None]:
        if self._lookup is None:
            self._lookup = asyncio.ensure_future(self._look_up())
        return self._lookup

    async def _look_up(self) -> None:
        try:
            frozen = await asyncio.to_thread(self._frozen_from_chain)
        except GatewayError as exc:
            self._failure, self._failed_at = exc.message, self._clock()  # a copy that still signs is kept meanwhile
        else:
            self._frozen, self._frozen_at, self._failure = frozen, self._clock(), None
        finally:
            self._lookup = None

    def _frozen_from_chain(self) -> Any:
        """In a worker thread: the chain's current credentials (botocore refreshes expiring ones here)."""
        _, _, session = self._botocore()
        try:
            if self._chain is None:
                self._chain = session().get_credentials()
            if self._chain is None:
                raise _config_error("No AWS credentials found for provider bedrock (set AWS_ACCESS_KEY_ID and "
                                    "AWS_SECRET_ACCESS_KEY, a profile, or an instance role).")
            return self._chain.get_frozen_credentials()
        except GatewayError:
            raise
        except Exception as exc:  # botocore's own errors (a missing profile, a bad config file, an endpoint down)
            raise _config_error(f"Could not load AWS credentials for provider bedrock: {exc}") from None

    def sign(self, url: str, headers: dict[str, str], body: bytes, region: str) -> dict[str, str]:
        """`headers` plus Authorization, X-Amz-Date (and X-Amz-Security-Token for temporary credentials).
        On the event loop, await `ready()` first; without it the credentials are looked up here, blocking."""
        sigv4_auth, aws_request, _ = self._botocore()
        if self._frozen is None:
            self._frozen, self._frozen_at = self._frozen_from_chain(), self._clock()
        request = aws_request(method="POST", url=url, data=body, headers=headers)
        sigv4_auth(self._frozen, self._service, region).add_auth(request)
        return {str(name): str(value) for name, value in request.headers.items()}


def bedrock_region(configured: str | None, api_base: str) -> str:
    """The deployment's region, else the one in a bedrock-runtime host name, else AWS_REGION/AWS_DEFAULT_REGION."""
    if configured:
        return configured
    match = _REGION_IN_HOST.search(api_base)
    if match:
        return match.group(1)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        return region
    raise _config_error("Provider bedrock needs a region: set `region` on the deployment, or AWS_REGION.")
