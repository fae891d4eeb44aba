//! Tests of the `auth-key` policy plugin.
