//! The audit log: one JSON line per exchange decision, for security teams,
//! joinable with CloudTrail through the session name and the access key ID.
//!
//! Lines are in the structured format Google Cloud Logging reads from a
//! container's output (`severity`, `message`, `time`,
//! `logging.googleapis.com/trace`, `logging.googleapis.com/spanId`,
//! `logging.googleapis.com/labels`), and go to their own sink, apart from the
//! diagnostic logs on stderr:
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `audit.sink` | `stdout` | `stdout`, `stderr` or `file` |
//! | `audit.path` | required with `sink = "file"` | the file, appended to (created 0640); relative to the config file's folder |
//! | `audit.gcp_project_id` | none | the Google Cloud project of the traces, for `logging.googleapis.com/trace` = `projects/ID/traces/TRACE_ID` (without it, the bare trace ID) |
//!
//! **Fail closed.** A call gets its answer only once its record is written
//! (handed to the OS with `write(2)`; no `fsync`). If the sink cannot be
//! written (disk full, a closed pipe) or the writer is more than
//! [`ACK_TIMEOUT`] behind, the call fails with UNAVAILABLE
//! ([`crate::Error::AuditUnavailable`]) instead: no credentials leave without
//! a record. A record can exist for credentials then withheld (written, but
//! confirmed too late), never the reverse.
//!
//! **Cost.** Records are serialised by the calling task, which then writes
//! its record itself when the write cannot block, and otherwise hands it to
//! a blocking thread. The runtime's workers never block on the sink:
//!
//! - a **pipe** (stdout in a container: the runtime's log collector reads the
//!   other end) or a **socket** (stdout under systemd: journald) is written
//!   by the calling task, under a lock that keeps lines whole, when the write
//!   cannot block: a pipe through a second, non-blocking open of it
//!   (`Sink::pipe`), a socket with `MSG_DONTWAIT`, each for what it takes
//!   at once. No other task or thread is involved, so the answer
//!   goes out in the same poll;
//! - everything else (a regular file, a terminal, a test's writer), and
//!   whatever a pipe or a socket cannot take at once (its reader is behind),
//!   goes to one blocking thread (`spawn_blocking`) at a time, which writes
//!   whatever has queued up meanwhile in one `write` per round, confirms
//!   those records, and hands the sink back when nothing is left. At most
//!   [`QUEUE`] records wait for it; more fail closed at once.
//!
//! **Group commit** (issue 16): the call that finds the sink free becomes
//! the leader: it takes the sink, writes its own line outside the lock, and
//! then writes whatever other calls queued meanwhile as one batch (one
//! `write(2)`, so one wake-up of the reader), round after round (at most
//! [`LEADER_ROUNDS`]), confirming everyone in each batch. A call that finds
//! the sink held joins the queue and waits for its batch. Lines keep their
//! order, one per decision; a failed write fails every waiter in its batch.
//! With one caller at a time this is exactly the inline write above.
//!
//! Issued records are **deferred** one step: the leader queues its own line
//! and yields once (`tokio::task::yield_now`) before it writes, so the
//! calls its worker has ready run first and their records join its batch.
//! Without that, on two cores, a second writer rarely arrived during the
//! leader's write and batches stayed near one record (BENCHMARKS.md, issue
//! 16). A leader cancelled while it yields still writes the batch.
//!
//! The earlier design (every record through a writer task and a blocking
//! thread) cost about a quarter of cache-hit throughput on 2 vCPUs: the
//! hand-offs and wake-ups, on both sides of the connection (BENCHMARKS.md).
//! `tokenbridge_audit_writes_total` counts writes by path (`inline`,
//! `blocking`): blocking writes to a pipe mean its reader is behind.
//!
//! Refusals before any decision about an identity (rate, concurrency and
//! size limits, [`crate::Error::is_flood_control`]) are counted in metrics,
//! not audited. Every other call is: issued, refused (bad token, no binding,
//! bad argument, STS refusal) or failed (an upstream unavailable).
//!
//! **Refusals never wait for the sink** (issue 15): only issued credentials
//! are fail-closed on their record. A refused or failed call's record is
//! written at once when the sink takes it without blocking; otherwise it is
//! queued for the blocking thread without anyone waiting on it, at most
//! [`REFUSAL_QUEUE`] of them. Beyond that, while the sink is behind,
//! refusals are only counted by `outcome`, and the next round of the
//! blocking thread writes one `tokenbridge.audit_summary` line with the
//! counts before anything else (`tokenbridge_audit_records_total{result=
//! "summarised"}` counts them too). So a flood of garbage tokens against a
//! slow sink takes neither the queue room nor the concurrency permits that
//! honest calls need, and its size is still on record.

