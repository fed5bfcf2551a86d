//! Spool files: where the heartbeat writer keeps results it cannot hand to Postgres
//! and cannot keep in memory. One append-only file of JSON lines per writer, flushed
//! and fsync'd per batch, read back in order from a committed offset. An append that
//! fails (disk full, read-only) is cut off again, so a file holds whole lines only and
//! the same rows can be appended later. Replay hands out several batches at once
//! ([`SpoolFile::read_next`]); they may be stored in any order, and the offset commits
//! only over batches stored contiguously ([`SpoolFile::land`]).
//!
//! Each file is held with an exclusive `flock` for as long as its writer lives, so
//! concurrent instances sharing a directory never write to or replay each other's file;
//! a file nobody holds was left by a process that stopped or crashed, and the next
//! writer to start adopts it and replays it. Replaying a file twice (a crash between
//! inserting a batch and deleting the file) is harmless: heartbeats are slot-keyed and
//! the writer skips keys already stored.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::Heartbeat;

const PREFIX: &str = "heartbeats-";
const SUFFIX: &str = ".jsonl";
/// How much to read at a time when replaying.
const CHUNK: u64 = 1 << 20;

pub(crate) struct SpoolFile {
    path: PathBuf,
    file: File,
    /// Everything before this offset has been inserted.
    read_offset: u64,
    /// Batches up to this offset were handed out for inserting (at least `read_offset`).
    dispatched: u64,
    /// Batches stored before one handed out earlier: start -> (end, rows).
    landed: BTreeMap<u64, (u64, u64)>,
    len: u64,
    /// Rows after `read_offset` (counted when adopted, tracked while appending).
    unread_rows: u64,
    /// The file ends in part of a line a failed append left and could not cut off.
    torn: bool,
}

impl SpoolFile {
    /// A new file for this process, named so that names sort in creation order.
    pub fn create(dir: &Path) -> io::Result<SpoolFile> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        loop {
            let name = format!(
                "{PREFIX}{:020}-{}-{}{SUFFIX}",
                chrono::Utc::now().timestamp_micros(),
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            );
            let path = dir.join(name);
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .create_new(true)
                .open(&path)?;
            // Another process may try to adopt the empty file between create and lock;
            // then we simply take another name.
            if try_lock(&file)? {
                return Ok(SpoolFile {
                    path,
                    file,
                    read_offset: 0,
                    dispatched: 0,
                    landed: BTreeMap::new(),
                    len: 0,
                    unread_rows: 0,
                    torn: false,
                });
            }
        }
    }

    /// Every spool file in `dir` that no live writer holds, oldest first, locked for
    /// this process.
    pub fn adopt_orphans(dir: &Path) -> io::Result<Vec<SpoolFile>> {
        let mut paths: Vec<PathBuf> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
            })
            .collect();
        paths.sort();
        let mut adopted = Vec::new();
        for path in paths {
            let file = match OpenOptions::new().read(true).append(true).open(&path) {
                Ok(file) => file,
                // Deleted by its owner meanwhile.
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            if !try_lock(&file)? {
                continue;
            }
            let len = file.metadata()?.len();
            let mut spool = SpoolFile {
                path,
                file,
                read_offset: 0,
                dispatched: 0,
                landed: BTreeMap::new(),
                len,
                unread_rows: 0,
                torn: false,
            };
            spool.unread_rows = spool.count_lines()?;
            adopted.push(spool);
        }
        Ok(adopted)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `rows` and fsyncs; returns the rows and bytes written. On failure (disk
    /// full, read-only) nothing of them counts as written and the file is left as it
    /// was, so the same rows can be appended again later.
    pub fn append<'a>(
        &mut self,
        rows: impl IntoIterator<Item = &'a Heartbeat>,
    ) -> io::Result<(u64, u64)> {
        let mut buf = Vec::with_capacity(64 * 1024);
        if self.torn {
            // End the unreadable tail a failed append left, so the next row starts a
            // line of its own.
            buf.push(b'\n');
        }
        let mut count = 0;
        for row in rows {
            serde_json::to_writer(&mut buf, row)?;
            buf.push(b'\n');
            count += 1;
        }
        if let Err(err) = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data())
        {
            self.cut_torn_tail();
            return Err(err);
        }
        self.len += buf.len() as u64;
        self.unread_rows += count;
        self.torn = false;
        Ok((count, buf.len() as u64))
    }

    /// A failed append may have written part of its batch (a disk filling up mid-write):
    /// cut it off. If even that fails, the part stays as one unreadable line that replay
    /// skips, and the next append starts on a new line.
    fn cut_torn_tail(&mut self) {
        if self.file.set_len(self.len).is_ok() {
            return;
        }
        if let Ok(meta) = self.file.metadata() {
            if meta.len() > self.len {
                self.len = meta.len();
                self.torn = true;
            }
        }
    }

    /// Reads the next batch of up to `max` rows after what was handed out already.
    /// Returns the rows and the byte range they came from, to [`SpoolFile::land`] once
    /// they are stored. Unreadable lines (a torn last line after a crash) are skipped.
    pub fn read_next(&mut self, max: usize) -> io::Result<(Vec<Heartbeat>, u64, u64)> {
        let start = self.dispatched;
        let mut rows = Vec::new();
        let mut skipped = 0;
        let mut buf: Vec<u8> = Vec::new();
        let mut consumed = 0usize;
        let mut file_pos = start;
        while rows.len() < max {
            if let Some(i) = buf[consumed..].iter().position(|&b| b == b'\n') {
                parse_line(
                    &buf[consumed..consumed + i],
                    &mut rows,
                    &mut skipped,
                    &self.path,
                );
                consumed += i + 1;
                continue;
            }
            if file_pos >= self.len {
                // A last line without its newline: a write cut short by a crash.
                if consumed < buf.len() {
                    parse_line(&buf[consumed..], &mut rows, &mut skipped, &self.path);
                    consumed = buf.len();
                }
                break;
            }
            let want = CHUNK.min(self.len - file_pos) as usize;
            let start = buf.len();
            buf.resize(start + want, 0);
            self.file.read_exact_at(&mut buf[start..], file_pos)?;
            file_pos += want as u64;
        }
        self.dispatched = start + consumed as u64;
        Ok((rows, start, self.dispatched))
    }

    /// Everything is handed out (in flight or stored): nothing to read for now.
    pub fn all_dispatched(&self) -> bool {
        self.dispatched >= self.len
    }

    /// Reads again from the committed offset: for when nothing of this file is in
    /// flight (after a failed insert, the batches that landed after it are simply
    /// stored again, harmlessly).
    pub fn rewind(&mut self) {
        self.dispatched = self.read_offset;
        self.landed.clear();
    }

    /// Books the batch `[start, end)`, holding `rows` rows, as stored, and commits every
    /// stored batch now contiguous with the committed offset. Returns the bytes and the
    /// rows committed.
    pub fn land(&mut self, start: u64, end: u64, rows: u64) -> (u64, u64) {
        self.landed.insert(start, (end, rows));
        let unread_before = self.unread_bytes();
        let mut committed_rows = 0;
        while let Some((end, rows)) = self.landed.remove(&self.read_offset) {
            self.read_offset = end;
            self.unread_rows = self.unread_rows.saturating_sub(rows);
            committed_rows += rows;
        }
        (unread_before - self.unread_bytes(), committed_rows)
    }

    pub fn is_drained(&self) -> bool {
        self.read_offset >= self.len
    }

    pub fn unread_bytes(&self) -> u64 {
        self.len - self.read_offset
    }

    pub fn unread_rows(&self) -> u64 {
        self.unread_rows
    }

    /// Deletes the file (everything in it is stored).
    pub fn remove(self) -> io::Result<()> {
        fs::remove_file(&self.path)
    }

    fn count_lines(&self) -> io::Result<u64> {
        let mut count = 0u64;
        let mut pos = 0u64;
        let mut buf = vec![0u8; CHUNK as usize];
        let mut last = b'\n';
        while pos < self.len {
            let want = CHUNK.min(self.len - pos) as usize;
            self.file.read_exact_at(&mut buf[..want], pos)?;
            count += buf[..want].iter().filter(|&&b| b == b'\n').count() as u64;
            last = buf[want - 1];
            pos += want as u64;
        }
        Ok(count + u64::from(last != b'\n'))
    }
}

