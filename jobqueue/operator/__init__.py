"""The operator process: kopf handlers for the two resources, the gRPC API, the scheduler,
status mirroring, metrics and health. It depends on the shared parts of ``jobqueue`` and
never on ``jobqueue.worker``.
"""
