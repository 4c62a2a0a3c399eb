//! `POST /v1/chat/completions` (being built).