fn parse_line(line: &[u8], rows: &mut Vec<Heartbeat>, skipped: &mut u64, path: &Path) {
    if line.iter().all(|b| b.is_ascii_whitespace()) {
        return;
    }
    match serde_json::from_slice(line) {
        Ok(row) => rows.push(row),
        Err(err) => {
            *skipped += 1;
            tracing::warn!(file = %path.display(), error = %err, "skipping an unreadable spool line");
        }
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: false when another open file holds it.
fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a valid, open descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spool file holding `n` heartbeats (one monitor, one per second), and them.
    fn spool_of(n: i64) -> (tempfile::TempDir, SpoolFile, Vec<Heartbeat>) {
        let at = chrono::Utc::now();
        let rows: Vec<Heartbeat> = (0..n)
            .map(|i| {
                // Absent optional fields read as None.
                serde_json::from_value(serde_json::json!({
                    "monitor_id": 1, "datacenter_id": 1,
                    "scheduled_at": at + chrono::Duration::seconds(i), "executed_at": at,
                    "schedule_lag_ms": 0.0,
                    "report": { "status": "up", "total_ms": 1.0, "redirect_count": 0 },
                }))
                .expect("a heartbeat")
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut file = SpoolFile::create(dir.path()).unwrap();
        file.append(&rows).unwrap();
        (dir, file, rows)
    }

    #[test]
    fn batches_stored_out_of_order_commit_only_once_contiguous() {
        let (_dir, mut file, written) = spool_of(30);
        let batches: Vec<_> = (0..3).map(|_| file.read_next(10).unwrap()).collect();
        assert!(file.all_dispatched());
        assert_eq!(batches[1].0, written[10..20]);
        let range = |i: usize| (batches[i].1, batches[i].2);
        let ((s0, e0), (s1, e1), (s2, e2)) = (range(0), range(1), range(2));
        // The last lands first: nothing commits until the ones before it are stored.
        assert_eq!(file.land(s2, e2, 10), (0, 0));
        assert_eq!(file.unread_rows(), 30);
        assert_eq!(file.land(s0, e0, 10), (e0 - s0, 10));
        assert_eq!(file.land(s1, e1, 10), (e2 - s1, 20));
        assert!(file.is_drained());
        assert_eq!(file.unread_rows(), 0);
    }

    #[test]
    fn a_rewind_reads_again_from_the_committed_offset() {
        let (_dir, mut file, written) = spool_of(20);
        let (_, s0, _) = file.read_next(10).unwrap();
        let (_, s1, e1) = file.read_next(10).unwrap();
        // The second batch was stored, the first failed: after a rewind both are read
        // again (the second is a harmless duplicate), and nothing was committed.
        assert_eq!(file.land(s1, e1, 10), (0, 0));
        file.rewind();
        let (again, start, _) = file.read_next(100).unwrap();
        assert_eq!(start, s0);
        assert_eq!(again, written);
        assert_eq!(file.unread_rows(), 20);
    }
}