use std::{fs::File, io::Write, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::oneshot;
use tracing::{error, info};

use crate::observability::metrics::Metrics;

pub mod recent;
mod record;

pub use record::{AdminEntry, Decision, Entry};

/// What an exchange established on its way, as far as it got: for the
/// audit log. Filled in by
/// [`Exchange::exchange_recorded`](crate::exchange::Exchange::exchange_recorded).
#[derive(Debug, Default)]
pub struct Facts {
    /// The verified token's claims (none if it was not verified).
    pub claims: Option<crate::google::jwt::Claims>,
    /// The role the policy allows the caller.
    pub role_arn: Option<String>,
    /// The decision: the bindings that grant the role, the durations they
    /// allow, the session scoping.
    pub decision: Option<tokenbridge_policy::Decision>,
    /// The credentials' lifetime asked of STS.
    pub duration_seconds: Option<u32>,
    /// The session name given to STS.
    pub role_session_name: Option<String>,
}

/// How long a call waits for its record to be written before failing
/// closed.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Records waiting for the blocking thread at most; more fail closed.
pub const QUEUE: usize = 4096;
/// Refusals waiting for the blocking thread at most (part of [`QUEUE`]);
/// more are counted and summarised.
pub const REFUSAL_QUEUE: usize = 256;

/// Where audit records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    /// The process's standard output.
    Stdout,
    /// The process's standard error, among the diagnostic logs.
    Stderr,
    /// A file, appended to.
    File(PathBuf),
}

/// `[audit]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Where records go.
    pub sink: AuditSink,
    /// The Google Cloud project whose Cloud Trace holds the traces.
    pub gcp_project_id: Option<String>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            sink: AuditSink::Stdout,
            gcp_project_id: None,
        }
    }
}

/// Why the audit log could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The file sink cannot be opened for appending.
    #[error("cannot open the audit log {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Records queued behind the holder of the sink (one, or the unwritten rest
/// of a batch), and who waits for them (no one, for a refusal).
struct Pending {
    line: Vec<u8>,
    waiters: Vec<oneshot::Sender<bool>>,
    /// Refusals in it (no one waits for them).
    unwaited: usize,
}

/// The writer's state, shared by the calling tasks and the blocking thread.
struct Writer {
    state: std::sync::Mutex<WriterState>,
    metrics: Arc<Metrics>,
}

struct WriterState {
    /// The sink, unless the blocking thread has it (then `pending` holds
    /// what waits for it; otherwise `pending` is empty).
    sink: Option<Sink>,
    pending: Vec<Pending>,
    /// A write failed: a partial line may be in the sink, so the next
    /// write starts on a new line.
    failing: bool,
    /// The blocking thread stopped with the sink (it panicked): nothing
    /// more can be written.
    lost: bool,
    /// Refusals in `pending`.
    refusals_pending: usize,
    /// Refusals at most in `pending`.
    refusal_queue: usize,
    /// Refusals not queued (the sink was behind), by outcome: the next
    /// round writes them as one summary line.
    summarised: std::collections::BTreeMap<&'static str, u64>,
}

