//! The logical, row-based record that Keel replicates: one group-committed batch of requests.
//!
//! The leader executes a batch of client requests speculatively, captures what they changed as
//! [`Op`]s (SQL text for DDL, a SQLite session changeset for row changes), rolls back, and
//! proposes one [`Record`] to Raft. Every replica applies committed records in log order, so the
//! record is the unit of replication and of durability.
//!
//! A record is stored inside a log frame and travels inside JSON RPCs, so it has one compact,
//! versioned binary encoding ([`Record::encode`] / [`Record::decode`]) and serializes with serde
//! as a base64 string of that encoding in human-readable formats (not as a JSON array of numbers,
//! which would be 3–4 times larger), and as those bytes in binary formats (the replication
//! stream's frames).
//!
//! Besides its ops, a record carries the answer of every request in it that has a client
//! request id ([`RequestAnswer`]): applying the record stores those answers in the same
//! transaction as the data, so a retry of the request can be answered from any replica without
//! running it again. The answer is an opaque blob to this crate (`sql` writes JSON).
//!
//! # Encoding (version 2)
//!
//! All integers are little-endian `u64` unless noted, which makes [`Record::encode`] infallible
//! whatever the sizes involved:
//!
//! ```text
//! version: u8 = 2
//! op count
//!   per op: tag: u8 (1 = Ddl, 2 = Changes, 3 = Vacuum), byte length, bytes (UTF-8 for Ddl,
//!   none for Vacuum)
//! request count
//!   per request: id byte length, UTF-8 bytes, results byte length, bytes
//! crc32: u32 over everything before it
//! ```
//!
//! The trailing checksum protects a record on its way through the network, where no frame
//! checksum covers it. Decoding checks every length against the bytes actually present before
//! allocating, so garbage input returns an error instead of panicking or exhausting memory.
//!
//! Version 1 (request ids without their answers) was never deployed; a version-1 record is
//! refused with an error naming both versions rather than decoded.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::{Error, Result};

/// The record encoding version written by [`Record::encode`], the only one decoded.
const VERSION: u8 = 2;
/// Tag byte of [`Op::Ddl`].
const TAG_DDL: u8 = 1;
/// Tag byte of [`Op::Changes`].
const TAG_CHANGES: u8 = 2;

/// Tag byte of [`Op::Vacuum`]. Builds that predate it refuse a record holding it (an unknown
/// tag), so a replica that cannot vacuum stops instead of going on with other rowids.
const TAG_VACUUM: u8 = 3;
/// Bytes of a length or count field.
const LEN: usize = 8;
/// Bytes of the trailing checksum.
const CRC: usize = 4;

/// One replicated operation, in statement order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// SQL text replayed verbatim on every replica: DDL, and `sqlite_sequence` fix-ups that a
    /// session does not capture.
    Ddl(String),
    /// A SQLite session changeset, applied with `sqlite3changeset_apply_v2`.
    Changes(Vec<u8>),
    /// SQLite's `VACUUM`, run by every replica at this point of the log, outside any
    /// transaction: it renumbers the rowids of tables that have neither an INTEGER PRIMARY KEY
    /// nor an index, the same way wherever the content is the same, so all replicas must run
    /// it at the same log position. Always alone in its record.
    Vacuum,
}

impl Op {
    /// The op's own bytes: the SQL text or the changeset.
    fn bytes(&self) -> &[u8] {
        match self {
            Op::Ddl(sql) => sql.as_bytes(),
            Op::Changes(changes) => changes,
            Op::Vacuum => &[],
        }
    }
}

/// The answer of one request that carried a client request id, stored on apply so that a
/// retry with the same id gets this answer instead of running again.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RequestAnswer {
    /// The client's request id.
    pub id: String,
    /// The request's per-statement results, encoded by `sql` (opaque here).
    pub results: Vec<u8>,
}

/// The logical, row-based record of one group-committed batch of client requests.
///
/// Invariants (kept by the producer, `sql::Db::execute`; decoding does not check them):
/// * `requests` holds each id at most once, in request order.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Record {
    /// The batch's operations, in the order they must be applied.
    pub ops: Vec<Op>,
    /// The answers of the batch's requests that carried a request id, for deduplicating
    /// retries; a request whose statements all failed is here too (its answer is decided).
    pub requests: Vec<RequestAnswer>,
}

