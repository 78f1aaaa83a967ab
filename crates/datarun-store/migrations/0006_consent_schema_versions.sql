-- The schema version of each record type a consent was granted against, as a JSON
-- object {"<record type>": <version>}: fields a later version adds are never released
-- under the consent. Consents granted before this migration have none recorded and are
-- read as granted against the latest version registered by their grant time.
ALTER TABLE consents ADD COLUMN schema_versions TEXT;