/// The audit log: writes records (or has them written) and says whether
/// they were.
pub struct AuditLog {
    writer: Arc<Writer>,
    gcp_project_id: Option<String>,
    metrics: Arc<Metrics>,
    ack_timeout: Duration,
    /// The console's ring of recent decisions, if attached.
    recent: Option<Arc<recent::RecentDecisions>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("gcp_project_id", &self.gcp_project_id)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens the sink (stdout and stderr as duplicates of their
    /// descriptors, so a closed one is an error here rather than records
    /// silently lost). Records are written within a Tokio runtime.
    pub fn open(config: &AuditConfig, metrics: Arc<Metrics>) -> Result<Self, AuditError> {
        use std::os::fd::AsFd;
        // A duplicate of the descriptor: the same open file, written
        // without the standard library's buffer and lock.
        fn duplicate(fd: impl AsFd) -> std::io::Result<File> {
            fd.as_fd().try_clone_to_owned().map(File::from)
        }
        let (file, path) = match &config.sink {
            AuditSink::Stdout => (duplicate(std::io::stdout()), PathBuf::from("(stdout)")),
            AuditSink::Stderr => (duplicate(std::io::stderr()), PathBuf::from("(stderr)")),
            AuditSink::File(path) => {
                use std::os::unix::fs::OpenOptionsExt as _;
                (
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .mode(0o640)
                        .open(path),
                    path.clone(),
                )
            }
        };
        let file = file.map_err(|source| AuditError::Open { path, source })?;
        Ok(Self::with_sink(
            Sink::of_file(file),
            config.gcp_project_id.clone(),
            metrics,
        ))
    }

    /// An audit log writing to `out`, always on a blocking thread (tests).
    /// Records are written within a Tokio runtime.
    pub fn with_writer(
        out: Box<dyn Write + Send>,
        gcp_project_id: Option<String>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self::with_sink(Sink::Writer(out), gcp_project_id, metrics)
    }

    fn with_sink(sink: Sink, gcp_project_id: Option<String>, metrics: Arc<Metrics>) -> Self {
        let writer = Arc::new(Writer {
            state: std::sync::Mutex::new(WriterState {
                sink: Some(sink),
                pending: Vec::new(),
                failing: false,
                lost: false,
                refusals_pending: 0,
                refusal_queue: REFUSAL_QUEUE,
                summarised: std::collections::BTreeMap::new(),
            }),
            metrics: metrics.clone(),
        });
        Self {
            writer,
            gcp_project_id,
            metrics,
            ack_timeout: ACK_TIMEOUT,
            recent: None,
        }
    }

    /// Also keeps every exchange decision in `recent` (the console's ring;
    /// see [`recent`]). Without it, writing costs nothing more.
    pub fn with_recent(mut self, recent: Arc<recent::RecentDecisions>) -> Self {
        self.recent = Some(recent);
        self
    }

    /// Waits `timeout` rather than [`ACK_TIMEOUT`] for a record to be
    /// written.
    pub fn with_ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// Queues at most `limit` refusals for the blocking thread rather than
    /// [`REFUSAL_QUEUE`].
    pub fn with_refusal_queue(self, limit: usize) -> Self {
        self.writer.lock().refusal_queue = limit.min(QUEUE);
        self
    }

    /// Writes `entry`. Issued credentials: true once the record is written,
    /// false if it could not be (the caller must then fail closed). A
    /// refusal is written, queued or summarised without waiting (see the
    /// module's documentation), and this is true unless the sink is
    /// failing.
    pub async fn write(&self, entry: &Entry<'_>) -> bool {
        let line = entry.to_line(self.gcp_project_id.as_deref());
        let written = if entry.decision == Decision::Allow {
            self.write_line(line).await
        } else {
            self.write_unwaited(line, entry.outcome)
        };
        if let Some(recent) = &self.recent {
            recent.record(entry, written);
        }
        written
    }

    /// Waits until every record handed in before this call is written (or
    /// has failed): on shutdown, for the refusals no call waited for.
    pub async fn flush(&self) {
        if let Some(done) = self.writer.write(Vec::new()) {
            let _ = tokio::time::timeout(self.ack_timeout, done).await;
        }
    }

    /// Writes one policy admin call's record; `true` once it is written. A
    /// refused call's record is written like an exchange refusal's (no
    /// waiting; queued or summarised when the sink is behind).
    pub async fn write_admin(&self, entry: &AdminEntry<'_>) -> bool {
        let line = entry.to_line();
        if entry.code == "OK" {
            return self.write_line(line).await;
        }
        self.write_unwaited(line, "admin_refused")
    }

    fn write_unwaited(
        &self,
        line: Result<Vec<u8>, serde_json::Error>,
        outcome: &'static str,
    ) -> bool {
        match line {
            Ok(line) => {
                let result = self.writer.write_refusal(line, outcome);
                self.metrics.audit_record(result);
                result != "failed"
            }
            Err(e) => {
                error!(error = %e, "cannot serialise an audit record");
                self.metrics.audit_record("failed");
                false
            }
        }
    }

    async fn write_line(&self, line: Result<Vec<u8>, serde_json::Error>) -> bool {
        let confirmed = |confirmed| async move {
            matches!(
                tokio::time::timeout(self.ack_timeout, confirmed).await,
                Ok(Ok(true))
            )
        };
        let written = match line {
            Ok(line) => match self.writer.lead_or_join(line) {
                Lead::Done(written) => written,
                Lead::Join(rx) => confirmed(rx).await,
                Lead::Leader(leading, rx) => {
                    // The other calls this worker has ready run first and
                    // queue their records behind ours: one write for all.
                    tokio::task::yield_now().await;
                    leading.finish();
                    confirmed(rx).await
                }
            },
            Err(e) => {
                error!(error = %e, "cannot serialise an audit record");
                false
            }
        };
        self.metrics
            .audit_record(if written { "written" } else { "failed" });
        written
    }
}

/// What a record someone waits for became: written or failed already,
/// queued behind the holder of the sink, or queued first with the sink
/// taken by this call, which writes the batch once the calls ready on its
/// worker had their turn ([`Leading`]).
enum Lead {
    Done(bool),
    Join(oneshot::Receiver<bool>),
    Leader(Leading, oneshot::Receiver<bool>),
}

/// The sink, held by the call that leads the next batch. Dropped unused
/// (the leading call was cancelled while it yielded), it still writes the
/// batch and hands the sink back, so no record and no sink is lost.
struct Leading {
    writer: Arc<Writer>,
    sink: Option<Sink>,
}

impl Leading {
    /// Writes the batch (see [`Writer::release`]).
    fn finish(mut self) {
        self.release();
    }

    fn release(&mut self) {
        if let Some(sink) = self.sink.take() {
            let state = self.writer.lock();
            self.writer.release(state, sink);
        }
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        self.release();
    }
}

impl Writer {
    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        // Nothing under this lock can leave the state half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A record someone waits for, written at once if the sink is free:
    /// `None` once written (or failed), else when it will have been.
    fn write(self: &Arc<Self>, line: Vec<u8>) -> Option<oneshot::Receiver<bool>> {
        match self.submit(line, None) {
            Submitted::Later(confirmed) => Some(confirmed),
            Submitted::Now(_) | Submitted::Queued | Submitted::Summarised => None,
        }
    }

    /// A record someone waits for (issued credentials), by **deferred
    /// group commit**: if the sink is free, this call takes it and queues
    /// its line first; it writes the queue once the other calls its worker
    /// has ready ran (a `yield_now`), so the records they produce meanwhile
    /// share its `write(2)` and its reader's wake-up. If the sink is held,
    /// the line joins the queue.
    fn lead_or_join(self: &Arc<Self>, line: Vec<u8>) -> Lead {
        let mut state = self.lock();
        if state.lost {
            return Lead::Done(false);
        }
        let Some(sink) = state.sink.take() else {
            return match Self::enqueue(&mut state, line, None) {
                Submitted::Later(rx) => Lead::Join(rx),
                _ => Lead::Done(false),
            };
        };
        let (tx, rx) = oneshot::channel();
        state.pending.push(Pending::waited(line, tx));
        drop(state);
        Lead::Leader(
            Leading {
                writer: self.clone(),
                sink: Some(sink),
            },
            rx,
        )
    }

