//! See lib.rs for the layer overview.