impl Record {
    /// Encodes the record in the versioned binary format described in the module docs.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size());
        self.encode_with(|bytes| out.extend_from_slice(bytes));
        out
    }

    /// Hands the bytes of [`Record::encode`] to `sink` piece by piece, in order, without
    /// building them in one buffer (the apply hash, `sql::chain`, digests the encoding this
    /// way: one pass over the changesets, no copy).
    pub fn encode_with(&self, mut sink: impl FnMut(&[u8])) {
        let mut crc = crc32fast::Hasher::new();
        let mut put = |bytes: &[u8]| {
            crc.update(bytes);
            sink(bytes);
        };
        put(&[VERSION]);
        put(&len_bytes(self.ops.len()));
        for op in &self.ops {
            put(&[match op {
                Op::Ddl(_) => TAG_DDL,
                Op::Changes(_) => TAG_CHANGES,
                Op::Vacuum => TAG_VACUUM,
            }]);
            put(&len_bytes(op.bytes().len()));
            put(op.bytes());
        }
        put(&len_bytes(self.requests.len()));
        for request in &self.requests {
            put(&len_bytes(request.id.len()));
            put(request.id.as_bytes());
            put(&len_bytes(request.results.len()));
            put(&request.results);
        }
        sink(&crc.finalize().to_le_bytes());
    }

    /// Decodes bytes produced by [`Record::encode`].
    ///
    /// Fails with [`Error::InvalidInput`] on anything else: a wrong version, a bad checksum, a
    /// length running past the end, invalid UTF-8, an unknown op tag or trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Record> {
        let Some(body_len) = bytes.len().checked_sub(CRC) else {
            return Err(invalid(format!("{} bytes is too short for a record", bytes.len())));
        };
        let (body, crc) = bytes.split_at(body_len);
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(invalid(format!(
                "record checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            )));
        }
        let mut reader = Reader { bytes: body, at: 0 };
        let version = reader.byte()?;
        if version != VERSION {
            return Err(invalid(format!(
                "unsupported record version {version}: this build reads version {VERSION} only"
            )));
        }
        let count = reader.len()?;
        // Each op takes at least a tag and a length: never reserve more than the input can hold.
        let mut ops = Vec::with_capacity(count.min(reader.remaining() / (1 + LEN)));
        for _ in 0..count {
            let tag = reader.byte()?;
            let bytes = reader.bytes()?;
            ops.push(match tag {
                TAG_DDL => Op::Ddl(utf8(bytes, "DDL text")?),
                TAG_CHANGES => Op::Changes(bytes.to_vec()),
                TAG_VACUUM if bytes.is_empty() => Op::Vacuum,
                TAG_VACUUM => return Err(invalid("a vacuum op carries no bytes".to_string())),
                tag => return Err(invalid(format!("unknown op tag {tag}"))),
            });
        }
        let count = reader.len()?;
        // Each request takes at least two lengths.
        let mut requests = Vec::with_capacity(count.min(reader.remaining() / (2 * LEN)));
        for _ in 0..count {
            let id = utf8(reader.bytes()?, "request id")?;
            let results = reader.bytes()?.to_vec();
            requests.push(RequestAnswer { id, results });
        }
        if reader.remaining() != 0 {
            return Err(invalid(format!("{} trailing bytes after record", reader.remaining())));
        }
        Ok(Record { ops, requests })
    }

    /// The size of the record in bytes: exactly the length of [`Record::encode`]'s output,
    /// computed without encoding.
    pub fn size(&self) -> usize {
        let ops: usize = self.ops.iter().map(|op| 1 + LEN + op.bytes().len()).sum();
        let requests: usize =
            self.requests.iter().map(|r| LEN + r.id.len() + LEN + r.results.len()).sum();
        1 + LEN + ops + LEN + requests + CRC
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "record(ops={}, bytes={}, requests={})",
            self.ops.len(),
            self.size(),
            self.requests.len()
        )
    }
}

impl serde::Serialize for Record {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&BASE64.encode(self.encode()))
        } else {
            serializer.serialize_bytes(&self.encode())
        }
    }
}

