//! Where log lines go: a bounded buffer in memory, written to stderr by a thread of its
//! own. Logging a line never waits for stderr.
//!
//! Writing each line to stderr from the thread that logs it made every request wait
//! for the log's reader: when it stopped reading (a paused terminal, a stuck log
//! shipper, a pipe nobody drains), the pipe filled and every request thread blocked in
//! `write`, so the server stopped answering anything, health checks included. Here a
//! line is copied into the buffer, and the writing thread, woken by the first line,
//! lets lines gather for a moment and writes them all at once: one wake-up and one
//! `write` per [`GATHER`] at most, however many lines. When the buffer is full, lines
//! are dropped, whole, counted in `cairn_log_lines_dropped_total`, and a warning saying
//! how many follows the lines written before them.
//!
//! Lines leave in the order they were buffered: whoever writes holds the output while
//! it takes and writes what is buffered. [`LogSink::flush`] writes what is buffered from
//! the calling thread; the process calls it before it exits.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// The most bytes of log lines waiting to be written (some ten thousand request
/// lines); past it, lines are dropped.
pub const CAPACITY: usize = 4 << 20;

/// How long the writing thread lets lines gather once one has woken it.
const GATHER: Duration = Duration::from_millis(2);

/// The buffer and the thread that empties it.
pub struct LogSink {
    pending: Mutex<Pending>,
    /// Signalled when a line arrives while the writing thread is asleep.
    ready: Condvar,
    /// Held while buffered lines are taken and written, so that they leave in order.
    out: Mutex<Box<dyn Write + Send>>,
    capacity: usize,
    dropped_total: AtomicU64,
}

struct Pending {
    lines: Vec<u8>,
    /// Lines dropped since the last write (for the warning that follows it).
    dropped: u64,
    /// The writing thread waits for a signal.
    asleep: bool,
}

impl LogSink {
    /// A sink writing to `out`, holding at most `capacity` bytes of lines, with its
    /// writing thread started.
    pub fn start(out: Box<dyn Write + Send>, capacity: usize) -> io::Result<Arc<Self>> {
        let sink = Arc::new(Self {
            pending: Mutex::new(Pending {
                lines: Vec::new(),
                dropped: 0,
                asleep: false,
            }),
            ready: Condvar::new(),
            out: Mutex::new(out),
            capacity,
            dropped_total: AtomicU64::new(0),
        });
        let writer = Arc::clone(&sink);
        std::thread::Builder::new()
            .name("cairn-log".into())
            .spawn(move || writer.run())?;
        Ok(sink)
    }

    /// Buffers one line (the log layer hands over each formatted line whole), or drops
    /// it when the buffer is full.
    fn push(&self, line: &[u8]) {
        let mut pending = lock(&self.pending);
        if pending.lines.len() + line.len() > self.capacity {
            pending.dropped += 1;
            drop(pending);
            // Counted at once: while stderr is stuck, the metric is how anyone can tell.
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(cairn_server::metrics::LOG_LINES_DROPPED_TOTAL).increment(1);
            return;
        }
        pending.lines.extend_from_slice(line);
        if pending.asleep {
            pending.asleep = false;
            drop(pending);
            self.ready.notify_one();
        }
    }

    /// The writing thread: sleeps until lines arrive, then writes all there are.
    fn run(&self) {
        let mut spare = Vec::new();
        loop {
            let mut pending = lock(&self.pending);
            while pending.lines.is_empty() && pending.dropped == 0 {
                pending.asleep = true;
                pending = self
                    .ready
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            pending.asleep = false;
            drop(pending);
            // Lines logged meanwhile join this write, without waking this thread: one
            // wake-up and one `write` per GATHER at most, instead of one per line.
            std::thread::sleep(GATHER);
            self.write_pending(&mut spare);
        }
    }

    /// Writes what is buffered now, from the calling thread (and then the warning about
    /// dropped lines, if writing them made one).
    pub fn flush(&self) {
        let mut spare = Vec::new();
        self.write_pending(&mut spare);
        if !lock(&self.pending).lines.is_empty() {
            self.write_pending(&mut spare);
        }
    }

    /// Lines dropped since the start (`/metrics` has them as
    /// `cairn_log_lines_dropped_total`).
    #[cfg(test)]
    fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }

