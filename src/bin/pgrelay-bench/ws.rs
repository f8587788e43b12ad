//! A minimal WebSocket client (RFC 6455) for the load generator: the handshake, masked client
//! frames, and unmasked server frames parsed in place from one growable read buffer.
//!
//! A general client (tokio-tungstenite) allocates a message per frame and keeps a large read
//! buffer per connection; here a frame is a range of the read buffer, so a client costs a few
//! KiB and a frame a few hundred nanoseconds, and the load generator is not the bottleneck.

use std::net::SocketAddr;
use std::ops::Range;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

/// Initial read buffer; it grows to fit the largest frame.
const INITIAL_BUFFER: usize = 4096;
/// Larger server frames are an error (the relay's own limit is far below this).
const MAX_FRAME: usize = 64 << 20;

pub(crate) const OP_CONT: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;

/// One complete server frame; `payload` indexes [`WsClient::buf`].
#[derive(Debug, Clone)]
pub(crate) struct RawFrame {
    pub(crate) fin: bool,
    pub(crate) opcode: u8,
    pub(crate) payload: Range<usize>,
}

#[derive(Debug)]
pub(crate) struct WsClient {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    mask_state: u32,
}

impl WsClient {
    /// Connect and upgrade. `path_and_query` is e.g. `/realtime/v1/websocket?vsn=2.0.0`.
    pub(crate) async fn connect(
        addr: SocketAddr,
        path_and_query: &str,
        seed: u32,
    ) -> Result<WsClient, String> {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("set_nodelay: {e}"))?;
        let key = generate_key();
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send handshake: {e}"))?;
        let mut buf = vec![0u8; INITIAL_BUFFER];
        let mut end = 0;
        let header_end = loop {
            if end == buf.len() {
                return Err("handshake response too large".into());
            }
            let n = stream
                .read(&mut buf[end..])
                .await
                .map_err(|e| format!("read handshake: {e}"))?;
            if n == 0 {
                return Err("connection closed during the handshake".into());
            }
            end += n;
            if let Some(p) = crate::ts::find(&buf[..end], b"\r\n\r\n") {
                break p + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..header_end]);
        let status = head.lines().next().unwrap_or("").to_owned();
        if !status.starts_with("HTTP/1.1 101") {
            let body = String::from_utf8_lossy(&buf[header_end..end]);
            return Err(format!("upgrade refused: {status} {}", body.trim()));
        }
        let accept = derive_accept_key(key.as_bytes());
        let accepted = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == accept
            })
        });
        if !accepted {
            return Err("upgrade response lacks the right Sec-WebSocket-Accept".into());
        }
        Ok(WsClient {
            stream,
            buf,
            start: header_end,
            end,
            mask_state: seed | 1,
        })
    }

    /// The bytes of a frame's payload.
    pub(crate) fn payload(&self, f: &RawFrame) -> &[u8] {
        self.buf.get(f.payload.clone()).unwrap_or(&[])
    }

    /// The next complete frame already in the buffer, if any.
    pub(crate) fn next_frame(&mut self) -> Result<Option<RawFrame>, String> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < 2 {
            return Ok(None);
        }
        let b0 = avail[0];
        let b1 = avail[1];
        let masked = b1 & 0x80 != 0;
        let (len, mut hdr) = match b1 & 0x7f {
            126 => {
                let Some(b) = avail.get(2..4) else {
                    return Ok(None);
                };
                (usize::from(u16::from_be_bytes([b[0], b[1]])), 4)
            }
            127 => {
                let Some(b) = avail.get(2..10) else {
                    return Ok(None);
                };
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                let len = u64::from_be_bytes(a);
                (usize::try_from(len).unwrap_or(usize::MAX), 10)
            }
            n => (usize::from(n), 2),
        };
        if len > MAX_FRAME {
            return Err(format!("server frame of {len} bytes is too large"));
        }
        let mut mask = [0u8; 4];
        if masked {
            let Some(m) = avail.get(hdr..hdr + 4) else {
                return Ok(None);
            };
            mask.copy_from_slice(m);
            hdr += 4;
        }
        let total = hdr + len;
        if avail.len() < total {
            // Make sure the whole frame will fit once it arrives.
            if self.buf.len() - self.start < total {
                self.compact();
                if self.buf.len() < total {
                    self.buf.resize(total.next_power_of_two(), 0);
                }
            }
            return Ok(None);
        }
        let payload = self.start + hdr..self.start + total;
        if masked {
            for (i, b) in self.buf[payload.clone()].iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        self.start += total;
        Ok(Some(RawFrame {
            fin: b0 & 0x80 != 0,
            opcode: b0 & 0x0f,
            payload,
        }))
    }

    /// Move unparsed bytes to the front of the buffer.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Read more bytes from the socket. Returns 0 at end of stream. Cancel-safe. Frames
    /// returned by [`next_frame`](Self::next_frame) before this call are invalidated.
    pub(crate) async fn read_more(&mut self) -> Result<usize, String> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.compact();
            if self.end == self.buf.len() {
                let grown = (self.buf.len() * 2).min(MAX_FRAME + 16);
                self.buf.resize(grown, 0);
            }
        }
        let n = self
            .stream
            .read(&mut self.buf[self.end..])
            .await
            .map_err(|e| e.to_string())?;
        self.end += n;
        Ok(n)
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift32: masking only has to be present, not secret, for a benchmark.
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        x.to_le_bytes()
    }

    /// Send one masked frame.
    pub(crate) async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<(), String> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        out.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = self.next_mask();
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&out).await.map_err(|e| e.to_string())
    }

    pub(crate) async fn send_text(&mut self, text: &str) -> Result<(), String> {
        self.send(OP_TEXT, text.as_bytes()).await
    }

    /// Answer a control frame: a ping gets its pong; a close is the relay ending the socket
    /// (an error naming its code). Other frames are left to the caller.
    pub(crate) async fn answer_control(&mut self, f: &RawFrame) -> Result<(), String> {
        match f.opcode {
            OP_PING => {
                let p = self.payload(f).to_vec();
                self.send(OP_PONG, &p).await
            }
            OP_CLOSE => {
                let code = close_code(self.payload(f)).unwrap_or(1005);
                Err(format!("closed by the relay ({code})"))
            }
            _ => Ok(()),
        }
    }

    /// Send a close frame (1000) and shut the write side.
    pub(crate) async fn close(&mut self) {
        let _ = self.send(OP_CLOSE, &1000u16.to_be_bytes()).await;
        let _ = self.stream.shutdown().await;
    }
}

/// The status code of a close frame's payload.
pub(crate) fn close_code(payload: &[u8]) -> Option<u16> {
    match payload {
        [a, b, ..] => Some(u16::from_be_bytes([*a, *b])),
        _ => None,
    }
}
