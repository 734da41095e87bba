//! Start-up configuration: every missing variable in one error, and a
//! `SECRET_KEY` that is loaded or, for a single instance, generated.
//!
//! The guide "stops the app if critical keys are missing". Stopping is right
//! (a service without its database URL cannot heal into having one), but
//! stopping at the *first* missing variable is not: the operator fixes one,
//! redeploys, and meets the next. [`require`] checks them all and names
//! every missing one in a single error. It never prints a value.
//!
//! `SECRET_KEY` signs session cookies. When it is not set, a single instance
//! can make its own: 64 bytes from the operating system's CSPRNG, written to
//! a key file with mode `0600` and reused on every restart (so sessions
//! survive restarts), with a warning in the log (never the key). Several
//! instances cannot: each would make a different key and reject the others'
//! cookies, so [`SecretKeyOptions::with_instances`] with [`Instances::Several`]
//! makes a missing `SECRET_KEY` an error.
//!
//! ```no_run
//! use selfheal::config::{self, Instances, SecretKeyOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! config::load_dotenv()?; // .env, when there is one
//! let env = config::require(&["DATABASE_URL", "SMTP_HOST", "ADMIN_TOKEN"])?;
//! let database_url = env.get("DATABASE_URL");
//! let key = SecretKeyOptions::new().with_instances(Instances::One).load()?;
//! # let _ = (database_url, key);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::fs::OpenOptions;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha512};

use crate::ConfigError;

/// Loads `.env` from the working directory or its parents into the
/// environment, if there is one; variables already set win. Returns the
/// file's path. A file that exists but cannot be parsed is an error (it
/// names the line, not the values).
pub fn load_dotenv() -> Result<Option<PathBuf>, ConfigError> {
    match dotenvy::dotenv() {
        Ok(path) => Ok(Some(path)),
        Err(error) if error.not_found() => Ok(None),
        Err(dotenvy::Error::LineParse(_, index)) => Err(ConfigError::new(format!(
            "cannot parse .env at byte {index}"
        ))),
        Err(error) => Err(ConfigError::new(format!(
            "cannot read .env: {}",
            kind(&error)
        ))),
    }
}

fn kind(error: &dotenvy::Error) -> String {
    match error {
        dotenvy::Error::Io(io) => io.kind().to_string(),
        dotenvy::Error::EnvVar(_) => "invalid variable".to_owned(),
        _ => "invalid file".to_owned(),
    }
}

/// Required variables that are missing (unset, empty, or not Unicode).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "missing required environment variable{}: {} (set them, or add them to .env)",
    if .names.len() == 1 { "" } else { "s" },
    .names.join(", ")
)]
pub struct MissingVars {
    /// The missing variables' names, in the order they were asked for.
    pub names: Vec<String>,
}

/// The values of the required variables. `Debug` shows names, never values.
#[derive(Clone, Default)]
pub struct Env {
    values: BTreeMap<String, String>,
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Env")
            .field("names", &self.values.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Env {
    /// The value of `name`, one of the variables [`require`]d.
    ///
    /// # Panics
    ///
    /// If `name` was not required: a programming error.
    pub fn get(&self, name: &str) -> &str {
        match self.values.get(name) {
            Some(value) => value,
            None => panic!("{name} was not among the required variables"),
        }
    }
}

/// Checks that every variable in `names` is set (and not empty) in the
/// process environment; the error names all the missing ones at once.
pub fn require(names: &[&str]) -> Result<Env, MissingVars> {
    require_from(names, |name| std::env::var(name).ok())
}

/// [`require`] over any lookup (a map in tests, a secrets manager).
pub fn require_from(
    names: &[&str],
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Env, MissingVars> {
    let mut env = Env::default();
    let mut missing = Vec::new();
    for name in names {
        match lookup(name).filter(|v| !v.trim().is_empty()) {
            Some(value) => {
                env.values.insert((*name).to_owned(), value);
            }
            None if !missing.iter().any(|m| m == name) => missing.push((*name).to_owned()),
            None => {}
        }
    }
    if missing.is_empty() {
        Ok(env)
    } else {
        Err(MissingVars { names: missing })
    }
}

/// How many instances of the app share sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instances {
    /// One: a generated key file is fine.
    One,
    /// Several (behind a load balancer, or rolling deploys on several
    /// hosts): `SECRET_KEY` must be set, nothing is generated.
    Several,
}

/// A 64-byte key for signing cookies. `Debug` never shows it, and it has no
/// `Display`.
#[derive(Clone)]
pub struct SecretKey {
    bytes: [u8; 64],
    generated: bool,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("bytes", &"<redacted>")
            .field("generated", &self.generated)
            .finish()
    }
}

impl SecretKey {
    /// The key's 64 bytes (what `tower_sessions::cookie::Key::from` takes).
    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.bytes
    }

    /// Whether it comes from a key file this process or an earlier one
    /// generated (not from the environment).
    pub fn is_generated(&self) -> bool {
        self.generated
    }
}

