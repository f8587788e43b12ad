//! A deadline on every WebSocket message a client sends: [`Deadline`] wraps the upgraded
//! connection, follows the frame headers in the bytes the client sends, and fails the read
//! once a message has been under way (its first byte in, its last not) for longer than the
//! frame timeout.
//!
//! Why here and not in the socket loop: tungstenite reserves a frame's whole announced length
//! as soon as its header is read, and reports nothing until the message is complete, so only
//! the byte stream shows that a message is half-sent. A client that announces a 3 MB frame and
//! then trickles or stalls is closed after the timeout (1008) instead of holding the buffer
//! until the heartbeat timeout.
//!
//! The tracker only counts: it never changes or withholds a byte. Frames it cannot follow
//! (unmasked, reserved bits) are refused by tungstenite anyway.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The read error's text; the socket's close reason is built from it.
pub const NOT_COMPLETED: &str = "message not completed within";

/// Where the tracker is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Reading a frame header: `have` of its bytes so far (0: between frames).
    Header { have: usize },
    /// Inside a frame's payload, `left` bytes to go.
    Payload { left: u64 },
}

/// Follows frame boundaries (RFC 6455 §5.2) in the bytes a client sends.
#[derive(Debug)]
struct Tracker {
    position: Position,
    header: [u8; 14],
    /// A data frame without FIN was read: the message goes on in continuation frames.
    fragmented: bool,
}

impl Tracker {
    fn new() -> Self {
        Tracker {
            position: Position::Header { have: 0 },
            header: [0; 14],
            fragmented: false,
        }
    }

    /// Whether a message is under way: inside a frame, or between the frames of a
    /// fragmented message.
    fn in_message(&self) -> bool {
        self.fragmented || self.position != Position::Header { have: 0 }
    }

    fn header_len(&self, have: usize) -> usize {
        if have < 2 {
            return 2;
        }
        let ext = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        }
    }

    /// Account for bytes read from the client.
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.position {
                Position::Header { mut have } => {
                    while !bytes.is_empty() && have < self.header_len(have) {
                        self.header[have] = bytes[0];
                        have += 1;
                        bytes = &bytes[1..];
                    }
                    if have < self.header_len(have) {
                        self.position = Position::Header { have };
                        return;
                    }
                    let opcode = self.header[0] & 0x0f;
                    let fin = self.header[0] & 0x80 != 0;
                    // Data frames (continuation, text, binary) open or close a message;
                    // control frames may come between its fragments and change nothing.
                    if opcode < 8 {
                        self.fragmented = !fin;
                    }
                    self.position = match self.payload_len() {
                        0 => Position::Header { have: 0 },
                        left => Position::Payload { left },
                    };
                }
                Position::Payload { left } => {
                    let take = u64::try_from(bytes.len()).unwrap_or(u64::MAX).min(left);
                    // `take` is at most `bytes.len()`.
                    bytes = &bytes[usize::try_from(take).unwrap_or(bytes.len())..];
                    self.position = match left - take {
                        0 => Position::Header { have: 0 },
                        left => Position::Payload { left },
                    };
                }
            }
        }
    }
}

/// An upgraded connection whose client messages must complete within `timeout`.
#[derive(Debug)]
pub struct Deadline<T> {
    inner: T,
    timeout: Duration,
    tracker: Tracker,
    /// When the message under way must be complete; `None` between messages.
    due: Option<Instant>,
    /// The timer, made at the first message and reset for each one after.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<T> Deadline<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        Deadline {
            inner,
            timeout,
            tracker: Tracker::new(),
            due: None,
            sleep: None,
        }
    }

    fn expired(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{NOT_COMPLETED} {:?}", self.timeout),
        )
    }

    /// After bytes were read: start the deadline when a message begins, drop it when none
    /// is under way.
    fn track(&mut self, bytes: &[u8]) {
        let was = self.tracker.in_message();
        self.tracker.feed(bytes);
        match (was, self.tracker.in_message()) {
            (_, false) => self.due = None,
            (false, true) => {
                // A read can end one message and begin the next: its deadline starts now.
                let due = Instant::now() + self.timeout;
                self.due = Some(due);
                match &mut self.sleep {
                    Some(sleep) => sleep.as_mut().reset(due),
                    None => self.sleep = Some(Box::pin(tokio::time::sleep_until(due))),
                }
            }
            (true, true) => {}
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Deadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.track(&buf.filled()[before..]);
                if this.due.is_some_and(|due| Instant::now() >= due) {
                    return Poll::Ready(Err(this.expired()));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.due.is_some() {
                    if let Some(sleep) = &mut this.sleep {
                        if sleep.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Err(this.expired()));
                        }
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Deadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![first];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn whole_frames_leave_no_message_open() {
        let mut t = Tracker::new();
        let mut bytes = frame(0x81, b"hello");
        bytes.extend(frame(0x82, &[0; 300]));
        bytes.extend(frame(0x82, &[0; 70_000]));
        t.feed(&bytes);
        assert!(!t.in_message());
    }

    #[test]
    fn byte_by_byte_and_a_header_alone() {
        let bytes = frame(0x81, &[b'x'; 200]);
        let mut t = Tracker::new();
        for (i, b) in bytes.iter().enumerate() {
            t.feed(&[*b]);
            assert_eq!(t.in_message(), i + 1 < bytes.len(), "after byte {i}");
        }
        // A header announcing 3 MB opens a message until 3 MB follow.
        let mut t = Tracker::new();
        let mut head = vec![0x82, 0x80 | 127];
        head.extend_from_slice(&3_000_000u64.to_be_bytes());
        head.extend_from_slice(&[0; 4]);
        t.feed(&head);
        assert!(t.in_message());
        t.feed(&vec![0; 2_999_999]);
        assert!(t.in_message());
        t.feed(&[0]);
        assert!(!t.in_message());
    }

    #[test]
    fn fragments_keep_the_message_open_across_pings() {
        let mut t = Tracker::new();
        t.feed(&frame(0x01, b"part one")); // text, no FIN
        assert!(t.in_message());
        t.feed(&frame(0x89, b"")); // ping between fragments
        assert!(t.in_message());
        t.feed(&frame(0x80, b"last")); // continuation with FIN
        assert!(!t.in_message());
    }

    #[tokio::test]
    async fn a_stalled_message_fails_the_read_after_the_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(1024);
        let mut server = Deadline::new(server, Duration::from_millis(100));
        let mut client = client;
        client.write_all(&frame(0x81, b"ok")).await.unwrap();
        let mut buf = [0u8; 64];
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(n, 8);
        // Half a frame, then nothing.
        client
            .write_all(&frame(0x81, &[b'x'; 50])[..20])
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let mut got = Vec::new();
        let err = loop {
            match server.read(&mut buf).await {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break e,
            }
        };
        assert!(err.to_string().starts_with(NOT_COMPLETED), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(90));
        assert_eq!(got.len(), 20);
    }
}
