-- Issue 17 L2: an Idempotency-Key is the caller's own: scoped by the actor (a user or an API
-- key) as well as the incident, so one caller's key neither replays nor blocks another's action.
ALTER TABLE incident_actions
    DROP CONSTRAINT incident_actions_tenant_id_incident_id_idempotency_key_key,
    ADD CONSTRAINT incident_actions_idempotency_per_actor
        UNIQUE (tenant_id, incident_id, actor_kind, actor_id, idempotency_key);
