//! gate: placeholder, written with the ingest stage.
