//! Tests of the `cache` policy plugin.
