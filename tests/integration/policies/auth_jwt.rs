//! Tests of the `auth-jwt` policy plugin.
