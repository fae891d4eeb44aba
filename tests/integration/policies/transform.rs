//! Tests of the `transform` policy plugin.
