-- Issue 6, PostgreSQL: a record's fields as `json`, the text the hub validated, instead
-- of `jsonb`. Nothing queries inside them: a lookup, a proof and the change feed return
-- them whole, and only by the indexed ids. `jsonb` parsed and rebuilt every record's
-- fields on insert (3.4 % of all ingest CPU in a `perf` profile, the server's largest
-- cost after its index inserts), stored them larger (534 bytes against 470 on average)
-- and turned them back into text for every read. `json` still refuses text that is not
-- JSON; the CHECK still requires an object. (SQLite has always stored the same text.)
ALTER TABLE records DROP CONSTRAINT records_fields_object;
ALTER TABLE records ALTER COLUMN fields TYPE json USING fields::json;
ALTER TABLE records ADD CONSTRAINT records_fields_object CHECK (json_typeof(fields) = 'object');
