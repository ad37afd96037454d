-- The key (incident_order) of the status change whose status, resolved_at and state_changed_at
-- the row shows. Only status changes take part (opened, resolved, reopened, muted, merged,
-- BlameTrail's status actions); an alert that fired again, an assignment or an absorbed merge
-- order only the facts (severity, title, culprit: state_order) and never undo an acknowledge or
-- a resolve. Their status stands only while the incident has no status change: their key is
-- '-' || incident_order, below every real key. Compared byte by byte (COLLATE "C").
-- NULL: a row projected before this migration, whose status came with its state_order
-- (COALESCE(status_order, state_order)); a rebuild gives every row its own.
ALTER TABLE incidents ADD COLUMN status_order text COLLATE "C";