    fn write_pending(&self, spare: &mut Vec<u8>) {
        let mut out = lock(&self.out);
        let dropped = {
            let mut pending = lock(&self.pending);
            std::mem::swap(&mut pending.lines, spare);
            std::mem::take(&mut pending.dropped)
        };
        // With stderr gone there is nowhere else to report to: the lines are lost.
        let _ = out.write_all(spare).and_then(|()| out.flush());
        spare.clear();
        if dropped > 0 {
            // Buffered behind the lines just written, in the log's own format.
            tracing::warn!(
                dropped,
                "log lines dropped: stderr was not read fast enough and the log buffer was full"
            );
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The log layer's writer: each formatted line goes to the sink.
#[derive(Clone)]
pub struct SinkWriter(pub Arc<LogSink>);

impl Write for SinkWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.0.push(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for SinkWriter {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Instant;

    use super::*;

    /// An output that keeps what is written, and blocks while its gate is closed.
    #[derive(Clone)]
    struct Output {
        written: Arc<Mutex<Vec<u8>>>,
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Output {
        fn new(open: bool) -> Self {
            Self {
                written: Arc::default(),
                gate: Arc::new((Mutex::new(open), Condvar::new())),
            }
        }

        fn open(&self) {
            *lock(&self.gate.0) = true;
            self.gate.1.notify_all();
        }

        fn text(&self) -> String {
            String::from_utf8(lock(&self.written).clone()).unwrap()
        }

        fn wait_for(&self, within: Duration, done: impl Fn(&str) -> bool) -> String {
            let deadline = Instant::now() + within;
            loop {
                let text = self.text();
                if done(&text) {
                    return text;
                }
                assert!(Instant::now() < deadline, "not written in time: {text:?}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    impl Write for Output {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let (open, opened) = &*self.gate;
            let mut open = lock(open);
            while !*open {
                open = opened.wait(open).unwrap();
            }
            lock(&self.written).extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// As the log layer writes: each formatted line in one piece.
    fn log(writer: &mut SinkWriter, line: &str) {
        writer.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_and_in_order() {
        let output = Output::new(true);
        let sink = LogSink::start(Box::new(output.clone()), CAPACITY).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let mut writer = SinkWriter(Arc::clone(&sink));
                std::thread::spawn(move || {
                    for line in 0..500 {
                        log(&mut writer, &format!("thread {thread} line {line}"));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let text = output.wait_for(Duration::from_secs(10), |text| text.lines().count() == 2000);
        for thread in 0..4 {
            let lines: Vec<usize> = text
                .lines()
                .filter_map(|line| line.strip_prefix(&format!("thread {thread} line ")))
                .map(|number| number.parse().unwrap())
                .collect();
            assert_eq!(lines, (0..500).collect::<Vec<_>>(), "thread {thread}");
        }
        assert_eq!(sink.dropped_total(), 0);
    }

    #[test]
    fn a_stuck_output_never_blocks_logging_and_drops_whole_lines() {
        let output = Output::new(false);
        let sink = LogSink::start(Box::new(output.clone()), 1000).unwrap();
        let mut writer = SinkWriter(Arc::clone(&sink));
        // Logging goes on while the output blocks (the thread would hang otherwise).
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            for line in 0..1000 {
                log(&mut writer, &format!("line {line:04}"));
            }
            done.send(()).unwrap();
        });
        finished
            .recv_timeout(Duration::from_secs(10))
            .expect("logging did not wait for the output");
        // Counted as they are dropped, while the output is still stuck.
        assert!(sink.dropped_total() >= 800, "{}", sink.dropped_total());

        output.open();
        sink.flush();
        let text = output.text();
        let kept: Vec<&str> = text.lines().collect();
        // The 1000-byte buffer holds 100 ten-byte lines, besides any first lines that
        // the writing thread took before the output held it.
        assert!(
            (100..=200).contains(&kept.len()),
            "{} lines kept",
            kept.len()
        );
        for (number, line) in kept.iter().enumerate() {
            assert_eq!(*line, format!("line {number:04}"));
        }
        assert_eq!(sink.dropped_total(), 1000 - kept.len() as u64);

        // The buffer is free again.
        log(&mut SinkWriter(Arc::clone(&sink)), "after");
        output.wait_for(Duration::from_secs(10), |text| text.ends_with("after\n"));
    }
}
