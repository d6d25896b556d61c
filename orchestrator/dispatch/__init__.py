"""Dispatch: send a run's due deliveries through their channels and record each message's own result.

The planner (``orchestrator.pipeline``) writes every intended message to the ledger with its rendered payload
before anything is sent. Dispatch is then the same loop whichever process runs it, which is why several processes
can share a run:

- ``claims``: the ledger side - claim due rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), skipping those whose
  member opted out since planning (consent and suppression checked again), record one result;
- ``retry``: when a transient failure is tried again (exponential backoff with jitter, up to a count and an age);
- ``breaker``: a circuit breaker per channel, so a failing provider pauses instead of burning the audience;
- ``quotas``: providers' rate limits (messages per second, daily cap), shared through the database;
- ``dispatcher``: the loop that ties them together.

The only window for a duplicate is between a provider accepting a message and the ledger recording it: each
result is committed as soon as the channel yields it, so a crash repeats at most the one message in flight per
process (less where the provider deduplicates on the idempotency key ``run<run>-d<delivery>``).
"""