impl<'de> serde::Deserialize<'de> for Record {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(RecordVisitor)
        } else {
            deserializer.deserialize_bytes(RecordVisitor)
        }
    }
}

/// Deserializes a [`Record`] from what its `Serialize` impl writes: a base64 string in
/// human-readable formats (JSON), the encoded bytes in binary ones (the replication stream).
struct RecordVisitor;

impl serde::de::Visitor<'_> for RecordVisitor {
    type Value = Record;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an encoded record (base64 in text formats)")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<Record, E> {
        let bytes =
            BASE64.decode(s).map_err(|e| E::custom(format!("record is not base64: {e}")))?;
        Record::decode(&bytes).map_err(E::custom)
    }

    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> std::result::Result<Record, E> {
        Record::decode(bytes).map_err(E::custom)
    }
}

/// A length or count as encoded.
fn len_bytes(len: usize) -> [u8; LEN] {
    (len as u64).to_le_bytes()
}

/// Builds the error for an undecodable record.
fn invalid(reason: String) -> Error {
    Error::InvalidInput(reason)
}

/// Checks that `bytes` are UTF-8; `what` names the field for the error.
fn utf8(bytes: &[u8], what: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|e| invalid(format!("{what} is not UTF-8: {e}")))
}

/// A bounds-checked cursor over a record's body.
struct Reader<'a> {
    /// The body being decoded.
    bytes: &'a [u8],
    /// Offset of the next unread byte.
    at: usize,
}

