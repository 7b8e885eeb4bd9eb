//! Private files in the data directory (through `turnkey-files`: 0700 directories, 0600 files
//! written atomically) with this crate's errors, and the hex helpers for stored hashes.

use std::path::Path;

use crate::error::Error;

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<(), Error> {
    turnkey_files::create_private_dir(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))
}

/// Writes `bytes` to `path` with mode 0600, atomically (see [`turnkey_files::write_private`]).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    turnkey_files::write_private(path, bytes).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let b = [7u8; 32];
        assert_eq!(unhex32(&hex(&b)), Some(b));
        assert_eq!(unhex32("zz"), None);
        assert_eq!(unhex32(&"g".repeat(64)), None);
    }
}
