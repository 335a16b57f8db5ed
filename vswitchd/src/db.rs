//! Persistence of the configuration: one JSON file, replaced atomically on every
//! committed change.
//!
//! Write path: a temporary file in the same directory, `fsync`, `rename` over the
//! old file, `fsync` of the directory. A crash at any point leaves either the old or
//! the new configuration on disk, never a torn mix — which is what makes it safe to
//! SIGKILL the daemon.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Format version written into the file, so a later release can migrate.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot read configuration {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("configuration {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("configuration {path} has format version {found}, this vswitchd understands up to {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("cannot write configuration {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    #[serde(flatten)]
    config: Config,
}

/// Reads the configuration; a missing file is an empty configuration.
pub fn load(path: &Path) -> Result<Config, DbError> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Config::default()),
        Err(source) => {
            return Err(DbError::Read {
                path: path.into(),
                source,
            })
        }
    };
    let disk: OnDisk = serde_json::from_slice(&text).map_err(|source| DbError::Parse {
        path: path.into(),
        source,
    })?;
    if disk.version > FORMAT_VERSION {
        return Err(DbError::Version {
            path: path.into(),
            found: disk.version,
        });
    }
    Ok(disk.config)
}

/// Writes `config` to `path` atomically and durably.
pub fn save(path: &Path, config: &Config) -> Result<(), DbError> {
    let werr = |source| DbError::Write {
        path: path.into(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(werr)?;
    let mut text = serde_json::to_vec_pretty(&OnDisk {
        version: FORMAT_VERSION,
        config: config.clone(),
    })
    .map_err(|e| werr(io::Error::other(e)))?;
    text.push(b'\n');
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(werr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::Op;

    #[test]
    fn save_then_load_round_trips() {
        let dir = std::env::temp_dir().join(format!("vswitch-db-test-{}", std::process::id()));
        let path = dir.join("sub/conf.json");
        assert_eq!(load(&path).unwrap(), Config::default());
        let mut c = Config::default();
        c.transact(&[Op::AddBr {
            bridge: "br0".into(),
            may_exist: false,
        }])
        .unwrap();
        save(&path, &c).unwrap();
        assert_eq!(load(&path).unwrap(), c);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("conf.json")]);
        fs::write(&path, b"{ not json").unwrap();
        assert!(matches!(load(&path), Err(DbError::Parse { .. })));
        fs::write(&path, b"{\"version\": 99, \"bridges\": {}}").unwrap();
        assert!(matches!(load(&path), Err(DbError::Version { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }
}
