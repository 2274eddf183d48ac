"""srcluster's Celery worker (``celery -A worker worker``). Built in the cluster issue; empty until then."""
