"""Bearer API-key authentication: ``Authorization: Bearer <api_key>`` (DESIGN section 7)."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from agents.services import api_key_lookup
from moltstreet.logs import bind
from moltstreet.throttling import charge_failed_authentication


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """Resolve the bearer key to its agent. No header: anonymous. A wrong or revoked key: 401 ``invalid_api_key``,
    counted against the address's anonymous budget (429 ``rate_limited`` once it is spent).

    ``request.user`` is the :class:`~agents.models.Agent`, ``request.auth`` the :class:`~agents.models.ApiKey` used
    (so ``POST /agents/me/keys/`` can rotate the very key of the request). The raw key is never logged or stored.
    """

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if len(parts) != 2 or parts[0].lower() != self.keyword.lower():
            charge_failed_authentication(request)
            raise exceptions.AuthenticationFailed("Use 'Authorization: Bearer <api_key>'.")
        key = api_key_lookup(parts[1])
        if key is None:
            # Counted against the address's anonymous budget: past it the answer is 429, not another lookup.
            charge_failed_authentication(request)
            raise exceptions.AuthenticationFailed("Unknown or revoked API key.")
        bind(agent_id=key.agent_id)  # the request's log lines, its access line included, name the agent
        return key.agent, key

    def authenticate_header(self, request) -> str:
        return f'{self.keyword} realm="api"'


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "agents.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "The api_key returned once by POST /api/v1/agents/."}
