//! The SQLite side of a rollout's recorded seconds (see `seconds`): table `rollout_seconds`,
//! one row per batch. Added beside the others when a database is opened; additive, so the
//! schema version stays 1 and an older switchyard simply ignores the table.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, Transaction};

use super::seconds::{self, Batch, KEEP_ROLLOUTS};
use crate::analysis::backtest::Recording;

pub(super) const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS rollout_seconds (
     service  TEXT NOT NULL,
     rollout  INTEGER NOT NULL,
     attempt  INTEGER NOT NULL,
     first_ms INTEGER NOT NULL,
     data     BLOB NOT NULL,
     PRIMARY KEY (service, rollout, attempt, first_ms)
 );";

/// Writes a batch (a batch of the same first second written again replaces it); the
/// attempt's first also prunes the service's rollouts beyond the latest `KEEP_ROLLOUTS`.
pub(super) fn write(tx: &Transaction<'_>, b: &Batch) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT OR REPLACE INTO rollout_seconds (service, rollout, attempt, first_ms, data)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            b.service,
            b.rollout as i64,
            b.attempt,
            b.key_ms(),
            seconds::encode(&b.recording)
        ],
    )?;
    if b.first {
        tx.execute(
            "DELETE FROM rollout_seconds WHERE service = ?1 AND rollout < (
                 SELECT MIN(rollout) FROM (SELECT DISTINCT rollout FROM rollout_seconds
                 WHERE service = ?1 ORDER BY rollout DESC LIMIT ?2))",
            params![b.service, KEEP_ROLLOUTS as i64],
        )?;
    }
    Ok(())
}

/// Every batch of the rollout, merged per attempt; a batch that does not decode is named.
pub(super) fn read(
    conn: &Connection,
    service: &str,
    rollout: u64,
) -> rusqlite::Result<Result<BTreeMap<u32, Recording>, String>> {
    let mut stmt = conn.prepare(
        "SELECT attempt, first_ms, data FROM rollout_seconds
         WHERE service = ?1 AND rollout = ?2 ORDER BY attempt, first_ms",
    )?;
    let rows = stmt.query_map(params![service, rollout as i64], |r| {
        Ok((
            r.get::<_, u32>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Vec<u8>>(2)?,
        ))
    })?;
    let mut out: BTreeMap<u32, Recording> = BTreeMap::new();
    for row in rows {
        let (attempt, first_ms, data) = row?;
        match seconds::decode(&data) {
            Ok(part) => out.entry(attempt).or_default().merge(part),
            Err(e) => {
                return Ok(Err(format!(
                    "seconds of rollout #{rollout} attempt {attempt} from {first_ms}: {e}"
                )))
            }
        }
    }
    Ok(Ok(out))
}