    /// A refusal's record: `written`, `queued` (no one waits for it),
    /// `summarised` (only counted: more than `refusal_queue` wait) or
    /// `failed`.
    fn write_refusal(self: &Arc<Self>, line: Vec<u8>, outcome: &'static str) -> &'static str {
        match self.submit(line, Some(outcome)) {
            Submitted::Now(true) => "written",
            Submitted::Now(false) => "failed",
            Submitted::Later(_) | Submitted::Queued => "queued",
            Submitted::Summarised => "summarised",
        }
    }

    /// Group commit. If nobody holds the sink, this call becomes the
    /// leader: it takes the sink, writes its line without holding the lock
    /// (a write that cannot block), then writes whatever other calls queued
    /// meanwhile as one batch, round after round, and hands the sink back.
    /// If the sink is held (by a leader or the blocking thread), the line
    /// joins the queue and the holder writes it with the next batch.
    fn submit(self: &Arc<Self>, mut line: Vec<u8>, refusal: Option<&'static str>) -> Submitted {
        let mut state = self.lock();
        if state.lost {
            return Submitted::Now(false);
        }
        let Some(mut sink) = state.sink.take() else {
            return Self::enqueue(&mut state, line, refusal);
        };
        let new_line = state.failing;
        drop(state);
        if new_line {
            line.insert(0, b'\n');
        }
        let result = sink.write_now(&line);
        let mut state = self.lock();
        let mine = match result {
            Ok(n) if n == line.len() => {
                self.metrics.audit_write("inline");
                state.writable_again();
                Submitted::Now(true)
            }
            Ok(n) => {
                if n > 0 {
                    // Part of the line is in: the rest must follow it.
                    state.writable_again();
                } else if new_line {
                    // The blocking thread starts on a new line itself.
                    line.remove(0);
                }
                line.drain(..n);
                // The rest goes first, ahead of what queued meanwhile.
                let (pending, mine) = match refusal {
                    None => {
                        let (tx, rx) = oneshot::channel();
                        (Pending::waited(line, tx), Submitted::Later(rx))
                    }
                    Some(_) => {
                        state.refusals_pending += 1;
                        (Pending::unwaited(line), Submitted::Queued)
                    }
                };
                state.pending.insert(0, pending);
                mine
            }
            Err(e) => {
                state.failed(&e);
                Submitted::Now(false)
            }
        };
        self.release(state, sink);
        mine
    }

    /// Queues `line` behind the holder of the sink.
    fn enqueue(state: &mut WriterState, line: Vec<u8>, refusal: Option<&'static str>) -> Submitted {
        match refusal {
            None if state.pending.len() >= QUEUE => Submitted::Now(false),
            None => {
                let (tx, rx) = oneshot::channel();
                state.pending.push(Pending::waited(line, tx));
                Submitted::Later(rx)
            }
            Some(outcome)
                if state.refusals_pending >= state.refusal_queue
                    || state.pending.len() >= QUEUE =>
            {
                *state.summarised.entry(outcome).or_default() += 1;
                Submitted::Summarised
            }
            Some(_) => {
                state.refusals_pending += 1;
                state.pending.push(Pending::unwaited(line));
                Submitted::Queued
            }
        }
    }

    /// The leader's rounds: writes what queued while it wrote, as one batch
    /// per round, while the sink takes it without blocking; then hands the
    /// sink back, or to the blocking thread with what the sink did not take
    /// (or after [`LEADER_ROUNDS`], so no call leads for long).
    fn release<'a>(
        self: &'a Arc<Self>,
        mut state: std::sync::MutexGuard<'a, WriterState>,
        mut sink: Sink,
    ) {
        for _ in 0..LEADER_ROUNDS {
            if state.pending.is_empty() {
                state.sink = Some(sink);
                return;
            }
            let (mut buf, batch) = state.take_batch();
            let new_line = buf.first() == Some(&b'\n');
            drop(state);
            let result = sink.write_now(&buf);
            state = self.lock();
            match result {
                Ok(n) if n == buf.len() => {
                    self.metrics.audit_write("inline");
                    state.writable_again();
                    drop(state);
                    self.confirm(batch, true);
                    state = self.lock();
                }
                Ok(n) => {
                    if n > 0 {
                        state.writable_again();
                    } else if new_line {
                        buf.remove(0);
                    }
                    buf.drain(..n);
                    let merged = Pending::merged(buf, batch);
                    // Its refusals still wait in the queue: they count
                    // against its bound (`take_batch` reset the count).
                    state.refusals_pending += merged.unwaited;
                    state.pending.insert(0, merged);
                    break;
                }
                Err(e) => {
                    state.failed(&e);
                    drop(state);
                    self.confirm(batch, false);
                    state = self.lock();
                }
            }
        }
        if state.pending.is_empty() {
            state.sink = Some(sink);
            return;
        }
        drop(state);
        let writer = self.clone();
        tokio::task::spawn_blocking(move || writer.drain(sink));
    }

    /// Tells everyone waiting on `batch` whether it was written.
    fn confirm(&self, batch: Vec<Pending>, ok: bool) {
        for pending in batch {
            for waiter in pending.waiters {
                let _ = waiter.send(ok);
            }
            if !ok {
                // Queued refusals the sink did not take.
                for _ in 0..pending.unwaited {
                    self.metrics.audit_record("lost");
                }
            }
        }
    }

