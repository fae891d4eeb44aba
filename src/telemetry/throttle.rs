//! Rate limits for log lines that a client or a failing upstream can
//! repeat at will (one WARN per failed request wrote 98,535 lines in 15 s
//! of upstream failures, issue 15).
//!
//! A [`LogThrottle`] lets through at most `limit` lines per `interval`;
//! the rest are counted, and the first line let through after them is
//! preceded by one line saying how many were suppressed and under which
//! name. Declare one `static` per call site (or per key, e.g. one per error
//! class in a `match`) and log only when [`LogThrottle::admit`] says so:
//!
//! ```
//! use std::time::Duration;
//! use pylon::telemetry::throttle::LogThrottle;
//!
//! static ACCEPT_FAILED: LogThrottle = LogThrottle::new("accept failed", 5, Duration::from_secs(1));
//!
//! if ACCEPT_FAILED.admit() {
//!     tracing::warn!("accept failed");
//! }
//! ```
//!
//! The suppressed count is reported lazily, when the next line is let
//! through, so a burst that stops for good is never summed up in the log:
//! metrics carry the totals, this only keeps the log readable. Not for
//! lines that must never be lost (start-up, reload results).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::sync::lock;

/// Lets through at most `limit` log lines per `interval`, counting the rest.
#[derive(Debug)]
pub struct LogThrottle {
    name: &'static str,
    limit: u32,
    interval: Duration,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// Start of the current window; `None` before the first line.
    start: Option<Instant>,
    /// Lines let through in the current window.
    admitted: u32,
    /// Lines held back since the last line let through.
    suppressed: u64,
    /// When the first of those was held back.
    suppressed_since: Option<Instant>,
}

impl LogThrottle {
    /// A throttle named `name` (it names the suppressed-lines summary)
    /// letting `limit` lines through per `interval`.
    pub const fn new(name: &'static str, limit: u32, interval: Duration) -> Self {
        Self {
            name,
            limit,
            interval,
            window: Mutex::new(Window {
                start: None,
                admitted: 0,
                suppressed: 0,
                suppressed_since: None,
            }),
        }
    }

    /// Whether the caller may log its line now. When lines were held back
    /// before this one, a WARN line saying how many is logged first.
    pub fn admit(&self) -> bool {
        self.admit_logging(Instant::now())
    }

    fn admit_logging(&self, now: Instant) -> bool {
        match self.admit_at(now) {
            Admit::Log { suppressed: 0, .. } => true,
            Admit::Log { suppressed, over } => {
                tracing::warn!(
                    target: "pylon::log_throttle",
                    what = self.name,
                    suppressed,
                    over_ms = u64::try_from(over.as_millis()).unwrap_or(u64::MAX),
                    "{}: {suppressed} similar log lines suppressed",
                    self.name
                );
                true
            }
            Admit::Drop => false,
        }
    }

    fn admit_at(&self, now: Instant) -> Admit {
        let mut w = lock(&self.window);
        let expired = w
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.interval);
        if expired {
            w.start = Some(now);
            w.admitted = 0;
        }
        if w.admitted >= self.limit {
            if w.suppressed == 0 {
                w.suppressed_since = Some(now);
            }
            w.suppressed = w.suppressed.saturating_add(1);
            return Admit::Drop;
        }
        w.admitted += 1;
        let suppressed = std::mem::take(&mut w.suppressed);
        let over = w
            .suppressed_since
            .take()
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        Admit::Log { suppressed, over }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Log; `suppressed` lines were held back over `over` before this one.
    Log { suppressed: u64, over: Duration },
    /// Hold this line back.
    Drop,
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn lets_limit_lines_through_per_interval_and_counts_the_rest() {
        let t = LogThrottle::new("t", 3, Duration::from_secs(1));
        let t0 = Instant::now();
        let admitted = (0..1000)
            .filter(|i| {
                matches!(
                    t.admit_at(t0 + Duration::from_micros(*i)),
                    Admit::Log { .. }
                )
            })
            .count();
        assert_eq!(admitted, 3);
        // The next window's first line carries the count of the 997 held back.
        let later = t0 + Duration::from_millis(1500);
        match t.admit_at(later) {
            Admit::Log { suppressed, over } => {
                assert_eq!(suppressed, 997);
                assert!(over >= Duration::from_millis(1400), "{over:?}");
            }
            Admit::Drop => panic!("a new window must let a line through"),
        }
        assert_eq!(
            t.admit_at(later),
            Admit::Log {
                suppressed: 0,
                over: Duration::ZERO
            }
        );
    }

    /// What a subscriber receives: 10 lines pass in a burst of 10,000,
    /// then the next window says how many were suppressed.
    #[test]
    fn a_burst_writes_limit_lines_then_one_summary() {
        #[derive(Clone, Default)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Capture::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let t = LogThrottle::new("upstream failed", 10, Duration::from_secs(1));
        let t0 = Instant::now();
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..10_000 {
                if t.admit_logging(t0 + Duration::from_micros(i)) {
                    tracing::warn!("request failed");
                }
            }
            if t.admit_logging(t0 + Duration::from_secs(2)) {
                tracing::warn!("request failed");
            }
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 12, "{text}");
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.contains("request failed"))
                .count(),
            11
        );
        assert!(
            lines[10].contains("upstream failed: 9990 similar log lines suppressed"),
            "{}",
            lines[10]
        );
    }
}
