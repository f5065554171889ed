//! The audit spool on disk: events wait here, fsync'd, until the coordinator acknowledges them.
//!
//! The spool is a directory of segment files (`00000000000000000001.seg`, …), each a run of
//! records `length (u32 BE) | checksum (8 bytes) | postcard event`. Appends go to the newest
//! segment, which holds at most [`MAX_AUDIT_BATCH`] records, so one segment is one upload. The
//! uploader *seals* the oldest segment before reading it (appends move on to a new one), and
//! deletes the whole file once the coordinator has acknowledged it — no partial rewrites.
//!
//! Every append is `fsync`ed before it returns. A crash can still tear the last record of the
//! newest segment (a length written, its bytes not); when the spool is opened each segment is
//! read through, and everything from the first record that is short or fails its checksum is
//! cut off (and logged), so one torn write never poisons the events before it.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use mesh_proto::audit::{
    AuditEvent, MAX_AUDIT_BATCH, MAX_AUDIT_EVENT_BYTES, decode_event, record_checksum,
};

use crate::error::Error;

/// Bytes before each record's event: its length and checksum.
const RECORD_HEADER: usize = 12;
/// The most bytes one record takes on disk.
pub const MAX_RECORD: u64 = (RECORD_HEADER + MAX_AUDIT_EVENT_BYTES) as u64;
/// Segment file names end with this.
const SEGMENT_SUFFIX: &str = ".seg";

/// One segment file's bookkeeping.
#[derive(Debug)]
struct Segment {
    seq: u64,
    bytes: u64,
    records: usize,
}

/// The spool directory, bounded to `limit` bytes of segment files.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    limit: u64,
    used: u64,
    /// Oldest first.
    segments: VecDeque<Segment>,
    /// The newest segment, open for appends; `None` when it is sealed (or there is none).
    open: Option<File>,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, keeping the valid records of every
    /// segment and cutting a torn tail.
    pub fn open(dir: &Path, limit: u64) -> Result<Self, Error> {
        let io = |what: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { what, path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("cannot create", dir))?;
        let mut seqs = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io("cannot read", dir))? {
            let entry = entry.map_err(io("cannot read", dir))?;
            let name = entry.file_name();
            let seq = name
                .to_str()
                .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(seq) = seq {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let mut spool = Self {
            dir: dir.to_owned(),
            limit,
            used: 0,
            segments: VecDeque::new(),
            open: None,
        };
        for seq in seqs {
            let path = spool.segment_path(seq);
            let (events, valid) = read_segment(&path)?;
            let len = std::fs::metadata(&path)
                .map_err(io("cannot read", &path))?
                .len();
            if valid < len {
                tracing::warn!(
                    "audit spool {}: dropping {} bytes after the last whole record (a write \
                     torn by a crash)",
                    path.display(),
                    len - valid
                );
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io("cannot open", &path))?;
                file.set_len(valid)
                    .and_then(|()| file.sync_all())
                    .map_err(io("cannot truncate", &path))?;
            }
            if events.is_empty() {
                std::fs::remove_file(&path).map_err(io("cannot remove", &path))?;
                continue;
            }
            spool.used += valid;
            spool.segments.push_back(Segment {
                seq,
                bytes: valid,
                records: events.len(),
            });
        }
        sync_dir(dir)?;
        Ok(spool)
    }

    /// Bytes the segment files take.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// The most bytes the segment files may take.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether no event waits.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Bytes a record of an event encoded as `event` takes.
    pub fn record_len(event: &[u8]) -> u64 {
        (RECORD_HEADER + event.len()) as u64
    }

    fn segment_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}{SEGMENT_SUFFIX}"))
    }

    /// Appends one encoded event and fsyncs it. The caller has checked that it fits the limit.
    pub fn append(&mut self, event: &[u8]) -> Result<(), Error> {
        let full = self
            .segments
            .back()
            .is_none_or(|s| s.records >= MAX_AUDIT_BATCH);
        if self.open.is_none() || full {
            let seq = self.segments.back().map_or(1, |s| s.seq + 1);
            let path = self.segment_path(seq);
            let file = OpenOptions::new()
                .append(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|source| Error::Io {
                    what: "cannot create",
                    path: path.clone(),
                    source,
                })?;
            sync_dir(&self.dir)?;
            self.segments.push_back(Segment {
                seq,
                bytes: 0,
                records: 0,
            });
            self.open = Some(file);
        }
        let (Some(file), Some(segment)) = (self.open.as_mut(), self.segments.back_mut()) else {
            return Err(Error::Stream("the audit spool has no open segment".into()));
        };
        let len = u32::try_from(event.len())
            .map_err(|_| Error::Stream("an audit event too large to spool".into()))?;
        let mut record = Vec::with_capacity(RECORD_HEADER + event.len());
        record.extend_from_slice(&len.to_be_bytes());
        record.extend_from_slice(&record_checksum(event));
        record.extend_from_slice(event);
        let path = self
            .dir
            .join(format!("{:020}{SEGMENT_SUFFIX}", segment.seq));
        if let Err(source) = file.write_all(&record).and_then(|()| file.sync_data()) {
            // Cut what may have been written and append nowhere near it again.
            let _ = file.set_len(segment.bytes);
            self.open = None;
            return Err(Error::Io {
                what: "cannot write",
                path,
                source,
            });
        }
        segment.bytes += record.len() as u64;
        segment.records += 1;
        self.used += record.len() as u64;
        Ok(())
    }

    /// The oldest segment's sequence number and events, sealing it first if appends were still
    /// going to it (so that what is read is all that will be deleted).
    pub fn oldest(&mut self) -> Result<Option<(u64, Vec<AuditEvent>)>, Error> {
        let Some(oldest) = self.segments.front() else {
            return Ok(None);
        };
        let seq = oldest.seq;
        if self.segments.len() == 1 {
            self.open = None;
        }
        let (events, _) = read_segment(&self.segment_path(seq))?;
        Ok(Some((seq, events)))
    }

    /// Deletes segment `seq` (its events were acknowledged).
    pub fn remove(&mut self, seq: u64) -> Result<(), Error> {
        let Some(index) = self.segments.iter().position(|s| s.seq == seq) else {
            return Ok(());
        };
        if index + 1 == self.segments.len() {
            self.open = None;
        }
        let path = self.segment_path(seq);
        std::fs::remove_file(&path).map_err(|source| Error::Io {
            what: "cannot remove",
            path,
            source,
        })?;
        sync_dir(&self.dir)?;
        if let Some(segment) = self.segments.remove(index) {
            self.used = self.used.saturating_sub(segment.bytes);
        }
        Ok(())
    }
}

