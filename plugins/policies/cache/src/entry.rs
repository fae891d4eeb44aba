//! The stored form of a cached response: a compact binary record.
//!
//! ```text
//! "pc1"                      magic and format version
//! u64  stored_at_ms          wall clock when stored
//! u64  age_at_store_s        the upstream's Age when stored
//! u16  status
//! u32  key length, key       the full cache key (checked on every hit, so a
//!                            hash collision of the kv key is a miss)
//! u16  header count, then per header: u16 name length, name,
//!                                      u32 value length, value
//! u32  body length, body
//! ```
//!
//! Integers are little-endian. Anything that does not decode exactly is
//! treated as a miss.

use pylon_plugin_sdk::Header;

const MAGIC: &[u8; 3] = b"pc1";

/// A cached response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// When it was stored (ms since the epoch).
    pub(crate) stored_at_ms: u64,
    /// Its `Age` (seconds) when it was stored.
    pub(crate) age_at_store_s: u64,
    /// The full key it was stored under.
    pub(crate) key: Vec<u8>,
    pub(crate) status: u16,
    pub(crate) headers: Vec<Header>,
    pub(crate) body: Vec<u8>,
}

impl Entry {
    /// Serialise; `None` when a part is too long for its length field.
    pub(crate) fn encode(&self) -> Option<Vec<u8>> {
        let size = 3
            + 8
            + 8
            + 2
            + 4
            + self.key.len()
            + 2
            + self
                .headers
                .iter()
                .map(|h| 6 + h.name.len() + h.value.len())
                .sum::<usize>()
            + 4
            + self.body.len();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.stored_at_ms.to_le_bytes());
        out.extend_from_slice(&self.age_at_store_s.to_le_bytes());
        out.extend_from_slice(&self.status.to_le_bytes());
        put32(&mut out, &self.key)?;
        out.extend_from_slice(&u16::try_from(self.headers.len()).ok()?.to_le_bytes());
        for h in &self.headers {
            out.extend_from_slice(&u16::try_from(h.name.len()).ok()?.to_le_bytes());
            out.extend_from_slice(h.name.as_bytes());
            put32(&mut out, &h.value)?;
        }
        put32(&mut out, &self.body)?;
        Some(out)
    }

    /// Deserialise; `None` for anything malformed or truncated.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Entry> {
        let mut r = Reader(bytes);
        if r.take(3)? != MAGIC {
            return None;
        }
        let stored_at_ms = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let age_at_store_s = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let status = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
        let key = r.take32()?.to_vec();
        let count = r.u16()?;
        let mut headers = Vec::with_capacity(usize::from(count).min(256));
        for _ in 0..count {
            let len = usize::from(r.u16()?);
            let name = String::from_utf8(r.take(len)?.to_vec()).ok()?;
            let value = r.take32()?.to_vec();
            headers.push(Header { name, value });
        }
        let body = r.take32()?.to_vec();
        if !r.0.is_empty() {
            return None;
        }
        Some(Entry {
            stored_at_ms,
            age_at_store_s,
            key,
            status,
            headers,
            body,
        })
    }
}

fn put32(out: &mut Vec<u8>, bytes: &[u8]) -> Option<()> {
    out.extend_from_slice(&u32::try_from(bytes.len()).ok()?.to_le_bytes());
    out.extend_from_slice(bytes);
    Some(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn take32(&mut self) -> Option<&'a [u8]> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?);
        self.take(usize::try_from(n).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let e = Entry {
            stored_at_ms: 1_700_000_000_123,
            age_at_store_s: 7,
            key: b"GET example.com /a".to_vec(),
            status: 203,
            headers: vec![
                Header::new("content-type", "text/plain"),
                Header::new("x-bin", vec![0xff, 0x00]),
                Header::new("x-bin", ""),
            ],
            body: b"hello".to_vec(),
        };
        let bytes = e.encode().unwrap();
        assert_eq!(Entry::decode(&bytes), Some(e));
        for cut in 0..bytes.len() {
            assert_eq!(Entry::decode(&bytes[..cut]), None, "truncated at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(Entry::decode(&extra), None);
        assert_eq!(Entry::decode(b"12345"), None);
    }
}