impl<'a> Reader<'a> {
    /// Bytes not yet read.
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    /// Reads the next `n` bytes.
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(invalid(format!(
                "record truncated: needs {n} bytes at offset {}, {} left",
                self.at,
                self.remaining()
            )));
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    /// Reads one byte.
    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    /// Reads a length or count; one that cannot fit in memory is reported as truncation.
    fn len(&mut self) -> Result<usize> {
        let raw = self.take(LEN)?;
        let len =
            u64::from_le_bytes([raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7]]);
        usize::try_from(len).map_err(|_| invalid(format!("length {len} does not fit in memory")))
    }

    /// Reads a length-prefixed byte string.
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.len()?;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use test_case::test_case;

    use super::*;

    /// A record whose requests answer `[{"id": <id>}]`.
    fn record(ops: Vec<Op>, ids: &[&str]) -> Record {
        let requests = ids
            .iter()
            .map(|id| RequestAnswer {
                id: id.to_string(),
                results: format!("[{{\"id\":\"{id}\"}}]").into_bytes(),
            })
            .collect();
        Record { ops, requests }
    }

    #[test_case(Record::default() ; "empty")]
    #[test_case(record(vec![Op::Ddl("CREATE TABLE t (a)".into())], &[]) ; "one ddl")]
    #[test_case(record(vec![Op::Changes(vec![1, 2, 3])], &["req-1"]) ; "one changeset with id")]
    #[test_case(record(vec![Op::Changes(vec![])], &[""]) ; "empty changeset and id")]
    #[test_case(record(vec![Op::Vacuum], &[]) ; "vacuum")]
    #[test_case(Record {
        ops: vec![],
        requests: vec![RequestAnswer { id: "no-results".into(), results: vec![] }],
    } ; "request without results bytes")]
    #[test_case(Record {
        ops: vec![],
        requests: vec![RequestAnswer { id: "binary".into(), results: vec![0, 0xff, 0x80] }],
    } ; "results are opaque bytes")]
    #[test_case(record(
        vec![Op::Ddl("CREATE TABLE t (a)".into()), Op::Changes(vec![9; 100]), Op::Ddl("é ✓".into())],
        &["a", "b", "c"],
    ) ; "mixed")]
    #[test_case(record(vec![Op::Changes((0..4_000_000u32).map(|i| i as u8).collect())], &["big"]) ; "large changeset")]
    fn round_trip(r: Record) {
        let bytes = r.encode();
        assert_eq!(bytes.len(), r.size());
        assert_eq!(Record::decode(&bytes).unwrap(), r);

        let json = serde_json::to_string(&r).unwrap();
        assert!(json.starts_with('"'), "serializes as a string: {}", &json[..json.len().min(40)]);
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), r);
    }

    #[test]
    fn display_is_a_summary() {
        let r = record(vec![Op::Ddl("x".into()), Op::Changes(vec![0; 10])], &["id"]);
        assert_eq!(r.to_string(), format!("record(ops=2, bytes={}, requests=1)", r.size()));
    }

    #[test]
    fn every_truncation_fails() {
        let bytes = record(vec![Op::Ddl("CREATE TABLE t (a)".into())], &["r"]).encode();
        for cut in 0..bytes.len() {
            assert!(Record::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn every_flipped_byte_fails() {
        let bytes = record(vec![Op::Changes(vec![7; 20])], &["r"]).encode();
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            assert!(Record::decode(&damaged).is_err(), "flip at {at}");
        }
    }

    /// Re-signs a hand-built body, so the checks behind the checksum are reached.
    fn signed(mut body: Vec<u8>) -> Vec<u8> {
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        body
    }

    #[test_case(signed(vec![3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]) ; "unknown version")]
    #[test_case(signed(vec![2, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0]) ; "unknown tag")]
    #[test_case(signed(vec![2, 255, 255, 255, 255, 255, 255, 255, 255]) ; "huge op count")]
    #[test_case(signed(vec![2, 1, 0, 0, 0, 0, 0, 0, 0, 2, 255, 255, 255, 255, 255, 255, 255, 127]) ; "huge op length")]
    #[test_case(signed(vec![2, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]) ; "ddl not utf8")]
    #[test_case(signed(vec![2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]) ; "trailing byte")]
    #[test_case(signed([vec![2], le(0), le(1), le(1), vec![0xff], le(0)].concat()) ; "request id not utf8")]
    #[test_case(signed([vec![2], le(0), le(1), le(1), b"r".to_vec()].concat()) ; "request without results length")]
    #[test_case(signed([vec![2], le(0), le(1), le(1), b"r".to_vec(), le(5), b"[]".to_vec()].concat()) ; "results run past the end")]
    #[test_case(signed([vec![2], le(0), le(u64::MAX)].concat()) ; "huge request count")]
    #[test_case(vec![] ; "empty input")]
    #[test_case(vec![0; 3] ; "shorter than checksum")]
    fn garbage_is_invalid_input(bytes: Vec<u8>) {
        let err = Record::decode(&bytes).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    }

    /// A length or count field.
    fn le(n: u64) -> Vec<u8> {
        n.to_le_bytes().to_vec()
    }

    /// A well-formed version-1 record (one DDL op, request id "r" without an answer) is refused
    /// with an error that names the version, not misread as version 2.
    #[test]
    fn version_1_is_refused_clearly() {
        let ddl = b"CREATE TABLE t (a)";
        let body = [
            vec![1],
            le(1),
            vec![TAG_DDL],
            le(ddl.len() as u64),
            ddl.to_vec(),
            le(1),
            le(1),
            b"r".to_vec(),
        ]
        .concat();
        let err = Record::decode(&signed(body)).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err}");
        let message = err.to_string();
        assert!(message.contains("unsupported record version 1"), "{message}");
        assert!(message.contains("version 2"), "{message}");
    }

    /// The encoding is pinned byte for byte, so a change to it cannot go unnoticed (it needs a
    /// new version).
    #[test]
    fn encoding_is_stable() {
        let r = Record {
            ops: vec![Op::Changes(vec![7])],
            requests: vec![RequestAnswer { id: "a".into(), results: b"[]".to_vec() }],
        };
        let body = [
            vec![2],
            le(1),
            vec![TAG_CHANGES],
            le(1),
            vec![7],
            le(1),
            le(1),
            b"a".to_vec(),
            le(2),
            b"[]".to_vec(),
        ]
        .concat();
        assert_eq!(r.encode(), signed(body));
    }

    #[test_case("\"not base64!\"" ; "not base64")]
    #[test_case("\"AAAA\"" ; "base64 of garbage")]
    #[test_case("[1, 2, 3]" ; "not a string")]
    fn bad_json_is_a_serde_error(json: &str) {
        assert!(serde_json::from_str::<Record>(json).is_err());
    }
}
