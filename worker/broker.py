"""The worker's broker transport: kombu's Redis transport, riding out refused writes.

Redis refuses writes for a while when it is at ``maxmemory``, when too few
replicas answer (``min-replicas-to-write``: ``NOREPLICAS``), when a replica is
read-only during a failover, or when it cannot persist (``MISCONF``). ``BRPOP``
pops, so it is a write too. kombu counts these error replies as channel
errors, and Celery ends the whole worker on a channel error in its consumer
loop ("Unrecoverable error"), taking the task it runs with it. Here every error
reply on the broker connection counts as a connection error instead: the
consumer drops the connection and reconnects with Celery's backoff, as after a
Redis restart, while the running task retries its own writes
(:func:`common.cluster.jobs.while_refused`). redis-py gives ``NOREPLICAS`` no
class of its own, so the rule is the base ``ResponseError``: a reply that stays
wrong keeps the worker reconnecting and logging, rather than gone.
"""

from __future__ import annotations

from kombu.transport import redis as kombu_redis
from redis import exceptions


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with Redis's error replies counted as connection errors."""

    connection_errors = (*kombu_redis.Transport.connection_errors, exceptions.ResponseError)
