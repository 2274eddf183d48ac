"""srcluster's HTTP API (Flask under gunicorn). Built in the cluster issue; empty until then."""
