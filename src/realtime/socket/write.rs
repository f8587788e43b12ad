//! Everything the socket task writes to its WebSocket: replies to the client's own messages
//! at once, queued fan-out frames in batches with one flush each, what is still queued at
//! shutdown, and the goodbye.

use std::fmt::Display;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::protocol;
use crate::realtime::deadline::NOT_COMPLETED;
use crate::realtime::socket::{End, Socket};
use crate::route::queue::{Outbound, SocketShared};

/// A write that takes longer than this means the client stopped reading; the socket is closed
/// rather than holding its task (and queue memory) forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a socket may spend writing its queue when the relay shuts down.
const FLUSH_DEADLINE: Duration = Duration::from_secs(3);
/// How long a cut-off socket is given to take its `system` message and close frame.
const GOODBYE_DEADLINE: Duration = Duration::from_secs(5);
/// How much of the queue one batch writes before flushing.
const WRITE_BATCH: usize = 256;

impl<S, E> Socket<S>
where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
    <S as Sink<Message>>::Error: Display,
    E: Display,
{
    /// Write one queued frame and whatever else is already queued, then flush once.
    pub(super) async fn write_batch(
        &mut self,
        first: Outbound,
        rx: &mut mpsc::Receiver<Outbound>,
        shared: &SocketShared,
    ) -> Result<(), String> {
        let mut bytes = 0;
        let write = async {
            let mut next = Some(first);
            let mut n = 0;
            while let Some(out) = next.take() {
                bytes += out.len();
                let msg = match out {
                    Outbound::Text(text) => Message::Text(text),
                    Outbound::Binary(b) => Message::Binary(b),
                };
                self.ws.feed(msg).await.map_err(|e| e.to_string())?;
                n += 1;
                if n < WRITE_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.ws.flush().await.map_err(|e| e.to_string())
        };
        // A cut-off interrupts a write that the client is not reading, so the socket can
        // say why and close now rather than after the write timeout.
        let result = tokio::select! {
            r = tokio::time::timeout(WRITE_TIMEOUT, write) => r,
            _ = shared.cut() => Ok(Ok(())),
        };
        shared.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        match result {
            Ok(r) => r,
            Err(_) => Err(format!("write timed out after {WRITE_TIMEOUT:?}")),
        }
    }

    /// On shutdown: write what is already queued, within [`FLUSH_DEADLINE`], so changes the
    /// relay accepted before stopping still reach the client.
    pub(super) async fn flush_queue(
        &mut self,
        rx: &mut mpsc::Receiver<Outbound>,
        shared: &SocketShared,
    ) {
        let flush = async {
            while let Ok(first) = rx.try_recv() {
                if self.write_batch(first, rx, shared).await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(FLUSH_DEADLINE, flush).await;
    }

    /// Write a socket-local frame (a reply, a system message) now.
    pub(super) async fn send(&mut self, text: String) -> Result<(), String> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.ws.send(Message::text(text))).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("write timed out after {WRITE_TIMEOUT:?}")),
        }
    }
    /// Say goodbye the way the reason calls for; best effort, bounded in time.
    pub(super) async fn close(&mut self, end: &End) {
        let frame = match end {
            End::ClientClosed => None,
            // A WebSocket protocol violation from the client: say which, with its code.
            End::Transport(cause) => ws_error_close(cause),
            End::Shutdown => Some((1001, "server shutting down".to_owned())),
            End::Limit(why) => Some((1008, (*why).to_owned())),
            End::HeartbeatTimeout => Some((1000, "heartbeat timeout".to_owned())),
            End::CutOff(why) => {
                let vsn = self.vsn;
                let notes: Vec<String> = self
                    .channels
                    .by_topic
                    .iter()
                    .map(|(topic, j)| {
                        protocol::system(
                            vsn,
                            j.join_ref.as_deref(),
                            topic,
                            "system",
                            "error",
                            why.reason,
                        )
                    })
                    .collect();
                let goodbye = async {
                    for n in notes {
                        self.ws.feed(Message::text(n)).await?;
                    }
                    self.ws.flush().await
                };
                // A slow client may still be reading its backlog: give it time to get this.
                let _ = tokio::time::timeout(GOODBYE_DEADLINE, goodbye).await;
                Some((why.code, why.reason.to_owned()))
            }
        };
        if let Some((code, reason)) = frame {
            let _ = tokio::time::timeout(
                GOODBYE_DEADLINE,
                self.ws.send(Message::Close(Some(CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                }))),
            )
            .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close()).await;
    }
}

/// The close frame for a transport error the client caused (RFC 6455 codes), if any.
fn ws_error_close(cause: &str) -> Option<(u16, String)> {
    let lower = cause.to_ascii_lowercase();
    if let Some(at) = cause.find(NOT_COMPLETED) {
        // The frame timeout (`deadline`): a policy, not a protocol error.
        Some((1008, cause[at..].to_owned()))
    } else if lower.contains("message too long")
        || lower.contains("space limit")
        || lower.contains("too big")
    {
        Some((1009, "message too big".into()))
    } else if lower.contains("utf-8") || lower.contains("utf8") {
        Some((1007, "invalid UTF-8".into()))
    } else if lower.contains("protocol") {
        Some((1002, "protocol error".into()))
    } else {
        None
    }
}
