"""jobqueue: a Kubernetes-native distributed job queue.

Queues and worker pools are custom resources (JobQueue, QueueWorkerPool); an operator
reconciles them into PostgreSQL rows and worker Deployments and pushes jobs to workers
over gRPC streams. This package holds every part: the shared store, events, Redis state,
configuration and API contract at the top, and the two processes built on them in
``jobqueue.operator`` and ``jobqueue.worker``.
"""

__version__ = "0.1.0"
