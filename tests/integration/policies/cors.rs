//! Tests of the `cors` policy plugin.
