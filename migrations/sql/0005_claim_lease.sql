-- Issue 8: an Idempotency-Key claim is a lease. A claim whose request died (the
-- process was killed) is taken over by a retry once `idempotency_lease_seconds` have
-- passed since `claimed_at`, instead of answering "in flight" until the key expires.
ALTER TABLE idempotency_keys ADD COLUMN claimed_at timestamptz NOT NULL DEFAULT now();
