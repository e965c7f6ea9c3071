//! The terminal sanitiser, used by every text the command line prints (it
//! lives in [`crate::text`] so that the connection layer can use it on the
//! stderr lines it forwards).

pub use crate::text::sanitize;
