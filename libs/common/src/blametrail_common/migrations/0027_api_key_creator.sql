-- Issue 17 M5: an API key records the user it was made by (a key made by a key inherits that
-- key's user; keys made by the CLI or before this have none). Disabling a user revokes the keys
-- they made, so a key does not outlive its admin.
ALTER TABLE api_keys ADD COLUMN created_by_user_id uuid REFERENCES users (id);
CREATE INDEX api_keys_created_by ON api_keys (created_by_user_id) WHERE created_by_user_id IS NOT NULL;
