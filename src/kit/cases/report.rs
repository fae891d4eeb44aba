//! What running a case file found: a result per case and the report
//! `pylon plugin test` prints.

use std::time::Duration;

/// What one case did.
#[derive(Debug)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Every difference from what was expected (empty: passed).
    pub failures: Vec<String>,
    /// The time of each hook call made, in order (`configure` first).
    pub calls: Vec<(&'static str, Duration)>,
}

impl CaseResult {
    /// True when nothing differed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// What a whole case file did.
#[derive(Debug)]
pub struct Report {
    /// One result per case, in file order.
    pub cases: Vec<CaseResult>,
    /// How long loading (compiling, or the disk cache) took.
    pub compile_time: Duration,
}

impl Report {
    /// The cases that failed.
    pub fn failed(&self) -> usize {
        self.cases.iter().filter(|c| !c.passed()).count()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for case in &self.cases {
            let calls = case
                .calls
                .iter()
                .map(|(hook, t)| format!("{hook} {}", micros(*t)))
                .collect::<Vec<_>>()
                .join(", ");
            let verdict = if case.passed() { "ok  " } else { "FAIL" };
            writeln!(f, "{verdict} {}  ({calls})", case.name)?;
            for failure in &case.failures {
                writeln!(f, "       {failure}")?;
            }
        }
        let failed = self.failed();
        writeln!(
            f,
            "{} passed, {failed} failed  (loaded in {} ms)",
            self.cases.len() - failed,
            self.compile_time.as_millis()
        )
    }
}

fn micros(d: Duration) -> String {
    if d >= Duration::from_millis(10) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} µs", d.as_micros())
    }
}
