//! Secrets rampart generates for itself on first run (the JWT secret, the admin token): created
//! once with 256 bits of entropy as hex, mode 0600, fsynced, and reused on every later start.
//!
//! Must never: overwrite an existing secret (two processes starting at once both end up with the
//! one that was created first), or log a secret.

use std::io::Write as _;
use std::path::Path;

use rand::RngCore as _;

/// Bytes of entropy in a generated secret.
const GENERATED_SECRET_BYTES: usize = 32;

/// The secret stored at `path` exactly as stored (an operator's own file is used byte for byte),
/// created there first if the file is missing or empty.
pub fn read_or_create(path: &Path) -> std::io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(secret) if !secret.is_empty() => return Ok(secret),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut bytes = [0u8; GENERATED_SECRET_BYTES];
    rand::thread_rng().fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(secret.as_bytes())?;
            file.sync_all()?;
            Ok(secret.into_bytes())
        }
        // Another process (a concurrent `rampart token`, say) created it first: use theirs.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(path),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_secret_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("secret");
        let first = read_or_create(&path).unwrap();
        assert_eq!(first.len(), 2 * GENERATED_SECRET_BYTES);
        assert_eq!(read_or_create(&path).unwrap(), first);
        // An operator's own file is used exactly as written (a JWT secret must not change).
        let own = dir.path().join("own");
        std::fs::write(&own, b"operator secret\n\xff").unwrap();
        assert_eq!(read_or_create(&own).unwrap(), b"operator secret\n\xff");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
