//! How an error is written in a log line or a diagnostic: with its whole
//! `source` chain. A leaf module, so that every layer (the upstream pools,
//! TLS, plugins) can use it without looking up at `crate::error`, which
//! maps their errors to statuses.

/// Displays an error with its whole `source` chain: `a: b: c`.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}
