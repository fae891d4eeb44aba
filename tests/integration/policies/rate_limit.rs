//! Tests of the `rate-limit` policy plugin.
