//! Persistent domain records in SQLite (WAL), one file in the state directory.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::domain::Domain;

/// A store failure, with the database path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("state database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The error.
        source: rusqlite::Error,
    },
    /// A record did not decode (written by a newer version, or damaged).
    #[error("state database {path}: record {name:?} is unreadable: {source}")]
    Decode {
        /// The database file.
        path: PathBuf,
        /// The record.
        name: String,
        /// The error.
        source: serde_json::Error,
    },
}

/// The domain table.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) `dir/dms.sqlite`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("dms.sqlite");
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(err)?;
        // WAL + NORMAL: a crash of the daemon loses nothing committed; a power loss may lose the
        // last transactions, which reconcile repairs from the kernel's view.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS domains (
                name   TEXT PRIMARY KEY,
                key    TEXT NOT NULL UNIQUE,
                state  TEXT NOT NULL,
                record TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS leases (
                account TEXT PRIMARY KEY,
                record  TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS sessions (
                id     TEXT PRIMARY KEY,
                record TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS jobs (
                id     TEXT PRIMARY KEY,
                record TEXT NOT NULL
            );",
        )
        .map_err(err)?;
        Ok(Self { conn, path })
    }

    fn err(&self) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Inserts or replaces a record.
    pub fn put(&self, d: &Domain) -> Result<(), StoreError> {
        let record = serde_json::to_string(d).map_err(|source| StoreError::Decode {
            path: self.path.clone(),
            name: d.name.clone(),
            source,
        })?;
        self.conn
            .prepare_cached(
                "INSERT INTO domains (name, key, state, record) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(name) DO UPDATE SET key = ?2, state = ?3, record = ?4",
            )
            .and_then(|mut s| s.execute(params![d.name, d.key, d.state.as_str(), record]))
            .map_err(self.err())?;
        Ok(())
    }

    /// Deletes a record (no error if absent).
    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM domains WHERE name = ?1")
            .and_then(|mut s| s.execute(params![name]))
            .map_err(self.err())?;
        Ok(())
    }

    /// One record.
    pub fn get(&self, name: &str) -> Result<Option<Domain>, StoreError> {
        let rec: Option<String> = self
            .conn
            .prepare_cached("SELECT record FROM domains WHERE name = ?1")
            .and_then(|mut s| s.query_row(params![name], |r| r.get(0)).optional())
            .map_err(self.err())?;
        rec.map(|r| self.decode(name, &r)).transpose()
    }

    fn decode(&self, name: &str, rec: &str) -> Result<Domain, StoreError> {
        serde_json::from_str(rec).map_err(|source| StoreError::Decode {
            path: self.path.clone(),
            name: name.to_string(),
            source,
        })
    }

    /// Every record.
    pub fn all(&self) -> Result<Vec<Domain>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, record FROM domains ORDER BY name")
            .map_err(self.err())?;
        let rows: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|it| it.collect())
            .map_err(self.err())?;
        rows.iter().map(|(n, r)| self.decode(n, r)).collect()
    }

    /// Inserts or replaces a JSON record in one of the keyed tables.
    pub fn put_record<T: serde::Serialize>(
        &self,
        table: Table,
        key: &str,
        v: &T,
    ) -> Result<(), StoreError> {
        let record = serde_json::to_string(v).map_err(|source| StoreError::Decode {
            path: self.path.clone(),
            name: key.to_string(),
            source,
        })?;
        self.conn
            .prepare_cached(&format!(
                "INSERT INTO {t} ({k}, record) VALUES (?1, ?2)
                 ON CONFLICT({k}) DO UPDATE SET record = ?2",
                t = table.name(),
                k = table.key()
            ))
            .and_then(|mut s| s.execute(params![key, record]))
            .map_err(self.err())?;
        Ok(())
    }

    /// Deletes a record of a keyed table (no error if absent).
    pub fn delete_record(&self, table: Table, key: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(&format!(
                "DELETE FROM {} WHERE {} = ?1",
                table.name(),
                table.key()
            ))
            .and_then(|mut s| s.execute(params![key]))
            .map_err(self.err())?;
        Ok(())
    }

    /// Every record of a keyed table.
    pub fn all_records<T: serde::de::DeserializeOwned>(
        &self,
        table: Table,
    ) -> Result<Vec<T>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {k}, record FROM {t} ORDER BY {k}",
                t = table.name(),
                k = table.key()
            ))
            .map_err(self.err())?;
        let rows: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|it| it.collect())
            .map_err(self.err())?;
        rows.iter()
            .map(|(k, r)| {
                serde_json::from_str(r).map_err(|source| StoreError::Decode {
                    path: self.path.clone(),
                    name: k.clone(),
                    source,
                })
            })
            .collect()
    }
}

/// The keyed JSON tables beside `domains`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Account leases and static mappings, by account name.
    Leases,
    /// Open PAM sessions, by session id.
    Sessions,
    /// Batch jobs announced by a prolog, by job id.
    Jobs,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Leases => "leases",
            Table::Sessions => "sessions",
            Table::Jobs => "jobs",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Table::Leases => "account",
            Table::Sessions | Table::Jobs => "id",
        }
    }
}
