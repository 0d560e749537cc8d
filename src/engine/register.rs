//! POST /sync/register (§1.2).

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::{Engine, EngineError};
use crate::protocol::{RegisterRequest, RegisterResponse};
use crate::store::clients::{self, Registration};
use crate::time::format_timestamp;
use crate::types::UserId;
use crate::version::{GateError, VersionGate};

impl Engine {
    /// Registers (or re-registers) a device of `user`.
    pub fn register(&self, user: &UserId, req: &RegisterRequest) -> Result<RegisterResponse, EngineError> {
        req.validate()?;
        let mut dbs = self.dbs()?;
        let cat = self.catalog(&mut dbs)?;
        if !req.schema.is_bootstrap() {
            Engine::check_schema(&cat, req.schema.version, &req.schema.hash)?;
        }
        match VersionGate::new(&self.settings.min_client_version).check(&req.app_version) {
            Ok(()) => {}
            Err(GateError::TooOld) => return Err(EngineError::UpgradeRequired),
            Err(GateError::Unparseable) => {
                return Err(EngineError::BadRequest(format!(
                    "app_version {:?} is not a version (expected MAJOR.MINOR.PATCH)",
                    req.app_version
                )))
            }
        }
        let reg = Registration {
            client_id: req.client_id.clone(),
            client_name: req.client_name.clone(),
            platform: req.platform.clone(),
            app_version: req.app_version.clone(),
        };
        let mut tx =
            dbs.store().transaction().map_err(crate::store::pool::StoreError::query("starting the registration"))?;
        let client = clients::register(&mut tx, user, &reg)?;
        let checkpoints: BTreeMap<String, i64> =
            clients::bucket_checkpoints(&mut tx, user, &req.client_id)?.into_iter().collect();
        tx.commit().map_err(crate::store::pool::StoreError::query("committing the registration"))?;
        Ok(RegisterResponse {
            id: client.id,
            server_time: format_timestamp(SystemTime::now()),
            last_sync_at: client.last_sync_at.map(format_timestamp),
            checkpoint: client.last_pull_seq.unwrap_or(0),
            bucket_checkpoints: checkpoints,
            schema_version: cat.version,
            schema_hash: cat.schema.hash.clone(),
        })
    }
}
