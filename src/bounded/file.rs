//! Reading a file named by the configuration (the file itself, certificates, keys). Only
//! regular files of at most [`MAX_FILE_BYTES`] are read: a FIFO given as a certificate path
//! once blocked `open` forever on a runtime thread, freezing the proxy and the admin API.
//! `stat` does not block on a FIFO, and the file is opened non-blocking and checked again,
//! so a path swapped for a FIFO between the two is refused too. Callers on the async
//! runtime still run this in `spawn_blocking`: a regular file on a stuck disk can block.

use std::fs::{Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Far above any configuration file, certificate chain or key.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a regular file (it is a {0}); only regular files are read")]
    NotRegular(&'static str),
    #[error("{size} bytes is more than the {limit} bytes read at most")]
    TooLarge { size: u64, limit: u64 },
}

/// The file's bytes; errors say why without the path (callers name the file).
pub fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    check(&std::fs::metadata(path)?, limit)?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    check(&meta, limit)?;
    let mut buf = Vec::with_capacity(meta.len() as usize);
    // A file that grew since the check is still cut at the bound.
    Read::take(&file, limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(FileError::TooLarge {
            size: buf.len() as u64,
            limit,
        });
    }
    Ok(buf)
}

/// As [`read_file`], as UTF-8 text.
pub fn read_text(path: &Path, limit: u64) -> Result<String, FileError> {
    String::from_utf8(read_file(path, limit)?)
        .map_err(|_| FileError::Io(io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text")))
}

fn check(meta: &Metadata, limit: u64) -> Result<(), FileError> {
    let t = meta.file_type();
    if !t.is_file() {
        return Err(FileError::NotRegular(if t.is_fifo() {
            "FIFO"
        } else if t.is_dir() {
            "directory"
        } else if t.is_socket() {
            "socket"
        } else if t.is_char_device() || t.is_block_device() {
            "device"
        } else {
            "special file"
        }));
    }
    if meta.len() > limit {
        return Err(FileError::TooLarge {
            size: meta.len(),
            limit,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bounded_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok.toml");
        std::fs::write(&ok, "x = 1\n").unwrap();
        assert_eq!(read_text(&ok, 100).unwrap(), "x = 1\n");
        let big = dir.path().join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        let e = read_file(&big, MAX_FILE_BYTES).unwrap_err().to_string();
        assert!(e.contains("more than the 16777216 bytes"), "{e}");
        let e = read_file(dir.path(), 100).unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let e = read_file(&fifo, 100).unwrap_err().to_string();
        assert!(e.contains("not a regular file (it is a FIFO)"), "{e}");
    }
}
