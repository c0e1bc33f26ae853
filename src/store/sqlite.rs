//! The SQLite store: one file (WAL, synchronous FULL), checked at open so that a corrupt or
//! unwritable database stops the start with a clear error instead of losing state later.
//! One instance per file (see `lock`).

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};

use super::lock::InstanceLock;
use super::seconds::Batch;
use super::sqlite_seconds;
use super::{Commit, Dump, Event, EventQuery, NewRollout, Persisted, Store, StoreError};
use crate::rollout::Rollout;

const SCHEMA_VERSION: i64 = 1;

/// How long a write waits for another connection's lock once running. Short on purpose: a
/// write that cannot get the file must fail fast, so that a forward step is refused quickly
/// and a rollback's retrying persister (not the caller) does the waiting.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_millis(250);

/// At open, when nothing runs yet, a locked file is worth waiting for a little longer.
const OPEN_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteStore {
    path: String,
    conn: Mutex<Connection>,
    /// Held for the store's life; `None` for `:memory:`.
    _lock: Option<InstanceLock>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`; `:memory:` keeps state in memory.
    /// Fails, naming the holder, when another instance has the file.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let shown = path.display().to_string();
        let lock = if path == Path::new(":memory:") {
            None
        } else {
            Some(InstanceLock::acquire(path)?)
        };
        let open_err = |e: rusqlite::Error| StoreError::Open {
            path: shown.clone(),
            reason: e.to_string(),
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(OPEN_BUSY_TIMEOUT).map_err(open_err)?;
        // A file that is not a database fails here, before anything else.
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(open_err)?;
        if check != "ok" {
            return Err(StoreError::Open {
                path: shown,
                reason: format!("integrity check failed: {check}"),
            });
        }
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Open {
                path: shown,
                reason: format!("schema version {version} is newer than this switchyard understands ({SCHEMA_VERSION})"),
            });
        }
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS traffic (
                 service TEXT PRIMARY KEY,
                 state   TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS rollouts (
                 id         INTEGER PRIMARY KEY AUTOINCREMENT,
                 service    TEXT NOT NULL,
                 state      TEXT NOT NULL,
                 status     TEXT NOT NULL,
                 updated_at INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS rollouts_by_service ON rollouts (service, id);
             CREATE TABLE IF NOT EXISTS events (
                 id        INTEGER PRIMARY KEY AUTOINCREMENT,
                 at        INTEGER NOT NULL,
                 service   TEXT NOT NULL,
                 rollout   INTEGER,
                 actor     TEXT NOT NULL,
                 kind      TEXT NOT NULL,
                 from_split TEXT,
                 to_split  TEXT,
                 reason    TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS events_by_service ON events (service, id);
             PRAGMA user_version = 1;",
        )
        .map_err(|e| StoreError::Open {
            path: shown.clone(),
            reason: format!("cannot write: {e}"),
        })?;
        add_on_behalf_of(&conn).map_err(|e| StoreError::Open {
            path: shown.clone(),
            reason: format!("cannot add events.on_behalf_of: {e}"),
        })?;
        conn.execute_batch(sqlite_seconds::SCHEMA)
            .map_err(|e| StoreError::Open {
                path: shown.clone(),
                reason: format!("cannot add the recorded seconds' table: {e}"),
            })?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        Ok(SqliteStore {
            path: shown,
            conn: Mutex::new(conn),
            _lock: lock,
        })
    }

    fn io(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    fn corrupt(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    /// Everything of a commit, inside the caller's transaction.
    fn write(&self, tx: &rusqlite::Transaction<'_>, c: &Commit) -> Result<(), StoreError> {
        for (service, rec) in &c.traffic {
            let json = serde_json::to_string(rec).expect("traffic serialises");
            tx.execute(
                "INSERT INTO traffic (service, state) VALUES (?1, ?2)
                 ON CONFLICT (service) DO UPDATE SET state = excluded.state",
                params![service, json],
            )
            .map_err(|e| self.io(e))?;
        }
        if let Some(r) = &c.rollout {
            let json = serde_json::to_string(r).expect("rollout serialises");
            let status = r.status.as_str();
            tx.execute(
                "INSERT INTO rollouts (id, service, state, status, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO UPDATE SET service = excluded.service, state = excluded.state, status = excluded.status,
                 updated_at = excluded.updated_at",
                params![r.id as i64, r.service, json, status, r.updated_at],
            )
            .map_err(|e| self.io(e))?;
        }
        for e in &c.events {
            let split = |s: &Option<crate::split::Split>| {
                s.as_ref().map(|s| serde_json::to_string(s).expect("split"))
            };
            // A new event takes the next id; an imported one keeps its own.
            tx.execute(
                "INSERT INTO events (id, at, service, rollout, actor, kind, from_split, to_split, reason, on_behalf_of)
                 VALUES (?10, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    e.at,
                    e.service,
                    e.rollout.map(|r| r as i64),
                    e.actor,
                    e.kind,
                    split(&e.from),
                    split(&e.to),
                    e.reason,
                    e.on_behalf_of,
                    (e.id != 0).then_some(e.id)
                ],
            )
            .map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// Events selected by `filter` (the SQL after `FROM events`).
    fn read_events(
        &self,
        conn: &Connection,
        filter: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Event>, StoreError> {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT id, at, service, rollout, actor, kind, from_split, to_split, reason, on_behalf_of
                 FROM events {filter}"
            ))
            .map_err(|e| self.io(e))?;
        let rows = stmt
            .query_map(params, |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, String>(8)?,
                    r.get::<_, Option<String>>(9)?,
                ))
            })
            .map_err(|e| self.io(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at, service, rollout, actor, kind, from, to, reason, on_behalf_of) =
                row.map_err(|e| self.io(e))?;
            let parse = |s: Option<String>| -> Result<_, StoreError> {
                s.map(|s| serde_json::from_str(&s).map_err(|e| self.corrupt(e)))
                    .transpose()
            };
            out.push(Event {
                id,
                at,
                service,
                rollout: rollout.map(|r| r as u64),
                actor,
                on_behalf_of,
                kind,
                from: parse(from)?,
                to: parse(to)?,
                reason,
            });
        }
        Ok(out)
    }

    /// Pairs of text columns (a name and a JSON `state`), in the order `sql` gives.
    fn states(&self, conn: &Connection, sql: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = conn.prepare(sql).map_err(|e| self.io(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.io(e))?;
        rows.map(|r| r.map_err(|e| self.io(e))).collect()
    }
}

/// Adds `events.on_behalf_of` to a database made before it existed. Additive and nullable,
/// so the schema version stays 1: an older switchyard still reads and writes the table
/// (leaving the column empty), and opening twice is harmless.
fn add_on_behalf_of(conn: &Connection) -> rusqlite::Result<()> {
    let has: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('events') WHERE name = 'on_behalf_of'")?
        .exists([])?;
    if !has {
        conn.execute_batch("ALTER TABLE events ADD COLUMN on_behalf_of TEXT")?;
    }
    Ok(())
}

impl Store for SqliteStore {
    fn load(&self) -> Result<Persisted, StoreError> {
        let conn = self.conn.lock().expect("store lock");
        let mut out = Persisted::default();
        let mut stmt = conn
            .prepare("SELECT service, state FROM traffic")
            .map_err(|e| self.io(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.io(e))?;
        for row in rows {
            let (service, json) = row.map_err(|e| self.io(e))?;
            let rec = serde_json::from_str(&json)
                .map_err(|e| self.corrupt(format!("traffic of {service}: {e}")))?;
            out.traffic.insert(service, rec);
        }
        // The latest rollout of each service.
        let mut stmt = conn
            .prepare("SELECT state FROM rollouts WHERE id IN (SELECT MAX(id) FROM rollouts GROUP BY service)")
            .map_err(|e| self.io(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.io(e))?;
        for row in rows {
            let json = row.map_err(|e| self.io(e))?;
            let r: Rollout =
                serde_json::from_str(&json).map_err(|e| self.corrupt(format!("rollout: {e}")))?;
            out.rollouts.insert(r.service.clone(), r);
        }
        Ok(out)
    }

    fn commit(&self, c: &Commit) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().expect("store lock");
        let tx = conn.transaction().map_err(|e| self.io(e))?;
        self.write(&tx, c)?;
        tx.commit().map_err(|e| self.io(e))
    }

    fn create_rollout(&self, make: &NewRollout) -> Result<u64, StoreError> {
        let mut conn = self.conn.lock().expect("store lock");
        let tx = conn.transaction().map_err(|e| self.io(e))?;
        // The row takes the next id (AUTOINCREMENT on new files; on older ones the rowid,
        // which is the same as rollouts are never deleted), then gets its real state.
        tx.execute(
            "INSERT INTO rollouts (id, service, state, status, updated_at) VALUES (NULL, '', '', '', 0)",
            [],
        )
        .map_err(|e| self.io(e))?;
        let id = tx.last_insert_rowid() as u64;
        self.write(&tx, &make(id))?;
        tx.commit().map_err(|e| self.io(e))?;
        Ok(id)
    }

    fn events(&self, q: &EventQuery) -> Result<Vec<Event>, StoreError> {
        let conn = self.conn.lock().expect("store lock");
        let limit = q.limit.unwrap_or(100).min(10_000) as i64;
        self.read_events(
            &conn,
            "WHERE (?1 IS NULL OR service = ?1) AND (?2 IS NULL OR rollout = ?2)
               AND (?3 IS NULL OR kind = ?3) AND (?4 IS NULL OR actor = ?4) AND (?5 IS NULL OR at >= ?5)
             ORDER BY id DESC LIMIT ?6",
            params![
                q.service,
                q.rollout.map(|r| r as i64),
                q.kind,
                q.actor,
                q.since,
                limit
            ],
        )
    }

    fn rollouts(&self, service: Option<&str>, limit: usize) -> Result<Vec<Rollout>, StoreError> {
        let conn = self.conn.lock().expect("store lock");
        let mut stmt = conn
            .prepare("SELECT state FROM rollouts WHERE (?1 IS NULL OR service = ?1) ORDER BY id DESC LIMIT ?2")
            .map_err(|e| self.io(e))?;
        let rows = stmt
            .query_map(params![service, limit as i64], |r| r.get::<_, String>(0))
            .map_err(|e| self.io(e))?;
        let mut out = Vec::new();
        for row in rows {
            let json = row.map_err(|e| self.io(e))?;
            out.push(serde_json::from_str(&json).map_err(|e| self.corrupt(e))?);
        }
        Ok(out)
    }

    fn export(&self) -> Result<Dump, StoreError> {
        let conn = self.conn.lock().expect("store lock");
        let mut d = Dump::default();
        for (service, json) in self.states(&conn, "SELECT service, state FROM traffic")? {
            let rec = serde_json::from_str(&json)
                .map_err(|e| self.corrupt(format!("traffic of {service}: {e}")))?;
            d.traffic.insert(service, rec);
        }
        for (_, json) in self.states(&conn, "SELECT service, state FROM rollouts ORDER BY id")? {
            d.rollouts.push(
                serde_json::from_str(&json).map_err(|e| self.corrupt(format!("rollout: {e}")))?,
            );
        }
        d.events = self.read_events(&conn, "ORDER BY id", [])?;
        Ok(d)
    }

    fn record_seconds(&self, b: &Batch) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().expect("store lock");
        let tx = conn.transaction().map_err(|e| self.io(e))?;
        sqlite_seconds::write(&tx, b).map_err(|e| self.io(e))?;
        tx.commit().map_err(|e| self.io(e))
    }

    fn recorded_seconds(
        &self,
        service: &str,
        rollout: u64,
    ) -> Result<std::collections::BTreeMap<u32, crate::analysis::backtest::Recording>, StoreError>
    {
        let conn = self.conn.lock().expect("store lock");
        sqlite_seconds::read(&conn, service, rollout)
            .map_err(|e| self.io(e))?
            .map_err(|e| self.corrupt(e))
    }

    /// In one transaction, ids kept: explicit ids move AUTOINCREMENT past them, so what is
    /// created afterwards never reuses one.
    fn import(&self, d: &Dump) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().expect("store lock");
        let tx = conn.transaction().map_err(|e| self.io(e))?;
        let held: i64 = tx
            .query_row(
                "SELECT (SELECT COUNT(*) FROM traffic) + (SELECT COUNT(*) FROM rollouts) + (SELECT COUNT(*) FROM events)",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.io(e))?;
        if held > 0 {
            return Err(self.io(
                "import refused: the database already holds state (traffic, rollouts or events)",
            ));
        }
        let mut c = Commit {
            traffic: d.traffic.clone().into_iter().collect(),
            events: d.events.clone(),
            ..Commit::default()
        };
        if c.events.iter().any(|e| e.id <= 0) {
            return Err(self.io("import refused: an event of the dump has no id"));
        }
        self.write(&tx, &c)?;
        c.traffic.clear();
        c.events.clear();
        for r in &d.rollouts {
            c.rollout = Some(r.clone());
            self.write(&tx, &c)?;
        }
        tx.commit().map_err(|e| self.io(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::Strategy;

    fn new_rollout(id: u64, service: &str) -> Commit {
        Commit {
            rollout: Some(Rollout {
                id,
                ..Rollout::new(
                    service,
                    "blue",
                    "green",
                    Strategy::all_at_once(),
                    "test".into(),
                    0,
                )
            }),
            ..Commit::default()
        }
    }

    #[test]
    fn ids_come_from_the_database_and_a_second_open_is_refused() {
        let dir = std::env::temp_dir().join(format!("sy-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.db");
        let _ = std::fs::remove_file(&path);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.create_rollout(&|id| new_rollout(id, "a")).unwrap(), 1);
        assert_eq!(store.create_rollout(&|id| new_rollout(id, "b")).unwrap(), 2);
        let err = SqliteStore::open(&path).err().expect("second open refused");
        let text = err.to_string();
        assert!(
            text.contains("state.db") && text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.create_rollout(&|id| new_rollout(id, "a")).unwrap(), 3);
        let loaded = store.load().unwrap();
        assert_eq!(loaded.rollouts["a"].id, 3);
        assert_eq!(loaded.rollouts["b"].id, 2);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
