"""``bisect-admin``: the operator's tools (database set-up and checks, the demo) and the
process launcher the demo and the acceptance tests use to start the services."""
