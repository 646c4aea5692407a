//! A file-backed [`NbdBackend`] for tests that move a lot of data (pread/pwrite, fdatasync).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use corral_nbd::{out_of_range, NbdBackend, NbdError};

pub struct FileBackend {
    file: File,
    size: u64,
}

impl FileBackend {
    pub fn create(path: &Path, size: u64) -> std::io::Result<FileBackend> {
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        file.set_len(size)?;
        Ok(FileBackend { file, size })
    }

    fn check(&self, op: &'static str, offset: u64, len: u64) -> Result<(), NbdError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(out_of_range(op, offset, len, self.size)),
        }
    }
}

// Tests only: the calls block the runtime thread briefly, which is fine at test scale.
impl NbdBackend for FileBackend {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        self.check("read", offset, buf.len() as u64)?;
        self.file.read_exact_at(buf, offset).map_err(|e| NbdError::io("read", e).at(offset, buf.len() as u64))
    }

    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), NbdError> {
        self.check("write", offset, data.len() as u64)?;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| NbdError::io("write", e).at(offset, data.len() as u64))?;
        if fua {
            self.file.sync_data().map_err(|e| NbdError::io("write", e))?;
        }
        Ok(())
    }

    async fn trim(&self, offset: u64, len: u64) -> Result<(), NbdError> {
        self.write_zeroes(offset, len, false).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), NbdError> {
        self.check("write-zeroes", offset, len)?;
        let zeroes = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeroes.len() as u64);
            self.write(offset + done, &zeroes[..n as usize], false).await?;
            done += n;
        }
        if fua {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), NbdError> {
        self.file.sync_data().map_err(|e| NbdError::io("flush", e))
    }
}
