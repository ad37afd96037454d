-- Order of incident states beyond whole seconds (blametrail_common.events.incidents.incident_order):
-- the key of the event whose state a row shows, and of the assignment it shows. Compared byte by
-- byte (COLLATE "C"), as Python compares the strings.
ALTER TABLE incidents ADD COLUMN state_order text COLLATE "C";
ALTER TABLE incidents ADD COLUMN assignee_order text COLLATE "C";
-- Rows projected before this: their state's key is unknown beyond its second, so any event of a
-- later second, or of the same second, replaces it (as the old guard let it).
UPDATE incidents SET state_order = '1-'
    || lpad(floor(extract(epoch FROM state_changed_at) * 1000000)::bigint::text, 17, '0')
    || '-00000000000000-0000000000000000000-0-';
ALTER TABLE incidents ALTER COLUMN state_order SET NOT NULL;