/// The events of a segment and the length of its valid prefix: reading stops at the first
/// record that is short, fails its checksum or does not decode.
fn read_segment(path: &Path) -> Result<(Vec<AuditEvent>, u64), Error> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|source| Error::Io {
            what: "cannot read",
            path: path.to_owned(),
            source,
        })?;
    let mut events = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + RECORD_HEADER) {
        let mut len = [0; 4];
        len.copy_from_slice(&header[..4]);
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_AUDIT_EVENT_BYTES {
            break;
        }
        let Some(event) = bytes.get(at + RECORD_HEADER..at + RECORD_HEADER + len) else {
            break;
        };
        if header[4..] != record_checksum(event) {
            break;
        }
        let Ok(event) = decode_event(event) else {
            break;
        };
        events.push(event);
        at += RECORD_HEADER + len;
    }
    Ok((events, at as u64))
}

/// Makes a directory's entries (a created or removed file) durable.
fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Io {
            what: "cannot sync",
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mesh_proto::UnixTime;
    use mesh_proto::audit::{AuditId, AuditKind, encode_event};

    pub(crate) fn event(n: u8) -> AuditEvent {
        AuditEvent {
            id: AuditId::from_bytes([n; 16]),
            at: UnixTime::from_secs(u64::from(n)),
            kind: AuditKind::Refused,
            session: None,
            user: None,
            device: None,
            login: Some("root".into()),
            temporary: false,
            grant: None,
            exit: None,
            bytes_up: 0,
            bytes_down: 0,
            reason: format!("reason {n}"),
        }
    }

    fn append(spool: &mut Spool, n: u8) {
        spool.append(&encode_event(&event(n)).unwrap()).unwrap();
    }

    fn all(spool: &mut Spool) -> Vec<AuditEvent> {
        let mut out = Vec::new();
        let dir = spool.dir.clone();
        let mut reopened = Spool::open(&dir, spool.limit).unwrap();
        while let Some((seq, events)) = reopened.oldest().unwrap() {
            out.extend(events);
            reopened.remove(seq).unwrap();
        }
        out
    }

    #[test]
    fn events_survive_a_restart_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        for n in 0..100 {
            append(&mut spool, n);
        }
        let used = spool.used();
        drop(spool);
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.used(), used);
        // More than one batch: segments rotate at MAX_AUDIT_BATCH records.
        let (_, first) = spool.oldest().unwrap().unwrap();
        assert_eq!(first.len(), MAX_AUDIT_BATCH);
        let events = all(&mut spool);
        assert_eq!(events, (0..100).map(event).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_records_before_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        for n in 0..3 {
            append(&mut spool, n);
        }
        drop(spool);
        let path = dir.path().join(format!("{:020}.seg", 1));
        let whole = std::fs::read(&path).unwrap();
        // A crash mid-append: a length and some of the next record's bytes, or zeros.
        for tail in [vec![0, 0, 0, 40, 1, 2, 3], vec![0; 30], vec![0xff; 5]] {
            let mut torn = whole.clone();
            torn.extend_from_slice(&tail);
            std::fs::write(&path, &torn).unwrap();
            let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), whole, "cut back");
            assert_eq!(spool.used(), whole.len() as u64);
            // Appending after the cut works, and reads back whole.
            append(&mut spool, 9);
            let (_, events) = spool.oldest().unwrap().unwrap();
            assert_eq!(events, vec![event(0), event(1), event(2)]);
            drop(spool);
            let _ = std::fs::remove_file(dir.path().join(format!("{:020}.seg", 2)));
        }
        // A flipped byte inside the last record: its checksum fails, the two before it stay.
        let mut flipped = whole.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 0x40;
        std::fs::write(&path, &flipped).unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let (_, events) = spool.oldest().unwrap().unwrap();
        assert_eq!(events, vec![event(0), event(1)]);
    }

    #[test]
    fn removing_an_acknowledged_segment_frees_its_bytes_and_seals_appends_away_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        append(&mut spool, 1);
        let (seq, events) = spool.oldest().unwrap().unwrap();
        assert_eq!(events, vec![event(1)]);
        // Recorded while the batch is on its way: goes to a new segment, not the sealed one.
        append(&mut spool, 2);
        spool.remove(seq).unwrap();
        let (_, events) = spool.oldest().unwrap().unwrap();
        assert_eq!(events, vec![event(2)]);
        let len = spool.used();
        assert!(len > 0);
        assert_eq!(all(&mut spool), vec![event(2)]);
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(spool.is_empty());
        assert_eq!(spool.used(), 0);
        assert!(spool.oldest().unwrap().is_none());
    }
}
