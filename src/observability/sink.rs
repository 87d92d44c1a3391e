//! The log's way to stdout: lines appended to a shared buffer by the threads that produce
//! them, written out by one thread in batches.
//!
//! A line per request must not cost a system call per request, nor a thread wake-up per
//! request. Producers append under a short lock and wake the writer only when the buffer goes
//! from empty to non-empty (or passes [`BATCH`]); the writer then lingers up to [`LINGER`] for
//! more lines and writes everything it has with one `write`. Under load that is one write per
//! few thousand lines; when quiet, a line reaches stdout within [`LINGER`].
//!
//! Nothing is dropped: a producer that finds [`MAX_PENDING`] bytes waiting (stdout is a pipe
//! nobody reads fast enough) waits for the writer, as a direct write would, and
//! [`Sink::close`] writes out whatever is pending before the process exits. Lines keep the
//! order in which they were appended.

use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long the writer waits for more lines once one is pending.
pub const LINGER: Duration = Duration::from_millis(20);
/// Pending bytes that make the writer write at once.
pub const BATCH: usize = 64 * 1024;
/// Pending bytes past which producers wait for the writer.
pub const MAX_PENDING: usize = 4 * 1024 * 1024;

/// A batching line writer; see the module docs.
pub struct Sink {
    state: Mutex<State>,
    /// The writer waits here for lines.
    lines: Condvar,
    /// Producers wait here for room, and `close` for the last write.
    room: Condvar,
}

struct State {
    pending: Vec<u8>,
    /// The writer is waiting for a first line (and must be woken for one).
    idle: bool,
    /// The writer is writing a batch (bytes not yet in `pending`).
    writing: bool,
    closed: bool,
}

impl Sink {
    /// An empty sink; [`Sink::run`] must be started on a thread of its own.
    pub const fn new() -> Sink {
        Sink {
            state: Mutex::new(State {
                pending: Vec::new(),
                idle: false,
                writing: false,
                closed: false,
            }),
            lines: Condvar::new(),
            room: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves whole lines behind: keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends complete lines (each ending with `\n`). After [`Sink::close`] (a line logged
    /// while the process exits) they go straight to stdout.
    pub fn append(&self, bytes: &[u8]) {
        let mut s = self.lock();
        if s.closed {
            drop(s);
            let _ = std::io::stdout().lock().write_all(bytes);
            return;
        }
        while s.pending.len() >= MAX_PENDING && !s.closed {
            s = self.room.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        let before = s.pending.len();
        s.pending.extend_from_slice(bytes);
        let wake = (before == 0 && s.idle) || (before < BATCH && s.pending.len() >= BATCH);
        drop(s);
        if wake {
            self.lines.notify_one();
        }
    }

    /// The writer's loop: returns once [`Sink::close`] has been called and everything
    /// appended before it has been written.
    pub fn run(&self, out: &mut dyn Write) {
        let mut spare = Vec::with_capacity(BATCH);
        let mut s = self.lock();
        loop {
            while s.pending.is_empty() && !s.closed {
                s.idle = true;
                s = self.lines.wait(s).unwrap_or_else(|p| p.into_inner());
                s.idle = false;
            }
            if s.pending.is_empty() {
                break;
            }
            if s.pending.len() < BATCH && !s.closed {
                s = self
                    .lines
                    .wait_timeout(s, LINGER)
                    .map(|(s, _)| s)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            let mut batch = std::mem::replace(&mut s.pending, spare);
            s.writing = true;
            drop(s);
            self.room.notify_all();
            // stdout gone (a closed pipe): there is nowhere to report it; the lines are lost
            // either way, and producers must not block on it.
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            batch.clear();
            if batch.capacity() > 4 * BATCH {
                batch.shrink_to(BATCH);
            }
            spare = batch;
            s = self.lock();
            s.writing = false;
            self.room.notify_all();
        }
    }

    /// Asks the writer to write what is pending and stop, and waits until it has.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        self.lines.notify_one();
        self.room.notify_all();
        while !s.pending.is_empty() || s.writing {
            s = self.room.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Default for Sink {
    fn default() -> Sink {
        Sink::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A writer that counts its writes.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut r = self.0.lock().unwrap();
            r.0.extend_from_slice(buf);
            r.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A sink with its writer running into a recorder.
    fn started() -> (Arc<Sink>, Recorder, std::thread::JoinHandle<()>) {
        let sink = Arc::new(Sink::new());
        let out = Recorder::default();
        let writer = {
            let (sink, mut out) = (sink.clone(), out.clone());
            std::thread::spawn(move || sink.run(&mut out))
        };
        (sink, out, writer)
    }

    #[test]
    fn lines_keep_their_order_are_batched_and_none_is_lost_on_close() {
        let (sink, out, writer) = started();
        let producers: Vec<_> = (0..4)
            .map(|p| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        sink.append(format!("{p} {i}\n").as_bytes());
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        sink.close();
        writer.join().unwrap();
        let (bytes, writes) = out.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 20_000, "every line is written");
        for p in 0..4 {
            let mine: Vec<usize> = lines
                .iter()
                .filter_map(|l| l.strip_prefix(&format!("{p} ")))
                .map(|i| i.parse().unwrap())
                .collect();
            assert_eq!(mine, (0..5000).collect::<Vec<_>>(), "producer {p} in order");
        }
        assert!(writes < 2000, "{writes} writes for 20000 lines");
    }

    #[test]
    fn a_quiet_line_is_written_without_waiting_for_more() {
        let (sink, out, writer) = started();
        sink.append(b"one\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while out.0.lock().unwrap().0.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(out.0.lock().unwrap().0, b"one\n");
        sink.close();
        writer.join().unwrap();
    }
}
