//! Secrets (tokens, passwords, signing keys): the shared mechanism lives in
//! [`peergraph_schemas::secret`], which the schema registry client uses too.

pub use peergraph_schemas::secret::{load_optional_secret, load_secret, looks_secret, Secret};
