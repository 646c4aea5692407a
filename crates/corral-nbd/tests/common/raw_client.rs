//! A minimal blocking NBD client speaking raw bytes, to drive the server where real clients
//! never go (malformed input, pipelining checks).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use corral_nbd::protocol::*;

pub struct RawClient {
    pub stream: TcpStream,
    pub structured: bool,
}

impl RawClient {
    /// Connect and read the greeting; returns the client and the handshake flags.
    pub fn connect(addr: SocketAddr) -> (RawClient, u16) {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut client = RawClient { stream, structured: false };
        let mut greeting = [0u8; GREETING_LEN];
        client.stream.read_exact(&mut greeting).unwrap();
        let flags = decode_greeting(&greeting).unwrap();
        (client, flags)
    }

    /// Connect, negotiate (optionally structured replies) and enter transmission with
    /// `NBD_OPT_GO`. Returns the client, the export size and the transmission flags.
    pub fn handshake(addr: SocketAddr, export: &str, structured: bool) -> (RawClient, u64, u16) {
        let (mut client, flags) = RawClient::connect(addr);
        assert_eq!(flags, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        client.send(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes());
        if structured {
            client.send_option(OPT_STRUCTURED_REPLY, &[]);
            let (reply, _) = client.read_option_reply();
            assert_eq!(reply.reply_type, REP_ACK);
            client.structured = true;
        }
        client.send_option(OPT_GO, &GoRequest::encode(export.as_bytes(), &[INFO_BLOCK_SIZE]));
        let mut size = None;
        let mut tflags = 0;
        loop {
            let (reply, data) = client.read_option_reply();
            match reply.reply_type {
                REP_INFO => {
                    if let Ok(Info::Export { size: s, flags }) = Info::decode(&data) {
                        size = Some(s);
                        tflags = flags;
                    }
                }
                REP_ACK => break,
                other => {
                    panic!("NBD_OPT_GO failed with reply type {other:#x}: {}", String::from_utf8_lossy(&data))
                }
            }
        }
        (client, size.expect("NBD_INFO_EXPORT was sent"), tflags)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Send bytes, tolerating a server that already closed the connection.
    pub fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    pub fn send_option(&mut self, option: u32, data: &[u8]) {
        let mut buf = OptionHeader { option, length: data.len() as u32 }.encode().to_vec();
        buf.extend_from_slice(data);
        self.send(&buf);
    }

    pub fn read_option_reply(&mut self) -> (OptionReplyHeader, Vec<u8>) {
        let mut header = [0u8; OPTION_REPLY_HEADER_LEN];
        self.stream.read_exact(&mut header).unwrap();
        let header = OptionReplyHeader::decode(&header).unwrap();
        let mut data = vec![0u8; header.length as usize];
        self.stream.read_exact(&mut data).unwrap();
        (header, data)
    }

    pub fn send_request(
        &mut self,
        command: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) {
        let mut buf = RequestHeader { flags, command, cookie, offset, length }.encode().to_vec();
        buf.extend_from_slice(payload);
        self.send(&buf);
    }

    /// Read one reply of either kind: (cookie, error, data). `read_len` tells how much data
    /// follows a successful simple reply (the simple reply carries no length).
    pub fn read_reply(&mut self, read_len: impl Fn(u64) -> usize) -> (u64, u32, Vec<u8>) {
        let mut magic = [0u8; 4];
        self.stream.read_exact(&mut magic).unwrap();
        match u32::from_be_bytes(magic) {
            SIMPLE_REPLY_MAGIC => {
                let mut rest = [0u8; SIMPLE_REPLY_LEN];
                rest[..4].copy_from_slice(&magic);
                self.stream.read_exact(&mut rest[4..]).unwrap();
                let reply = SimpleReply::decode(&rest).unwrap();
                let mut data = Vec::new();
                if reply.error == 0 {
                    data.resize(read_len(reply.cookie), 0);
                    self.stream.read_exact(&mut data).unwrap();
                }
                (reply.cookie, reply.error, data)
            }
            STRUCTURED_REPLY_MAGIC => {
                let mut rest = [0u8; STRUCTURED_REPLY_LEN];
                rest[..4].copy_from_slice(&magic);
                self.stream.read_exact(&mut rest[4..]).unwrap();
                let chunk = StructuredReply::decode(&rest).unwrap();
                assert_ne!(chunk.flags & REPLY_FLAG_DONE, 0, "server sent a non-final chunk");
                let mut payload = vec![0u8; chunk.length as usize];
                self.stream.read_exact(&mut payload).unwrap();
                match chunk.reply_type {
                    REPLY_TYPE_NONE => (chunk.cookie, 0, Vec::new()),
                    REPLY_TYPE_OFFSET_DATA => (chunk.cookie, 0, payload[8..].to_vec()),
                    REPLY_TYPE_ERROR => {
                        let (errno, _) = decode_error_chunk(&payload).unwrap();
                        (chunk.cookie, errno, Vec::new())
                    }
                    other => panic!("unexpected chunk type {other}"),
                }
            }
            other => panic!("bad reply magic {other:#x}"),
        }
    }

    /// WRITE and wait for its reply; returns the error value.
    pub fn write(&mut self, cookie: u64, offset: u64, data: &[u8]) -> u32 {
        self.send_request(CMD_WRITE, 0, cookie, offset, data.len() as u32, data);
        let (c, errno, _) = self.read_reply(|_| 0);
        assert_eq!(c, cookie);
        errno
    }

    /// READ and wait for its reply.
    pub fn read(&mut self, cookie: u64, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.send_request(CMD_READ, 0, cookie, offset, len, &[]);
        let (c, errno, data) = self.read_reply(|_| len as usize);
        assert_eq!(c, cookie);
        if errno == 0 {
            Ok(data)
        } else {
            Err(errno)
        }
    }

    /// True when the server closed the connection (EOF or reset) within the read timeout.
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            ),
        }
    }

    pub fn disconnect(mut self) {
        self.send_request(CMD_DISC, 0, 0, 0, 0, &[]);
        assert!(self.is_closed(), "server did not close after NBD_CMD_DISC");
    }
}
