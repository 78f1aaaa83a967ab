-- Issue 9: the purpose catalogue says what each purpose may need. `definition` is the
-- catalogue entry: titles in Chinese and English, legal basis, and the fields of each
-- record type. Purposes registered before have none and need nothing until the
-- catalogue is registered again (`datarun up` does it on every start).
ALTER TABLE purposes ADD COLUMN definition jsonb;
