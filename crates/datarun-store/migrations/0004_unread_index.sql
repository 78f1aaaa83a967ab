-- No query reads records by certificate: lookups go through certificates.current_record_id,
-- and redelivery checks go by record id. The index cost a B-tree insert at a random key
-- for every stored record (and the WAL pages it dirtied), about a tenth of SQLite's ingest
-- time at 200,000 records. A history query will bring back the index it needs.
DROP INDEX IF EXISTS records_certificate;