    /// On the blocking thread: writes what has queued up, round after
    /// round, then hands the sink back.
    fn drain(&self, mut sink: Sink) {
        // If a write panics, the sink is gone with this thread: say so, and
        // fail every later call closed.
        struct Lost<'a>(&'a Writer);
        impl Drop for Lost<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    error!("the audit log writer stopped: exchanges fail closed (UNAVAILABLE)");
                    let mut state = self.0.lock();
                    state.lost = true;
                    state.pending.clear();
                }
            }
        }
        let _lost = Lost(self);
        loop {
            let (buf, batch) = {
                let mut state = self.lock();
                if state.pending.is_empty() {
                    state.sink = Some(sink);
                    return;
                }
                state.take_batch()
            };
            self.metrics.audit_write("blocking");
            let written = sink.write_all(&buf);
            {
                let mut state = self.lock();
                match &written {
                    Ok(()) => state.writable_again(),
                    Err(e) => state.failed(e),
                }
            }
            self.confirm(batch, written.is_ok());
        }
    }
}

/// Rounds a leader writes for others before it hands the sink to the
/// blocking thread.
const LEADER_ROUNDS: usize = 4;

/// What became of a record handed to the writer.
enum Submitted {
    /// Written (or failed) by this call.
    Now(bool),
    /// Queued; confirmed when its batch is written.
    Later(oneshot::Receiver<bool>),
    /// A refusal queued; no one waits for it.
    Queued,
    /// A refusal only counted, for the next summary line.
    Summarised,
}

impl Pending {
    fn waited(line: Vec<u8>, waiter: oneshot::Sender<bool>) -> Self {
        Self {
            line,
            waiters: vec![waiter],
            unwaited: 0,
        }
    }

    fn unwaited(line: Vec<u8>) -> Self {
        Self {
            line,
            waiters: Vec::new(),
            unwaited: 1,
        }
    }

    /// The unwritten rest of a batch: one entry that confirms everyone in
    /// it once written.
    fn merged(rest: Vec<u8>, batch: Vec<Pending>) -> Self {
        let mut merged = Self::unwaited(rest);
        merged.unwaited = 0;
        for pending in batch {
            merged.waiters.extend(pending.waiters);
            merged.unwaited += pending.unwaited;
        }
        merged
    }
}

impl WriterState {
    fn failed(&mut self, e: &std::io::Error) {
        if !self.failing {
            error!(error = %e, "cannot write the audit log: exchanges fail closed (UNAVAILABLE) until it can be written");
            self.failing = true;
        }
    }

    /// Takes what is queued as one batch: its bytes (a new line first if
    /// the last write failed, then the summary of refusals only counted,
    /// then the records in order) and its entries.
    fn take_batch(&mut self) -> (Vec<u8>, Vec<Pending>) {
        let mut buf = Vec::new();
        if self.failing {
            buf.push(b'\n');
        }
        if !self.summarised.is_empty() {
            let counts = std::mem::take(&mut self.summarised);
            match record::summary_line(&counts) {
                Ok(line) => buf.extend_from_slice(&line),
                Err(e) => error!(error = %e, "cannot serialise an audit summary"),
            }
        }
        self.refusals_pending = 0;
        let batch = std::mem::take(&mut self.pending);
        for pending in &batch {
            buf.extend_from_slice(&pending.line);
        }
        (buf, batch)
    }

    fn writable_again(&mut self) {
        if self.failing {
            info!("the audit log is writable again; exchanges resume");
            self.failing = false;
        }
    }
}

/// The size asked for an audit pipe (see `Sink::pipe`).
#[cfg(target_os = "linux")]
const PIPE_SIZE: usize = 1 << 20;

/// Where the writer puts records.
enum Sink {
    /// An open file: stdout, stderr or the configured file, with what it is.
    File(File, FileKind),
    /// A pipe: `file` as opened (blocking, for the blocking thread), and a
    /// second open of the same pipe with `O_NONBLOCK` for the calling
    /// task's writes (see [`Sink::pipe`]).
    Pipe { file: File, nonblocking: File },
    /// Any other writer (tests): always written on a blocking thread.
    Writer(Box<dyn Write + Send>),
}

/// What kind of file a sink is, which decides whether it can be written
/// without blocking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Socket,
    Other,
}

impl Sink {
    fn of_file(file: File) -> Self {
        use std::os::unix::fs::FileTypeExt as _;
        match file.metadata().map(|m| m.file_type()) {
            Ok(t) if t.is_fifo() => Self::pipe(file),
            Ok(t) if t.is_socket() => Self::File(file, FileKind::Socket),
            _ => Self::File(file, FileKind::Other),
        }
    }

    /// A pipe sink. The calling task may only write what the pipe takes
    /// at once, and asking how much room is left is not enough: Linux
    /// packs small writes into pages, so a pipe with room by `FIONREAD`
    /// can still block a write (measured: a 1 MiB pipe took no more
    /// 542-byte lines at 948 KiB unread). So the task writes through a
    /// second open file description of the same pipe (`/proc/self/fd/N`)
    /// with `O_NONBLOCK`: what does not fit fails with `EAGAIN` and goes
    /// to the blocking thread. `O_NONBLOCK` on stdout itself would change
    /// it for everyone who shares that description. Without `/proc`, every
    /// record goes through the blocking thread (correct, slower; logged),
    /// as on systems other than Linux.
    #[cfg(target_os = "linux")]
    fn pipe(file: File) -> Self {
        use std::os::fd::AsRawFd as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        // Room for a burst of batches while the reader (a container
        // runtime) catches up, instead of 64 KiB: fewer hand-offs to the
        // blocking thread. Linux allows an unprivileged process up to
        // `/proc/sys/fs/pipe-max-size` (1 MiB by default); the kernel takes
        // pages only as the pipe fills. Refused, the pipe keeps its size.
        let _ = rustix::pipe::fcntl_setpipe_size(&file, PIPE_SIZE);
        let reopened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(format!("/proc/self/fd/{}", file.as_raw_fd()));
        match reopened {
            Ok(nonblocking) => Self::Pipe { file, nonblocking },
            Err(e) => {
                info!(error = %e, "the audit pipe cannot be reopened non-blocking: every record goes through a blocking thread");
                Self::File(file, FileKind::Other)
            }
        }
    }

