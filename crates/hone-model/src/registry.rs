//! The local model registry under `$HONE_HOME/models`: fetching the default model and resolving ids and paths.
