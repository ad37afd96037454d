-- Issue 18 §2 (rule 3 of blametrail_sync.plan): the Sentry change that last contested a winner's
-- write-back, by incident_order. Read again after the repair (ingest spooled its webhook while
-- Kafka took it late as well, or any redelivery), it contests nothing: it landed before the
-- repair, which was made after it was read. NULL: none since the winner won.
ALTER TABLE sync_incidents ADD COLUMN contested_order text COLLATE "C";
