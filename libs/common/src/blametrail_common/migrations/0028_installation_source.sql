-- Issue 17 L1: how a connection came to know its installation uuid: 'oauth' (the install flow),
-- 'webhook' (a webhook to the connection's own URL named it) or 'ui_call' (a signed UI-component
-- POST, before any webhook). A webhook's binding replaces another connection's 'ui_call' one.
-- Internal bindings made before this are taken as learned from a UI call.
ALTER TABLE sentry_connections
    ADD COLUMN installation_source text CHECK (installation_source IN ('oauth', 'webhook', 'ui_call'));
UPDATE sentry_connections
   SET installation_source = CASE WHEN mode = 'oauth' THEN 'oauth' ELSE 'ui_call' END
 WHERE installation_uuid IS NOT NULL;
