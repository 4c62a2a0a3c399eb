//! hone-text
