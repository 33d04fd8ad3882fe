"""A contract fake of the Kubernetes API server for loopgate's tests (see /work/k8s-spec.md "Fake cluster").

`FakeCluster` serves the Store over real HTTP for the official `kubernetes` client; every body is
validated strictly against published schemas (`validate.py`).
"""
