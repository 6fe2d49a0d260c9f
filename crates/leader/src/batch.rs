//! Group commit: which waiting requests go into the next record. Pure: no I/O, no clock.
//!
//! While one record is in flight through Raft, new requests queue up. When the writer is free
//! it takes the queue's head and keeps adding requests while the batch stays under both limits.
//! A single request larger than the byte limit still goes alone (it is never starved).

/// Limits on one group-committed batch.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// At most this many client requests per record.
    pub max_requests: usize,
    /// At most this many bytes of SQL text and parameters per record (approximate).
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_requests: 512, max_bytes: 8 << 20 }
    }
}

/// Accumulates requests for one batch.
#[derive(Debug, Default)]
pub struct Batch {
    /// Requests taken so far.
    count: usize,
    /// Their approximate size in bytes.
    bytes: usize,
}

impl Batch {
    /// Whether a request of `size` bytes may join the batch; if so, counts it in.
    pub fn admit(&mut self, limits: &Limits, size: usize) -> bool {
        let fits = self.count == 0
            || (self.count < limits.max_requests && self.bytes + size <= limits.max_bytes);
        if fits {
            self.count += 1;
            self.bytes += size;
        }
        fits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_request_always_admitted() {
        let limits = Limits { max_requests: 2, max_bytes: 10 };
        let mut b = Batch::default();
        assert!(b.admit(&limits, 100));
        assert!(!b.admit(&limits, 1));
    }

    #[test]
    fn count_and_bytes_limit() {
        let limits = Limits { max_requests: 3, max_bytes: 10 };
        let mut b = Batch::default();
        assert!(b.admit(&limits, 4));
        assert!(b.admit(&limits, 4));
        assert!(!b.admit(&limits, 4), "bytes would reach 12 > 10");
        assert!(b.admit(&limits, 2));
        assert!(!b.admit(&limits, 0), "count limit 3 reached");
    }
}
