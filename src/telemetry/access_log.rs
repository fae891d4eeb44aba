//! The access log: one JSON object per line per request, written to stdout
//! or appended to a file by a writer task.
//!
//! The request path formats its line and hands it to a bounded channel;
//! it never waits for the disk. When the writer falls behind and the
//! channel is full the line is dropped and counted
//! (`pylon_access_log_dropped_total`) rather than slowing requests down.
//!
//! A line: `{"time":"2026-01-02T03:04:05.678Z","route":"users","method":"GET",
//! "path":"/users/7","status":200,"bytes_in":0,"bytes_out":123,
//! "duration_ms":1.234,"upstream":"users","upstream_ms":0.987,
//! "target":"10.0.0.7:8080","attempts":1,
//! "client":"127.0.0.1:50412","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}`
//! (`route`, `upstream`, `upstream_ms` and `target` are `null` when there
//! was none; `target` is the last attempt's, `attempts` counts retries + 1).

use std::{
    io::Write,
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};

use crate::config::AccessLogTarget;

/// Lines buffered between the request path and the writer.
const QUEUE_LINES: usize = 16 * 1024;

enum Msg {
    Line(String),
    Flush(oneshot::Sender<()>),
}

/// A handle to the access log writer. Cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<Msg>,
    dropped: Counter,
}

/// One request, as it is logged.
pub struct Entry<'a> {
    /// When the request head arrived.
    pub time: SystemTime,
    /// The matched route, if any.
    pub route: Option<&'a str>,
    /// The request method.
    pub method: &'a str,
    /// The request path (without the query).
    pub path: &'a str,
    /// The status sent.
    pub status: u16,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// Time from request head to the last response byte (or abort).
    pub duration: Duration,
    /// The upstream called and its time to response head, if any.
    pub upstream: Option<(&'a str, Duration)>,
    /// The target of the last attempt (the one that answered, if any).
    pub target: Option<&'a str>,
    /// Upstream attempts made (retries + 1; 0 when none was).
    pub attempts: usize,
    /// The client's address.
    pub client: SocketAddr,
    /// The W3C trace id, as 32 hex digits.
    pub trace_id: &'a str,
}

impl AccessLog {
    /// Open the target and start the writer task (on the current tokio
    /// runtime). Lines dropped under back-pressure count in `dropped`.
    pub fn start(target: &AccessLogTarget, dropped: Counter) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Stdout => Box::new(std::io::stdout()),
            AccessLogTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = mpsc::channel(QUEUE_LINES);
        std::thread::Builder::new()
            .name("pylon-access-log".into())
            .spawn(move || write_lines(rx, out))?;
        Ok(AccessLog { tx, dropped })
    }

    /// Queue one line; drops it (and counts the drop) if the writer is behind.
    pub fn log(&self, entry: &Entry<'_>) {
        if self.tx.try_send(Msg::Line(format_line(entry))).is_err() {
            self.dropped.inc();
        }
    }

    /// Wait until every line queued so far is written (at shutdown).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// The writer: a plain thread, so a slow disk never occupies a runtime
/// worker. Flushes whenever the queue runs empty.
fn write_lines(mut rx: mpsc::Receiver<Msg>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut failed = false;
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Line(line) => {
                if let Err(err) = out.write_all(line.as_bytes())
                    && !failed
                {
                    failed = true;
                    tracing::error!(error = %err, "cannot write the access log");
                }
            }
            Msg::Flush(done) => {
                let _ = out.flush();
                let _ = done.send(());
            }
        }
        if rx.is_empty() {
            let _ = out.flush();
        }
    }
    let _ = out.flush();
}

/// Format one entry as a JSON line (with the trailing newline).
pub fn format_line(e: &Entry<'_>) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(256 + e.path.len());
    s.push_str("{\"time\":\"");
    rfc3339(&mut s, e.time);
    s.push_str("\",\"route\":");
    json_opt_str(&mut s, e.route);
    s.push_str(",\"method\":");
    json_str(&mut s, e.method);
    s.push_str(",\"path\":");
    json_str(&mut s, e.path);
    let _ = write!(
        s,
        ",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":{:.3},\"upstream\":",
        e.status,
        e.bytes_in,
        e.bytes_out,
        e.duration.as_secs_f64() * 1e3
    );
    match e.upstream {
        Some((name, d)) => {
            json_str(&mut s, name);
            let _ = write!(s, ",\"upstream_ms\":{:.3}", d.as_secs_f64() * 1e3);
        }
        None => s.push_str("null,\"upstream_ms\":null"),
    }
    s.push_str(",\"target\":");
    json_opt_str(&mut s, e.target);
    let _ = write!(s, ",\"attempts\":{}", e.attempts);
    let _ = write!(s, ",\"client\":\"{}\",\"trace_id\":", e.client);
    json_str(&mut s, e.trace_id);
    s.push_str("}\n");
    s
}

fn json_opt_str(out: &mut String, v: Option<&str>) {
    match v {
        Some(v) => json_str(out, v),
        None => out.push_str("null"),
    }
}

fn json_str(out: &mut String, v: &str) {
    use std::fmt::Write as _;
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC), without a date library.
pub fn rfc3339(out: &mut String, t: SystemTime) {
    use std::fmt::Write as _;
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    );
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, millis: u64) -> String {
        let mut s = String::new();
        rfc3339(
            &mut s,
            UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis),
        );
        s
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_767_225_599, 999), "2025-12-31T23:59:59.999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn line_is_valid_json_with_every_field() {
        let e = Entry {
            time: UNIX_EPOCH,
            route: Some("users"),
            method: "GET",
            path: "/a\"b\\c\u{1}",
            status: 200,
            bytes_in: 3,
            bytes_out: 5,
            duration: Duration::from_micros(1500),
            upstream: Some(("u", Duration::from_millis(1))),
            target: Some("127.0.0.1:1"),
            attempts: 2,
            client: "127.0.0.1:1234".parse().unwrap(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
        };
        let line = format_line(&e);
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["path"], "/a\"b\\c\u{1}");
        assert_eq!(v["route"], "users");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes_out"], 5);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["upstream"], "u");
        assert_eq!(v["client"], "127.0.0.1:1234");
        let none = Entry {
            route: None,
            upstream: None,
            target: None,
            attempts: 0,
            ..e
        };
        let v: serde_json::Value = serde_json::from_str(&format_line(&none)).unwrap();
        assert!(v["route"].is_null() && v["upstream"].is_null() && v["upstream_ms"].is_null());
    }
}
