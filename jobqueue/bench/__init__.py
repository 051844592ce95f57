"""``make bench``: the whole stack, timed, with a reference that makes runs comparable.

The benchmark starts real PostgreSQL, Redis and Kafka (``jobqueue.devenv``), the operator
with its outbox relay in a child process, and worker processes running a no-op Python
handler, then measures submit rates, the drain of a backlog, and dispatch latency at a
steady rate (``phases``); it runs a database-only reference of the same row work in the
same run (``reference``) and profiles the operator during a second drain
(``profiling``). ``run`` orders the phases; ``report`` prints the table and writes JSON.
"""
