//! Tests of the `aggregate` policy plugin.
