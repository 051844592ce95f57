"""Where a caller's bearer token comes from: a value, a file that rotates, or a kubeconfig.

The operator knows callers by Kubernetes identities (see ``jobqueue.operator.auth``), so
every client proves itself with a token the API server issued: a worker with its pod's
ServiceAccount token, a person with the token of their kubeconfig, a program with
whatever token it was given. A ``TokenSource`` is asked for the token on every call, so
a token that changes underneath (the kubelet rewrites a projected token well before it
expires) is picked up without reconnecting.

Nothing here speaks gRPC; ``jobqueue.channels`` puts the token on the wire.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from jobqueue.errors import ConfigError

logger = logging.getLogger(__name__)


class TokenSource(Protocol):
    def token(self) -> str | None:
        """The bearer token to send now; None sends no ``authorization`` at all."""
        ...


@dataclass(frozen=True)
class StaticToken:
    """A token given once, for the life of the client."""

    value: str

    def token(self) -> str | None:
        return self.value or None


class TokenFile:
    """A token read from a file and read again whenever the file changes.

    Kubernetes swaps a projected token by replacing a symlink, so the file's identity
    (device, inode, size, modification time) is compared on each call: one ``stat``,
    cheaper than a read, and a rotation is seen on the first call after it. A file that
    cannot be read is not an error here (the operator answers UNAUTHENTICATED, which
    says more): the last token read is sent, or none, and a warning is logged once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # gRPC may ask from several threads at once
        self._seen: tuple[int, int, int, int] | None = None
        self._token: str | None = None
        self._warned = False

    def check(self) -> None:
        """Raise ConfigError unless the file holds a token now; for start-up checks."""
        try:
            text = self.path.read_text().strip()
        except OSError as error:
            raise ConfigError(
                f"cannot read the token file {self.path}: {error.strerror}"
            ) from error
        if not text:
            raise ConfigError(f"the token file {self.path} is empty")

    def token(self) -> str | None:
        with self._lock:
            try:
                status = os.stat(self.path)
                identity = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
                if identity != self._seen:
                    self._token = self.path.read_text().strip() or None
                    self._seen = identity
                    self._warned = False
            except OSError as error:
                self._warn(f"cannot read it ({error.strerror})")
                return self._token
            if self._token is None:
                self._warn("it is empty")
            return self._token

    def _warn(self, problem: str) -> None:
        if not self._warned:
            logger.warning(
                "The token file %s: %s; calls carry %s.",
                self.path, problem, "the last token read" if self._token else "no token",
            )  # fmt: skip
            self._warned = True


def kubeconfig_token(kubeconfig: Path | None = None, context: str | None = None) -> str | None:
    """The bearer token of the kubeconfig's (current) context, or None if it has none.

    The Kubernetes client's own loader reads it, so ``token``, ``tokenFile`` and exec
    credential plugins (EKS, GKE, OIDC helpers) all work. A user that authenticates with a
    client certificate has no token to pass on: the operator cannot verify a certificate
    it never sees, so such a user needs ``--token`` or a ServiceAccount.
    """
    # Imported here: the Kubernetes client is slow to import and most calls do not need it.
    from kubernetes import client as kube_client  # noqa: PLC0415
    from kubernetes import config as kube_config  # noqa: PLC0415

    configuration = kube_client.Configuration()
    try:
        kube_config.load_kube_config(
            config_file=str(kubeconfig) if kubeconfig else None,
            context=context,
            client_configuration=configuration,
        )
    except (kube_config.ConfigException, OSError) as error:
        raise ConfigError(f"cannot read a token from the kubeconfig: {error}") from error
    header = configuration.api_key.get("authorization") or configuration.api_key.get("BearerToken")
    if not isinstance(header, str) or not header:
        return None
    scheme, _, value = header.partition(" ")
    return value if scheme.lower() == "bearer" and value else None