    /// A pipe sink elsewhere: always written on the blocking thread.
    #[cfg(not(target_os = "linux"))]
    fn pipe(file: File) -> Self {
        Self::File(file, FileKind::Other)
    }

    /// Writes as much of `buf` as the sink takes without blocking (see the
    /// module's documentation); the bytes written.
    fn write_now(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Pipe { nonblocking, .. } => {
                let mut written = 0;
                while written < buf.len() {
                    match nonblocking.write(&buf[written..]) {
                        Ok(0) => break,
                        Ok(n) => written += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                Ok(written)
            }
            #[cfg(target_os = "linux")]
            Self::File(file, FileKind::Socket) => {
                use rustix::net::SendFlags;
                let mut written = 0;
                while written < buf.len() {
                    match rustix::net::send(
                        &*file,
                        &buf[written..],
                        SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
                    ) {
                        Ok(0) => break,
                        Ok(n) => written += n,
                        Err(rustix::io::Errno::INTR) => {}
                        Err(rustix::io::Errno::AGAIN) => break,
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(written)
            }
            _ => Ok(0),
        }
    }

    /// Writes all of `buf`, blocking as long as it takes.
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Self::File(file, _) | Self::Pipe { file, .. } => file.write_all(buf),
            Self::Writer(out) => out.write_all(buf).and_then(|()| out.flush()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::google::jwt::Claims;
    use crate::observability::telemetry::TraceIds;
    use tokenbridge_policy::ComputeEngine;

    fn facts() -> Facts {
        Facts {
            claims: Some(Claims {
                iss: "https://accounts.google.com".into(),
                aud: "aud".into(),
                sub: "112233".into(),
                azp: None,
                email: Some("w@p.iam.gserviceaccount.com".into()),
                email_verified: true,
                iat: 1,
                exp: 2,
                nbf: None,
                gce: Some(Arc::new(ComputeEngine {
                    project_id: Some("proj".into()),
                    project_number: Some("7".into()),
                    zone: Some("us-central1-a".into()),
                    instance_id: Some("99".into()),
                    instance_name: Some("vm".into()),
                })),
            }),
            ..Facts::default()
        }
    }

    #[test]
    fn a_refusal_is_one_cloud_logging_line() {
        let facts = facts();
        let trace = TraceIds {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: Some("00f067aa0ba902b7".into()),
            sampled: true,
        };
        let entry = Entry {
            decision: Decision::Deny,
            code: "PERMISSION_DENIED",
            outcome: "permission_denied",
            reason: "no binding grants role R",
            requested_role_arn: "arn:aws:iam::1:role/R",
            requested_duration_seconds: 0,
            facts: &facts,
            credentials: None,
            peer: Some("192.0.2.1:5000".parse().unwrap()),
            trace: Some(&trace),
            elapsed: Duration::from_micros(1500),
        };
        let line = entry.to_line(Some("my-proj")).unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["severity"], "WARNING");
        assert_eq!(
            v["logging.googleapis.com/trace"],
            "projects/my-proj/traces/4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(v["logging.googleapis.com/spanId"], "00f067aa0ba902b7");
        assert_eq!(v["decision"], "deny");
        assert_eq!(v["sub"], "112233");
        assert_eq!(v["gce_project_id"], "proj");
        assert_eq!(v["gce_instance_id"], "99");
        assert_eq!(v["peer"], "192.0.2.1:5000");
        assert_eq!(v["elapsed_ms"], 1.5);
        assert!(v.get("access_key_id").is_none());
        let bare = entry.to_line(None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bare).unwrap();
        assert_eq!(
            v["logging.googleapis.com/trace"],
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[tokio::test]
    async fn an_unwritable_sink_is_reported_and_a_writable_one_confirmed() {
        let facts = Facts::default();
        let entry = issued_entry(&facts);
        let full = AuditLog::open(
            &AuditConfig {
                sink: AuditSink::File("/dev/full".into()),
                gcp_project_id: None,
            },
            Metrics::disabled(),
        )
        .unwrap();
        assert!(!full.write(&entry).await);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(
            &AuditConfig {
                sink: AuditSink::File(path.clone()),
                gcp_project_id: None,
            },
            Metrics::disabled(),
        )
        .unwrap();
        assert!(log.write(&entry).await);
        assert!(log.write(&entry).await);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(
            AuditLog::open(
                &AuditConfig {
                    sink: AuditSink::File(dir.path().join("no/such/dir/audit.jsonl")),
                    gcp_project_id: None,
                },
                Metrics::disabled(),
            )
            .is_err()
        );
    }

    /// A refused call's entry (a bad token): no one waits for its record.
    fn refused_entry(facts: &Facts) -> Entry<'_> {
        Entry {
            decision: Decision::Deny,
            code: "UNAUTHENTICATED",
            outcome: "invalid_token",
            reason: "token expired",
            ..issued_entry(facts)
        }
    }

    /// An issued call's entry: the record a call waits for.
    fn issued_entry(facts: &Facts) -> Entry<'_> {
        Entry {
            decision: Decision::Allow,
            code: "OK",
            outcome: "issued",
            reason: "credentials issued",
            requested_role_arn: "",
            requested_duration_seconds: 0,
            facts,
            credentials: None,
            peer: None,
            trace: None,
            elapsed: Duration::ZERO,
        }
    }

    /// `tokenbridge_audit_writes_total{path}` from the exposition.
    fn writes(metrics: &Metrics, path: &str) -> u64 {
        let label = format!("path=\"{path}\"");
        metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("tokenbridge_audit_writes_total{") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    fn lines_of(text: &[u8]) -> Vec<serde_json::Value> {
        String::from_utf8(text.to_vec())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    // One worker thread: an inline write that blocked would hang
    // the whole test (timeouts included) instead of failing it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_pipe_is_written_inline_while_it_has_room_and_on_a_blocking_thread_when_full() {
        use std::io::Read as _;
        let metrics = Metrics::prometheus().unwrap();
        let (mut reader, writer) = std::io::pipe().unwrap();
        let sink = Sink::of_file(File::from(std::os::fd::OwnedFd::from(writer)));
        assert!(matches!(sink, Sink::Pipe { .. }));
        let log = AuditLog::with_sink(sink, None, metrics.clone())
            .with_ack_timeout(Duration::from_millis(200));
        let facts = facts();
        let entry = issued_entry(&facts);

        // Room in the pipe: written by the calling task, no thread hand-off.
        for _ in 0..3 {
            assert!(log.write(&entry).await);
        }
        assert_eq!(writes(&metrics, "inline"), 3);
        assert_eq!(writes(&metrics, "blocking"), 0);

        // Nobody reads: once the pipe is nearly full the batch goes to a
        // blocking thread, which stalls, and calls fail closed. (The pipe
        // was enlarged to `PIPE_SIZE` where the kernel allows it.)
        let mut confirmed = 3;
        let mut refused = false;
        for _ in 0..20_000 {
            if log.write(&entry).await {
                confirmed += 1;
            } else {
                refused = true;
                break;
            }
        }
        assert!(
            refused,
            "a pipe nobody reads must fill up and fail calls closed"
        );
        assert!(writes(&metrics, "blocking") >= 1);

        // A reader drains it: writing resumes.
        let drained = std::thread::spawn(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).map(|_| all)
        });
        assert!(
            log.write(&entry).await,
            "written once the reader drains the pipe"
        );
        confirmed += 1;
        drop(log);
        let all = tokio::task::spawn_blocking(move || drained.join().unwrap())
            .await
            .unwrap()
            .unwrap();
        let lines = lines_of(&all);
        // Every confirmed record is there; the refused one may be too
        // (written, but confirmed too late), never fewer.
        assert!(lines.len() >= confirmed, "{} < {confirmed}", lines.len());
        assert!(lines.iter().all(|l| l["decision"] == "allow"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_socket_is_written_inline() {
        use std::io::Read as _;
        let metrics = Metrics::prometheus().unwrap();
        let (mut reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        let sink = Sink::of_file(File::from(std::os::fd::OwnedFd::from(writer)));
        assert!(matches!(sink, Sink::File(_, FileKind::Socket)));
        let log = AuditLog::with_sink(sink, None, metrics.clone());
        let facts = facts();
        for _ in 0..5 {
            assert!(log.write(&issued_entry(&facts)).await);
        }
        assert_eq!(writes(&metrics, "inline"), 5);
        drop(log);
        let all = tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).map(|_| all)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(lines_of(&all).len(), 5);
    }

    #[tokio::test]
    async fn a_regular_file_is_written_on_a_blocking_thread() {
        let metrics = Metrics::prometheus().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(
            &AuditConfig {
                sink: AuditSink::File(path.clone()),
                gcp_project_id: None,
            },
            metrics.clone(),
        )
        .unwrap();
        let facts = facts();
        assert!(log.write(&issued_entry(&facts)).await);
        assert_eq!(writes(&metrics, "blocking"), 1);
        assert_eq!(writes(&metrics, "inline"), 0);
        assert_eq!(lines_of(&std::fs::read(&path).unwrap()).len(), 1);
    }

    /// A sink whose writes block until the test lets go.
    struct Stalled(std::sync::Mutex<std::sync::mpsc::Receiver<()>>);

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.lock().unwrap().recv();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_stalled_sink_fails_calls_closed_after_the_timeout() {
        let (release, stalled) = std::sync::mpsc::channel();
        let timeout = Duration::from_millis(100);
        let log = AuditLog::with_writer(
            Box::new(Stalled(std::sync::Mutex::new(stalled))),
            None,
            Metrics::disabled(),
        )
        .with_ack_timeout(timeout);
        let facts = Facts::default();
        let entry = issued_entry(&facts);
        let started = tokio::time::Instant::now();
        assert!(!log.write(&entry).await, "not confirmed: fail closed");
        assert!(started.elapsed() >= timeout);
        // Queued behind the stalled write: not confirmed either.
        assert!(!log.write(&entry).await);
        drop(release);
    }

    /// A writer that blocks until the gate opens, then keeps what it is
    /// given.
    struct Gated {
        gate: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
        out: Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.gate.lock().unwrap().recv();
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn refusals_never_wait_for_a_stalled_sink_and_are_counted_when_they_cannot_queue() {
        let (open, gate) = std::sync::mpsc::channel::<()>();
        let out = Arc::new(std::sync::Mutex::new(Vec::new()));
        let metrics = Metrics::prometheus().unwrap();
        let log = AuditLog::with_writer(
            Box::new(Gated {
                gate: std::sync::Mutex::new(gate),
                out: out.clone(),
            }),
            None,
            metrics.clone(),
        )
        // Long enough that a refusal waiting for it would stall the test.
        .with_ack_timeout(Duration::from_secs(3600))
        .with_refusal_queue(2);
        let facts = Facts::default();
        let refusal = refused_entry(&facts);
        // The sink does not move, and every refusal returns at once.
        for _ in 0..10 {
            assert!(log.write(&refusal).await);
        }
        let encoded = metrics.encode();
        assert!(encoded.contains("result=\"summarised\""), "{encoded}");
        drop(open);
        log.flush().await;
        let all = out.lock().unwrap().clone();
        let lines = lines_of(&all);
        let individually = lines
            .iter()
            .filter(|l| l["event"] == "tokenbridge.exchange")
            .count() as u64;
        // One summary per round of the writer that found refusals only
        // counted: how the ten fall into rounds depends on when the blocking
        // thread starts, what they add up to does not.
        let summaries: Vec<_> = lines
            .iter()
            .filter(|l| l["event"] == "tokenbridge.audit_summary")
            .collect();
        assert!(!summaries.is_empty(), "{lines:?}");
        for summary in &summaries {
            assert_eq!(summary["by_outcome"]["invalid_token"], summary["refusals"]);
        }
        let summarised: u64 = summaries
            .iter()
            .map(|s| s["refusals"].as_u64().unwrap())
            .sum();
        // At most two wait at a time, and the stalled writer takes one
        // batch before the gate opens: at most four are written one by one.
        assert!(summarised >= 6, "{lines:?}");
        assert_eq!(individually + summarised, 10);
    }

    /// Deferred group commit: issued records from calls that run while a
    /// leader yields share its one write, in order; a leader cancelled
    /// while it yields still writes the batch and hands the sink back.
    #[tokio::test(flavor = "current_thread")]
    async fn issued_records_of_one_scheduler_tick_share_one_write() {
        use std::io::Read as _;
        let metrics = Metrics::prometheus().unwrap();
        let (mut reader, writer) = std::io::pipe().unwrap();
        let sink = Sink::of_file(File::from(std::os::fd::OwnedFd::from(writer)));
        let log = Arc::new(AuditLog::with_sink(sink, None, metrics.clone()));
        let calls: Vec<_> = (0..5)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move {
                    log.write_line(Ok(format!("{{\"n\":{i}}}\n").into_bytes()))
                        .await
                })
            })
            .collect();
        for call in calls {
            assert!(call.await.unwrap());
        }
        assert_eq!(writes(&metrics, "inline"), 1);

        // A leader dropped while it yields: its batch is written anyway
        // and the next record finds the sink.
        let Lead::Leader(leading, rx) = log.writer.lead_or_join(b"{\"n\":5}\n".to_vec()) else {
            panic!("the sink was free");
        };
        drop(leading);
        assert!(rx.await.unwrap());
        assert!(log.write_line(Ok(b"{\"n\":6}\n".to_vec())).await);
        assert_eq!(writes(&metrics, "inline"), 3);
        drop(log);
        let mut all = String::new();
        reader.read_to_string(&mut all).unwrap();
        let want: String = (0..7).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        assert_eq!(all, want);
    }

    /// Group commit: records that arrive while a leader holds the sink are
    /// written by it as one batch (one `write`), in order, and everyone in
    /// the batch is confirmed.
    #[tokio::test]
    async fn records_queued_behind_a_leader_share_one_write() {
        use std::io::Read as _;
        let metrics = Metrics::prometheus().unwrap();
        let (mut reader, writer) = std::io::pipe().unwrap();
        let sink = Sink::of_file(File::from(std::os::fd::OwnedFd::from(writer)));
        let log = AuditLog::with_sink(sink, None, metrics.clone());
        // A leader is mid-write: it has the sink.
        let held = log.writer.lock().sink.take().unwrap();
        let mut confirmations = Vec::new();
        for i in 0..3 {
            match log.writer.write(format!("{{\"n\":{i}}}\n").into_bytes()) {
                Some(confirmed) => confirmations.push(confirmed),
                None => panic!("written while another call held the sink"),
            }
        }
        // A refusal joins the same batch; no one waits for it.
        assert_eq!(
            log.writer
                .write_refusal(b"{\"n\":3}\n".to_vec(), "invalid_token"),
            "queued"
        );
        // The leader's write is done: it writes the queue as one batch.
        let state = log.writer.lock();
        log.writer.release(state, held);
        for confirmed in confirmations {
            assert!(confirmed.await.unwrap());
        }
        assert_eq!(writes(&metrics, "inline"), 1);
        assert_eq!(writes(&metrics, "blocking"), 0);
        drop(log);
        let mut all = String::new();
        reader.read_to_string(&mut all).unwrap();
        assert_eq!(all, "{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n");
    }
}
