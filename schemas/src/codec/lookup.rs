//! Where a [`Decoder`](super::Decoder) finds the writer schema of a Confluent-framed message: a schema
//! registry client, or [`StaticSchemas`] when no registry is configured.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use apache_avro::Schema;

use super::{DecodeError, Record};

/// Resolves a Confluent schema id to the writer schema. The decoder asks once per id and caches the
/// answer, so an implementation may block (e.g. on an HTTP call to the registry). Errors are not
/// cached (the id may be registered later), so a registry client should cache "not found" briefly
/// itself, or a stream of messages with a bogus id becomes a stream of registry calls.
pub trait SchemaLookup: Send + Sync {
    /// The writer schema registered under `id`: [`DecodeError::UnknownSchemaId`] when there is none,
    /// [`DecodeError::SchemaLookup`] when the lookup itself failed (worth retrying).
    fn writer_schema(&self, id: u32) -> Result<Arc<Schema>, DecodeError>;
}

/// A fixed map from schema id to schema: for tests, and for running without a registry where the
/// producers' schema ids are configured.
#[derive(Clone, Default)]
pub struct StaticSchemas {
    by_id: BTreeMap<u32, Arc<Schema>>,
}

impl StaticSchemas {
    /// No schemas: every Confluent message is an [`DecodeError::UnknownSchemaId`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `schema` under `id`, replacing what was there.
    pub fn with_schema(mut self, id: u32, schema: impl Into<Arc<Schema>>) -> Self {
        self.insert(id, schema);
        self
    }

    /// Adds the record type's own schema under `id` (the id it was registered under).
    pub fn with_record<T: Record>(self, id: u32) -> Self {
        self.with_schema(id, T::schema().clone())
    }

    /// Adds `schema` under `id`, replacing what was there.
    pub fn insert(&mut self, id: u32, schema: impl Into<Arc<Schema>>) {
        self.by_id.insert(id, schema.into());
    }

    /// The ids known, ascending.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_id.keys().copied()
    }
}

impl SchemaLookup for StaticSchemas {
    fn writer_schema(&self, id: u32) -> Result<Arc<Schema>, DecodeError> {
        self.by_id.get(&id).cloned().ok_or_else(|| DecodeError::UnknownSchemaId { id, looked_up_in: self.to_string() })
    }
}

impl fmt::Display for StaticSchemas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.by_id.is_empty() {
            return f.write_str("the static schemas (none configured)");
        }
        f.write_str("the static schemas (ids ")?;
        for (i, id) in self.ids().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{id}")?;
        }
        f.write_str(")")
    }
}

impl fmt::Debug for StaticSchemas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: BTreeMap<u32, Option<String>> =
            self.by_id.iter().map(|(id, schema)| (*id, schema.name().map(|name| name.fullname(None)))).collect();
        f.debug_struct("StaticSchemas").field("by_id", &names).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Flow;

    #[test]
    fn unknown_id_names_the_ids_that_are_known() {
        let schemas = StaticSchemas::new().with_record::<Flow>(7).with_record::<Flow>(3);
        let err = schemas.writer_schema(17).expect_err("17 is not registered");
        assert_eq!(err.kind(), "unknown_schema_id");
        assert_eq!(
            err.to_string(),
            "schema id 17 not found in the static schemas (ids 3, 7); register the writer schema or configure the registry"
        );
        let schema = schemas.writer_schema(7).expect("7 is registered");
        assert_eq!(*schema, *Flow::schema());
    }
}
