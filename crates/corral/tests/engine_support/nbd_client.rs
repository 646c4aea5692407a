//! A minimal synchronous NBD client (fixed newstyle, `NBD_OPT_EXPORT_NAME`, simple replies, one request
//! at a time) for generating workloads from tests and checking every byte.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;
const FLAG_FUA: u16 = 1;

/// One NBD connection.
pub struct NbdClient {
    stream: TcpStream,
    pub size: u64,
    handle: u64,
}

impl NbdClient {
    /// Connects and negotiates the default export.
    pub fn connect(host: &str, port: u16) -> std::io::Result<NbdClient> {
        let mut stream = TcpStream::connect((host, port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut hello = [0u8; 18];
        stream.read_exact(&mut hello)?;
        if &hello[0..8] != b"NBDMAGIC" || u64::from_be_bytes(hello[8..16].try_into().unwrap()) != IHAVEOPT {
            return Err(std::io::Error::other("not an NBD newstyle server"));
        }
        // Fixed newstyle + no zeroes.
        stream.write_all(&3u32.to_be_bytes())?;
        let mut opt = Vec::new();
        opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
        opt.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
        opt.extend_from_slice(&0u32.to_be_bytes());
        stream.write_all(&opt)?;
        let mut reply = [0u8; 10];
        stream.read_exact(&mut reply)?;
        let size = u64::from_be_bytes(reply[0..8].try_into().unwrap());
        Ok(NbdClient { stream, size, handle: 0 })
    }

    fn request(&mut self, kind: u16, flags: u16, offset: u64, len: u32, data: &[u8]) -> std::io::Result<()> {
        self.handle += 1;
        let mut header = Vec::with_capacity(28 + data.len());
        header.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        header.extend_from_slice(&flags.to_be_bytes());
        header.extend_from_slice(&kind.to_be_bytes());
        header.extend_from_slice(&self.handle.to_be_bytes());
        header.extend_from_slice(&offset.to_be_bytes());
        header.extend_from_slice(&len.to_be_bytes());
        header.extend_from_slice(data);
        self.stream.write_all(&header)
    }

    fn reply(&mut self, payload: &mut [u8]) -> std::io::Result<()> {
        let mut r = [0u8; 16];
        self.stream.read_exact(&mut r)?;
        let magic = u32::from_be_bytes(r[0..4].try_into().unwrap());
        let error = u32::from_be_bytes(r[4..8].try_into().unwrap());
        let handle = u64::from_be_bytes(r[8..16].try_into().unwrap());
        if magic != SIMPLE_REPLY_MAGIC || handle != self.handle {
            return Err(std::io::Error::other(format!("bad reply magic {magic:#x} handle {handle}")));
        }
        if error != 0 {
            return Err(std::io::Error::other(format!("NBD error {error}")));
        }
        self.stream.read_exact(payload)
    }

    /// Reads `len` bytes.
    pub fn read(&mut self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.request(CMD_READ, 0, offset, len as u32, &[])?;
        let mut buf = vec![0u8; len];
        self.reply(&mut buf)?;
        Ok(buf)
    }

    /// Writes, optionally with FUA.
    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> std::io::Result<()> {
        self.request(CMD_WRITE, if fua { FLAG_FUA } else { 0 }, offset, data.len() as u32, data)?;
        self.reply(&mut [])
    }

    /// Flush.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.request(CMD_FLUSH, 0, 0, 0, &[])?;
        self.reply(&mut [])
    }

    /// Trim.
    pub fn trim(&mut self, offset: u64, len: u32) -> std::io::Result<()> {
        self.request(CMD_TRIM, 0, offset, len, &[])?;
        self.reply(&mut [])
    }

    /// Write zeroes.
    pub fn write_zeroes(&mut self, offset: u64, len: u32) -> std::io::Result<()> {
        self.request(CMD_WRITE_ZEROES, 0, offset, len, &[])?;
        self.reply(&mut [])
    }

    /// Clean disconnect.
    pub fn disconnect(mut self) {
        let _ = self.request(CMD_DISC, 0, 0, 0, &[]);
    }
}
