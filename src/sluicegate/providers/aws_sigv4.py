"""AWS Signature Version 4 for Bedrock requests, with botocore's own signer and credential chain.

botocore is an optional extra (`sluicegate[bedrock]`) and is imported on first use. Credentials are resolved
once per process through botocore's standard chain (environment, shared files, SSO, container/instance roles);
refreshable credentials refresh themselves when signing. The first resolution may block briefly (files, and the
instance metadata service on EC2); it happens on the first Bedrock request only.
"""

from __future__ import annotations

import os
import re
from typing import Any

from sluicegate.types import GatewayError

_REGION_IN_HOST = re.compile(r"bedrock-runtime(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com")


def _config_error(message: str) -> GatewayError:
    return GatewayError(500, message, type="server_error", code="provider_config_error")


class SigV4Signer:
    def __init__(self, service: str = "bedrock") -> None:
        self._service = service
        self._credentials: Any = None

    def _botocore(self) -> tuple[Any, Any, Any]:
        try:
            from botocore.auth import SigV4Auth
            from botocore.awsrequest import AWSRequest
            from botocore.session import Session
        except ImportError:
            raise _config_error("Provider bedrock needs botocore: install sluicegate[bedrock].") from None
        return SigV4Auth, AWSRequest, Session

    def sign(self, url: str, headers: dict[str, str], body: bytes, region: str) -> dict[str, str]:
        """`headers` plus Authorization, X-Amz-Date (and X-Amz-Security-Token for temporary credentials)."""
        sigv4_auth, aws_request, session = self._botocore()
        if self._credentials is None:
            try:
                credentials = session().get_credentials()
            except Exception as exc:  # botocore's own errors (a missing profile, a bad config file)
                raise _config_error(f"Could not load AWS credentials for provider bedrock: {exc}") from None
            if credentials is None:
                raise _config_error("No AWS credentials found for provider bedrock (set AWS_ACCESS_KEY_ID and "
                                    "AWS_SECRET_ACCESS_KEY, a profile, or an instance role).")
            self._credentials = credentials
        request = aws_request(method="POST", url=url, data=body, headers=headers)
        sigv4_auth(self._credentials, self._service, region).add_auth(request)
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
