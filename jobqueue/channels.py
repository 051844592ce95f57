"""How every client process reaches the operator: TLS that verifies it, and a bearer token.

The Python client, ``jqctl`` and the worker all open their channel here, so they agree on
one rule: TLS unless plaintext is asked for by name (``insecure_plaintext``), verifying
the server against a CA file or the system's roots, under the host dialled or an
explicit ``server_name``. The token goes in ``authorization: Bearer <token>`` metadata,
fetched from its ``TokenSource`` on every call, so it works the same over TLS and over a
plaintext development channel (gRPC's call credentials refuse plaintext channels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from jobqueue.credentials import TokenSource
from jobqueue.errors import ConfigError

ChannelOptions = Sequence[tuple[str, Any]]


@dataclass(frozen=True)
class ChannelSecurity:
    """How a client protects its channel and proves who it is."""

    # Speak plaintext; only for an operator started with operator.tls.insecure_plaintext.
    insecure_plaintext: bool = False
    # CA bundle that verifies the operator; None uses the system's roots.
    ca_file: Path | None = None
    # The name the operator's certificate must carry, if not the host dialled.
    server_name: str | None = None
    # Where the bearer token comes from; None sends none.
    token: TokenSource | None = None

    def __post_init__(self) -> None:
        if self.insecure_plaintext and (self.ca_file or self.server_name):
            raise ConfigError(
                "plaintext was asked for together with TLS settings (a CA file or a server "
                "name); choose one"
            )


def bearer_metadata(security: ChannelSecurity) -> tuple[tuple[str, str], ...]:
    """The metadata that carries the caller's token now; empty without one."""
    token = security.token.token() if security.token is not None else None
    return (("authorization", f"Bearer {token}"),) if token else ()


def channel_credentials(security: ChannelSecurity) -> grpc.ChannelCredentials:
    """TLS credentials that verify the server with ``ca_file`` or the system's roots."""
    if security.ca_file is None:
        return grpc.ssl_channel_credentials()
    try:
        roots = security.ca_file.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read the CA file {security.ca_file}: {error}") from error
    return grpc.ssl_channel_credentials(root_certificates=roots)


# Keepalive pings for the clients' channels (``keepalive_options``). While a call is open
# on a quiet connection (the AsyncClient's long-lived SubmitStream, a Watch), the client
# pings every KEEPALIVE_TIME_MS; no answer within KEEPALIVE_TIMEOUT_MS ends the connection,
# and its calls fail UNAVAILABLE. Without them, a connection that died silently (a NAT or
# load balancer dropping an idle flow) shows only as calls on it timing out, one after
# another, until the kernel gives up on it, about 15 minutes later. The operator's server
# must accept pings this often (operator.app.MIN_PING_INTERVAL_MS), or it ends the
# connection with GOAWAY. Workers need none: their heartbeats fail on a dead connection.
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000


def keepalive_options() -> list[tuple[str, int]]:
    """Channel arguments for keepalive pings while calls are open (see above)."""
    return [
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # Recent gRPC times a ping's answer by this one (default a minute), not the above.
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # Go on pinging however long the open calls stay quiet (gRPC stops after two, and
        # by default leaves five minutes between pings sent with no data between them).
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_time_between_pings_ms", KEEPALIVE_TIME_MS),
    ]


def _options(security: ChannelSecurity, options: ChannelOptions) -> list[tuple[str, Any]]:
    merged = list(options)
    if security.server_name:
        merged.append(("grpc.ssl_target_name_override", security.server_name))
    return merged


def open_channel(
    target: str, security: ChannelSecurity, options: ChannelOptions = ()
) -> grpc.Channel:
    """A blocking channel; callers add ``bearer_metadata`` to each call."""
    if security.insecure_plaintext:
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(
        target, channel_credentials(security), options=_options(security, options)
    )


def open_aio_channel(
    target: str,
    security: ChannelSecurity,
    options: ChannelOptions = (),
    *,
    send_token: bool = True,
) -> grpc.aio.Channel:
    """An asyncio channel; with ``send_token``, every call on it carries the token."""
    interceptors: list[grpc.aio.ClientInterceptor] | None = None
    if send_token and security.token:
        interceptors = [_UnaryToken(security), _StreamToken(security), _BidiToken(security)]
    if security.insecure_plaintext:
        return grpc.aio.insecure_channel(target, options=list(options), interceptors=interceptors)
    return grpc.aio.secure_channel(
        target,
        channel_credentials(security),
        options=_options(security, options),
        interceptors=interceptors,
    )


class _BearerToken:
    """Puts the current token into a call's metadata."""

    def __init__(self, security: ChannelSecurity) -> None:
        self.security = security

    def with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        for key, value in bearer_metadata(self.security):
            metadata[key] = value
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# One class per call shape: grpc.aio files an interceptor under the first shape it
# implements only, so a single class for all would never see the streams.
class _UnaryToken(_BearerToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self.with_token(client_call_details), request)


class _StreamToken(_BearerToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self.with_token(client_call_details), request)


class _BidiToken(_BearerToken, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self,
        continuation: Any,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(self.with_token(client_call_details), request_iterator)
