-- The least-privilege PostgreSQL role for `orchestrator serve`: exactly the rights its endpoints use, nothing more.
-- Run as the owner of the orchestrator's tables (the role `orchestrator init` migrates with), in that database:
--
--   psql -v ON_ERROR_STOP=1 -d orchestrator -f deploy/orchestrator-serve-role.sql
--   psql -d orchestrator -c "ALTER ROLE orchestrator_serve PASSWORD '…'"
--
-- and give the service ORCHESTRATOR_DATABASE_URL=postgresql://orchestrator_serve:…@host/orchestrator.
-- `orchestrator init`, the importers, `run` and `api-keys create` keep running as the owner. The service cannot
-- create, drop or alter tables, delete anything, read the rendered messages (delivery_payloads), issue or change
-- coupons beyond marking one redeemed, or create API keys.

DO $$ BEGIN
    CREATE ROLE orchestrator_serve LOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

GRANT USAGE ON SCHEMA public TO orchestrator_serve;

-- /healthz: are the migrations current?
GRANT SELECT ON alembic_version TO orchestrator_serve;
-- API keys: look one up, note when it was last used (created and revoked from the command line only)
GRANT SELECT, UPDATE (last_used_at) ON api_keys TO orchestrator_serve;
-- rate limits, shared with the dispatchers' provider quotas
GRANT SELECT, INSERT, UPDATE ON provider_quotas TO orchestrator_serve;
-- who a token, a till order or a coupon belongs to
GRANT SELECT ON customers TO orchestrator_serve;
-- unsubscribe, SMS opt-outs, bounces and complaints
GRANT SELECT, INSERT ON suppressions TO orchestrator_serve;
GRANT USAGE ON SEQUENCE suppressions_id_seq TO orchestrator_serve;
-- the till's order, recorded with its redemption; the row lock (FOR UPDATE) needs UPDATE, which touches nothing else
GRANT SELECT, INSERT, UPDATE (status) ON orders TO orchestrator_serve;
GRANT USAGE ON SEQUENCE orders_id_seq TO orchestrator_serve;
-- redemption: lock the coupon, mark it redeemed, record the redemption
GRANT SELECT, UPDATE (state, redeemed_at) ON coupons TO orchestrator_serve;
GRANT SELECT, INSERT ON coupon_redemptions TO orchestrator_serve;
GRANT USAGE ON SEQUENCE coupon_redemptions_id_seq TO orchestrator_serve;
-- e-mail events: find the delivery, record its outcome
GRANT SELECT (id, run_pk, channel, contact, state, outcome, outcome_at), UPDATE (outcome, outcome_at)
    ON deliveries TO orchestrator_serve;
-- /metrics: runs by state, the scheduler's heartbeat
GRANT SELECT ON campaign_runs, scheduler_leases TO orchestrator_serve;