/// Where the secret key comes from.
///
/// Defaults: variable `SECRET_KEY`, key file `.secret_key`,
/// [`Instances::One`].
#[derive(Clone, Debug)]
pub struct SecretKeyOptions {
    var: String,
    key_file: PathBuf,
    instances: Instances,
}

impl Default for SecretKeyOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl SecretKeyOptions {
    /// The shortest `SECRET_KEY` accepted, in bytes.
    pub const MIN_LEN: usize = 32;

    /// The defaults.
    pub fn new() -> Self {
        Self {
            var: "SECRET_KEY".to_owned(),
            key_file: PathBuf::from(".secret_key"),
            instances: Instances::One,
        }
    }

    /// The environment variable. Default `SECRET_KEY`.
    pub fn with_var(mut self, name: impl Into<String>) -> Self {
        self.var = name.into();
        self
    }

    /// The key file used when the variable is not set. Default `.secret_key`
    /// (in the working directory).
    pub fn with_key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.key_file = path.into();
        self
    }

    /// How many instances share sessions. Default [`Instances::One`].
    pub fn with_instances(mut self, instances: Instances) -> Self {
        self.instances = instances;
        self
    }

    /// The key from the process environment, else from the key file
    /// (generated when absent, for [`Instances::One`]).
    pub fn load(&self) -> Result<SecretKey, ConfigError> {
        self.load_from(|name| std::env::var(name).ok())
    }

    /// [`load`](Self::load) over any lookup.
    ///
    /// A value from the environment must be at least
    /// [`MIN_LEN`](Self::MIN_LEN) bytes; it is stretched to 64 bytes with
    /// SHA-512 (so any long random string works as `SECRET_KEY`).
    pub fn load_from(
        &self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<SecretKey, ConfigError> {
        if let Some(value) = lookup(&self.var).filter(|v| !v.is_empty()) {
            if value.len() < Self::MIN_LEN {
                return Err(ConfigError::new(format!(
                    "{} is too short: at least {} bytes are needed (it has {})",
                    self.var,
                    Self::MIN_LEN,
                    value.len()
                )));
            }
            let mut hash = Sha512::new();
            hash.update(b"selfheal secret key\0");
            hash.update(value.as_bytes());
            return Ok(SecretKey {
                bytes: hash.finalize().into(),
                generated: false,
            });
        }
        if self.instances == Instances::Several {
            return Err(ConfigError::new(format!(
                "{} is not set, and this app runs as several instances: a key generated by \
                 each instance would reject the others' sessions. Set {} to the same long \
                 random value everywhere.",
                self.var, self.var
            )));
        }
        let bytes = read_or_create(&self.key_file)?;
        Ok(SecretKey {
            bytes,
            generated: true,
        })
    }
}

/// Reads the 64-byte key file, or creates it (mode 0600) with fresh random
/// bytes when it does not exist.
fn read_or_create(path: &Path) -> Result<[u8; 64], ConfigError> {
    let shown = path.display();
    match std::fs::File::open(path) {
        Ok(mut file) => {
            let mut bytes = [0u8; 64];
            let mut extra = [0u8; 1];
            file.read_exact(&mut bytes)
                .and_then(|()| match file.read(&mut extra)? {
                    0 => Ok(()),
                    _ => Err(ErrorKind::InvalidData.into()),
                })
                .map_err(|_| {
                    ConfigError::new(format!(
                        "the key file {shown} is not 64 bytes long; remove it to generate a \
                         new one (this signs everyone out), or set SECRET_KEY"
                    ))
                })?;
            warn_if_readable_by_others(path);
            tracing::warn!(
                target: "selfheal",
                key_file = %shown,
                "SECRET_KEY is not set; using the generated key file (set SECRET_KEY in production)"
            );
            Ok(bytes)
        }
        Err(error) if error.kind() == ErrorKind::NotFound => {
            let mut bytes = [0u8; 64];
            getrandom::getrandom(&mut bytes).map_err(|error| {
                ConfigError::new(format!("cannot get random bytes for a key: {error}"))
            })?;
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let written = options.open(path).and_then(|mut file| {
                file.write_all(&bytes)?;
                file.sync_all()
            });
            match written {
                Ok(()) => {
                    tracing::warn!(
                        target: "selfheal",
                        key_file = %shown,
                        "SECRET_KEY is not set; generated a new key file (mode 0600). \
                         Set SECRET_KEY in production."
                    );
                    Ok(bytes)
                }
                // Another process created it first: use theirs.
                Err(error) if error.kind() == ErrorKind::AlreadyExists => read_or_create(path),
                Err(error) => Err(ConfigError::new(format!(
                    "SECRET_KEY is not set and the key file {shown} cannot be created: {}",
                    error.kind()
                ))),
            }
        }
        Err(error) => Err(ConfigError::new(format!(
            "cannot read the key file {shown}: {}",
            error.kind()
        ))),
    }
}

fn warn_if_readable_by_others(_path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(_path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                target: "selfheal",
                key_file = %_path.display(),
                mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
                "the key file is readable by other users; chmod 600 it"
            );
        }
    }
}
