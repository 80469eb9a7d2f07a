"""The fault suite's harness: real processes on loopback (2 API replicas, 3 workers), a client
that logs every acknowledgement, fault injectors, and a checker of the invariants over the
acknowledgement log and the final database (docs/reliability.md)."""
