"""The local environment: real Kubernetes, PostgreSQL, Redis and Kafka servers on loopback.

Used by the test suite, ``make demo`` and ``make dev-env``; see ``environment`` for the
life cycle and ``processes`` for why nothing it starts can outlive it.
"""

from jobqueue.devenv.environment import ALL_COMPONENTS, Endpoints, Environment, running

__all__ = ["ALL_COMPONENTS", "Endpoints", "Environment", "running"]
