"""The worker process: connects to the operator, receives jobs on a stream, runs them,
reports results, heartbeats, and drains on SIGTERM. It depends on the shared parts of
``jobqueue`` and never on ``jobqueue.operator``.
"""
