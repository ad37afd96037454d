-- Issue 19: lz4 is also this database's default compression (new sessions), for the tables
-- made at run time: the projection's staging tables (``CREATE TEMP TABLE ... AS``) do not copy
-- a column's compression, and Postgres stores a value copied from one table into another as it
-- was compressed there. So a batch large enough to be staged was compressed with pglz, and
-- stored so, despite 0037: of the 37,500 incidents of a storm after 0037, about 8,500 suspects
-- rows were pglz (pg_column_compression); COPY into their staging table took 70 µs a row, the
-- same table's direct insert 30.
-- Without the right to alter the database (its owner's), or without lz4, pglz stays the
-- default: the same rows, only slower to write.
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET default_toast_compression = lz4', current_database());
EXCEPTION WHEN insufficient_privilege OR feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'default_toast_compression kept: %', SQLERRM;
END
$$;
