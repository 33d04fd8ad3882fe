"""The Kubernetes runtime: forked Deployments beside the cluster's own baseline, Istio or Gateway API routes
by baggage, suites and builds as Jobs (issue #10).

`objects` builds every object as plain data (no API calls) so the runtime and `loopgate render` create
exactly the same things, and tests validate them without a cluster.
"""
