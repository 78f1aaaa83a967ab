//! PostgreSQL's binary `COPY … FROM STDIN`: how the ingest writes a batch's new rows.
//!
//! An `INSERT … SELECT FROM UNNEST(arrays)` makes the server parse one array per
//! column, store every row in a tuplestore, then insert the rows one by one, logging
//! each to the WAL on its own. `COPY` reads the rows straight from the stream and
//! inserts them into the heap a page at a time (one WAL record per page); in the binary
//! format every field arrives already in the column type's wire form, so the server
//! parses nothing but the `json` text, to check it. Constraints, keys and indexes hold
//! as for an insert: a duplicate key fails the `COPY` (SQLSTATE 23505) and the
//! transaction.
//!
//! The rows are encoded here, in the order of the statement's column list, and each
//! field must be the column's exact type (`int8` is 8 bytes; `int4` would be refused).

use crate::{Result, StoreError};

/// The 11-byte signature, flags (no OIDs) and header-extension length of the format.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Rows for one binary `COPY`, encoded as they are added.
pub(crate) struct CopyRows {
    buf: Vec<u8>,
    columns: i16,
    /// Fields still to add to the current row.
    missing: i16,
    rows: usize,
}

impl CopyRows {
    /// Rows of `columns` fields each, with room for about `bytes` of data.
    pub(crate) fn new(columns: i16, bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER.len() + bytes + 2);
        buf.extend_from_slice(HEADER);
        CopyRows {
            buf,
            columns,
            missing: 0,
            rows: 0,
        }
    }

    /// Starts the next row; its fields follow, one per column.
    pub(crate) fn row(&mut self) -> &mut Self {
        debug_assert_eq!(self.missing, 0, "the row before has every field");
        self.buf.extend_from_slice(&self.columns.to_be_bytes());
        self.missing = self.columns;
        self.rows += 1;
        self
    }

    /// A field of `bytes` (a `text` or `bytea` column takes its bytes as they are).
    pub(crate) fn bytes(&mut self, bytes: &[u8]) -> Result<&mut Self> {
        let length = i32::try_from(bytes.len())
            .map_err(|_| StoreError::Invalid("a field is too long for PostgreSQL".into()))?;
        self.field(length);
        self.buf.extend_from_slice(bytes);
        Ok(self)
    }

    pub(crate) fn text(&mut self, text: &str) -> Result<&mut Self> {
        self.bytes(text.as_bytes())
    }

    pub(crate) fn optional_text(&mut self, text: Option<&str>) -> Result<&mut Self> {
        match text {
            Some(text) => self.text(text),
            None => {
                self.field(-1);
                Ok(self)
            }
        }
    }

    /// An `int8` (`BIGINT`) field.
    pub(crate) fn int8(&mut self, value: i64) -> &mut Self {
        self.field(8);
        self.buf.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// A `json` field: its binary form is the text itself (the server checks it is JSON).
    pub(crate) fn json(&mut self, json: &str) -> Result<&mut Self> {
        self.text(json)
    }

    fn field(&mut self, length: i32) {
        debug_assert!(self.missing > 0, "a row has no more fields than columns");
        self.missing -= 1;
        self.buf.extend_from_slice(&length.to_be_bytes());
    }

    /// The whole stream, with its trailer.
    fn finish(mut self) -> Vec<u8> {
        debug_assert_eq!(self.missing, 0, "the last row has every field");
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

/// Runs `statement` (a `COPY … FROM STDIN (FORMAT binary)`) with `rows` as its data,
/// and checks the server took every row.
pub(crate) async fn copy_in(
    conn: &mut sqlx::PgConnection,
    statement: &str,
    rows: CopyRows,
) -> Result<()> {
    let expected = rows.rows as u64;
    let mut copy = conn.copy_in_raw(statement).await?;
    if let Err(error) = copy.send(rows.finish()).await {
        // The server has not ended the `COPY`; end it, so the connection stays usable.
        let _ = copy.abort("the hub could not send the rows").await;
        return Err(error.into());
    }
    let copied = copy.finish().await?;
    if copied != expected {
        return Err(StoreError::Corrupt(format!(
            "PostgreSQL copied {copied} rows of {expected}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::CopyRows;

    #[test]
    fn rows_are_encoded_in_postgresql_binary_copy_format() {
        let mut rows = CopyRows::new(4, 64);
        rows.row().text("ab").unwrap().int8(-2).json("{}").unwrap();
        rows.optional_text(None).unwrap();
        let expected: Vec<u8> = [
            &b"PGCOPY\n\xff\r\n\0"[..],
            &[0, 0, 0, 0], // flags
            &[0, 0, 0, 0], // header extension
            &[0, 4],       // fields in the row
            &[0, 0, 0, 2],
            b"ab",
            &[0, 0, 0, 8],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe],
            &[0, 0, 0, 2],
            b"{}",
            &[0xff, 0xff, 0xff, 0xff], // NULL
            &[0xff, 0xff],             // trailer
        ]
        .concat();
        assert_eq!(rows.finish(), expected);
    }
}
