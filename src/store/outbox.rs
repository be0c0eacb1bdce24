//! The MQTT outbox: every state message is written here (in the same sled database as the
//! windows, flushed with them) before it is published, and removed only when the broker has
//! acknowledged it (QoS 1 PUBACK). A broker outage or a gateway restart therefore loses
//! nothing: the link re-sends whatever is still here, oldest first, on every (re)connection.
//!
//! Keys are a global sequence number (big-endian u64), so iteration order is publish order —
//! in particular, per-sensor order is kept. The outbox is bounded (`cap` messages): when full,
//! the oldest message is dropped and counted; the window itself stays in the store.
//!
//! "Stored before announced" holds through a full disk: the link publishes only messages up to
//! the *durable* mark ([`Outbox::durable_after`]), which the writer advances
//! ([`Outbox::mark_durable`]) only after a flush that succeeded. A message written to sled's
//! memory but never made durable (the disk was full) is never announced.

use std::sync::atomic::{AtomicU64, Ordering};

use super::StoreError;

/// Persistent FIFO of (topic, payload) messages. Cheap to clone (sled trees are handles).
#[derive(Clone)]
pub struct Outbox {
    tree: sled::Tree,
    next: std::sync::Arc<AtomicU64>,
    cap: u64,
    dropped: std::sync::Arc<AtomicU64>,
    /// Highest sequence number known to be on disk.
    durable: std::sync::Arc<AtomicU64>,
    path: std::path::PathBuf,
}

/// One queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMsg {
    pub seq: u64,
    pub topic: String,
    pub payload: Vec<u8>,
}

fn decode(seq: u64, v: &[u8]) -> Option<OutMsg> {
    let n = u16::from_le_bytes(v.get(..2)?.try_into().ok()?) as usize;
    let topic = std::str::from_utf8(v.get(2..2 + n)?).ok()?.to_string();
    Some(OutMsg {
        seq,
        topic,
        payload: v[2 + n..].to_vec(),
    })
}

impl Outbox {
    pub(super) fn open(
        db: &sled::Db,
        path: &std::path::Path,
        cap: u64,
    ) -> Result<Outbox, StoreError> {
        let err = |e: sled::Error| StoreError::Db {
            path: path.to_path_buf(),
            source: e,
        };
        let tree = db.open_tree("outbox").map_err(err)?;
        let next = match tree.last().map_err(err)? {
            Some((k, _)) => u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])) + 1,
            None => 1,
        };
        Ok(Outbox {
            tree,
            next: std::sync::Arc::new(AtomicU64::new(next)),
            cap: cap.max(1),
            dropped: std::sync::Arc::new(AtomicU64::new(0)),
            // Whatever was read back from disk is durable.
            durable: std::sync::Arc::new(AtomicU64::new(next - 1)),
            path: path.to_path_buf(),
        })
    }

    fn err(&self, e: sled::Error) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            source: e,
        }
    }

    /// Queue a message; returns its sequence number. Drops the oldest beyond the cap.
    pub fn push(&self, topic: &str, payload: &[u8]) -> Result<u64, StoreError> {
        let seq = self.next.fetch_add(1, Ordering::SeqCst);
        let mut v = Vec::with_capacity(2 + topic.len() + payload.len());
        v.extend_from_slice(&(topic.len().min(u16::MAX as usize) as u16).to_le_bytes());
        v.extend_from_slice(&topic.as_bytes()[..topic.len().min(u16::MAX as usize)]);
        v.extend_from_slice(payload);
        self.tree
            .insert(seq.to_be_bytes(), v)
            .map_err(|e| self.err(e))?;
        while self.tree.len() as u64 > self.cap {
            match self.tree.pop_min().map_err(|e| self.err(e))? {
                Some(_) => {
                    let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if n == 1 || n.is_multiple_of(1000) {
                        tracing::warn!(
                            dropped_total = n,
                            cap = self.cap,
                            "MQTT outbox full: oldest undelivered state message dropped (the window stays in the store)"
                        );
                    }
                }
                None => break,
            }
        }
        Ok(seq)
    }

    /// Messages with `seq > after`, oldest first, at most `limit`. Undecodable entries are
    /// removed (and logged) rather than blocking the queue forever.
    pub fn after(&self, after: u64, limit: usize) -> Result<Vec<OutMsg>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree.range((after.saturating_add(1)).to_be_bytes()..) {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            let seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            match decode(seq, &v) {
                Some(m) => out.push(m),
                None => {
                    tracing::error!(seq, "corrupt outbox entry removed");
                    let _ = self.tree.remove(&k);
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// [`after`](Self::after), limited to messages up to the durable mark: what may be
    /// published.
    pub fn durable_after(&self, after: u64, limit: usize) -> Result<Vec<OutMsg>, StoreError> {
        let upto = self.durable.load(Ordering::SeqCst);
        if after >= upto {
            return Ok(Vec::new());
        }
        let mut out = self.after(after, limit)?;
        out.retain(|m| m.seq <= upto);
        Ok(out)
    }

    /// Everything pushed up to `seq` is on disk (call after a flush that succeeded).
    pub fn mark_durable(&self, seq: u64) {
        self.durable.fetch_max(seq, Ordering::SeqCst);
    }

    /// The broker acknowledged `seq`.
    pub fn remove(&self, seq: u64) -> Result<(), StoreError> {
        self.tree
            .remove(seq.to_be_bytes())
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Undelivered messages.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Messages dropped because the outbox was full, since this process opened it.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Write to disk and, if that worked, mark everything pushed so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        let upto = self.next.load(Ordering::SeqCst).saturating_sub(1);
        self.tree.flush().map(|_| ()).map_err(|e| self.err(e))?;
        self.mark_durable(upto);
        Ok(())
    }
}
