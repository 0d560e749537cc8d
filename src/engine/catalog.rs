//! The registry, served schema and manifest version, cached and reloaded on DDL.

use postgres::GenericClient;

use super::EngineError;
use crate::registry::Registry;
use crate::schema::{Schema, TypeCatalog};
use crate::store::introspect::{self, RegistrySettings};
use crate::types::Oid;

/// A consistent view of the synced tables at one catalog state.
#[derive(Debug, Clone)]
pub struct CatalogState {
    /// The introspected tables.
    pub registry: Registry,
    /// Enum and domain names.
    pub types: TypeCatalog,
    /// The served schema and its hash.
    pub schema: Schema,
    /// The manifest version of `schema.hash`.
    pub version: i64,
    fingerprint: String,
    oids: Vec<Oid>,
}

impl CatalogState {
    /// Introspects, validates, serves and versions the registered tables.
    pub fn load(db: &mut impl GenericClient, settings: &RegistrySettings) -> Result<CatalogState, EngineError> {
        let mut state = CatalogState::introspect(db, settings)?;
        state.version = introspect::manifest_version(db, &state.schema.hash)?;
        Ok(state)
    }

    /// [`CatalogState::load`] with the manifest in the sync store: the catalog is read on the
    /// application database, the version recorded in the store.
    pub(crate) fn load_from(dbs: &mut super::Conns, settings: &RegistrySettings) -> Result<CatalogState, EngineError> {
        let mut state = CatalogState::introspect(&mut ***dbs.app(), settings)?;
        state.version = introspect::manifest_version(&mut ***dbs.store(), &state.schema.hash)?;
        Ok(state)
    }

    /// Everything but the manifest version (left 0).
    fn introspect(db: &mut impl GenericClient, settings: &RegistrySettings) -> Result<CatalogState, EngineError> {
        let registry = introspect::load_registry(db, settings)?;
        let types = introspect::type_catalog(db)?;
        let schema = Schema::build(&registry, &types).map_err(|e| EngineError::Schema(e.to_string()))?;
        // Membership tables too: a dropped or retyped membership column must reload the rules.
        let oids: Vec<Oid> = registry
            .tables
            .iter()
            .map(|t| t.oid)
            .chain(registry.membership_tables().into_iter().map(|m| m.oid))
            .collect();
        let fingerprint = introspect::catalog_fingerprint(db, &oids)?;
        Ok(CatalogState { registry, types, schema, version: 0, fingerprint, oids })
    }

    /// The catalog fingerprint of the registered tables when this state was loaded.
    pub(crate) fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The registered tables' relation oids.
    pub(crate) fn oids(&self) -> &[Oid] {
        &self.oids
    }

    /// True when no DDL touched the registered tables since this state was loaded.
    pub fn is_current(&self, db: &mut impl GenericClient) -> Result<bool, EngineError> {
        Ok(introspect::catalog_fingerprint(db, &self.oids)? == self.fingerprint)
    }
}
