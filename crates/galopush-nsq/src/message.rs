//! A message delivered by nsqd, and the fire-and-forget FIN/REQ/TOUCH it sends back through
//! the connection that delivered it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

/// nsqd's 16-byte message id (ASCII hex as nsqd generates it).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId([u8; MessageId::LEN]);

impl MessageId {
    /// The length of a message id on the wire.
    pub const LEN: usize = 16;

    /// An id from its wire bytes; `None` if a byte is not printable ASCII (such an id could not
    /// be sent back in a FIN/REQ/TOUCH line).
    pub fn new(bytes: [u8; MessageId::LEN]) -> Option<MessageId> {
        bytes
            .iter()
            .all(|b| b.is_ascii_graphic())
            .then_some(MessageId(bytes))
    }

    /// The wire bytes.
    pub fn as_bytes(&self) -> &[u8; MessageId::LEN] {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Printable ASCII by construction.
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// What a message handle asks its connection to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Response {
    /// Send `FIN`.
    Fin(MessageId),
    /// Send `REQ` with this delay.
    Req(MessageId, Duration),
    /// Send `TOUCH`.
    Touch(MessageId),
    /// The handle of this delivery (the connection's sequence number) was dropped without FIN
    /// or REQ: stop tracking (and auto-touching) the message and let nsqd time it out.
    Forget(MessageId, u64),
}

/// A message from nsqd. Answer it with [`Message::fin`] or [`Message::req`]; a message dropped
/// without either is left to nsqd's `msg_timeout` and redelivered (at-least-once).
///
/// The handle is `Send + Sync + 'static` and cheap to move. Its methods never block and
/// may be called from a `Drop` impl: they queue the command for the connection that
/// delivered the message, and do nothing if that connection has gone (nsqd redelivers).
pub struct Message {
    /// nsqd's id for the message (the same on every redelivery).
    pub id: MessageId,
    /// How many times nsqd has delivered the message, this delivery included.
    pub attempts: u16,
    /// When nsqd received the message, in nanoseconds since the Unix epoch.
    pub timestamp: i64,
    /// The message body.
    pub body: Bytes,
    responder: Responder,
}

impl Message {
    pub(crate) fn new(
        id: MessageId,
        attempts: u16,
        timestamp: i64,
        body: Bytes,
        nsqd: Arc<str>,
        delivery: u64,
        commands: mpsc::UnboundedSender<Response>,
    ) -> Message {
        Message {
            id,
            attempts,
            timestamp,
            body,
            responder: Responder {
                id,
                delivery,
                nsqd,
                commands,
                answered: false,
            },
        }
    }

    /// Finishes the message (`FIN`): nsqd forgets it.
    pub fn fin(mut self) {
        self.responder.answer(Response::Fin(self.id));
    }

    /// Requeues the message (`REQ`): nsqd delivers it again after `delay` (at most one hour,
    /// nsqd's default `--max-req-timeout`; longer delays are shortened to that).
    pub fn req(mut self, delay: Duration) {
        self.responder.answer(Response::Req(self.id, delay));
    }

    /// Resets the message's timeout on nsqd (`TOUCH`), up to nsqd's `--max-msg-timeout`
    /// counted from the delivery.
    pub fn touch(&self) {
        self.responder.send(Response::Touch(self.id));
    }

    /// The TCP address of the nsqd that delivered the message.
    pub fn nsqd_address(&self) -> &str {
        &self.responder.nsqd
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("attempts", &self.attempts)
            .field("timestamp", &self.timestamp)
            .field("body_len", &self.body.len())
            .field("nsqd", &self.responder.nsqd)
            .finish()
    }
}

/// The part of a [`Message`] bound to its connection. Kept separate so that a `Message` can
/// still be destructured (moving `body` out) while the drop behaviour lives here.
struct Responder {
    id: MessageId,
    delivery: u64,
    nsqd: Arc<str>,
    commands: mpsc::UnboundedSender<Response>,
    answered: bool,
}

impl Responder {
    fn answer(&mut self, response: Response) {
        self.answered = true;
        self.send(response);
    }

    fn send(&self, response: Response) {
        // An error means the connection has gone: nsqd redelivers the message.
        if self.commands.send(response).is_err() {
            tracing::debug!(
                nsqd = %self.nsqd,
                id = %self.id,
                ?response,
                "connection of the message is gone; nothing sent"
            );
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.answered {
            // Ignored error: the connection has gone, so it no longer tracks the message.
            let _ = self.commands.send(Response::Forget(self.id, self.delivery));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync_static<T: Send + Sync + 'static>() {}

    fn message(commands: mpsc::UnboundedSender<Response>) -> Message {
        let id = MessageId::new(*b"0000000000000001");
        let Some(id) = id else {
            panic!("valid id refused")
        };
        Message::new(
            id,
            1,
            0,
            Bytes::from_static(b"x"),
            "nsqd:4150".into(),
            7,
            commands,
        )
    }

    #[test]
    fn message_is_send_sync_static() {
        assert_send_sync_static::<Message>();
    }

    #[test]
    fn ids_must_be_printable() {
        assert!(MessageId::new(*b"0123456789abcdef").is_some());
        assert!(MessageId::new(*b"0123456789abcde ").is_none());
        assert!(MessageId::new([0; 16]).is_none());
    }

    #[test]
    fn answers_and_drops_reach_the_connection() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let fin = message(tx.clone());
        let id = fin.id;
        fin.fin();
        assert_eq!(rx.try_recv().ok(), Some(Response::Fin(id)));

        let req = message(tx.clone());
        req.touch();
        req.req(Duration::from_millis(5));
        assert_eq!(rx.try_recv().ok(), Some(Response::Touch(id)));
        assert_eq!(
            rx.try_recv().ok(),
            Some(Response::Req(id, Duration::from_millis(5)))
        );

        let Message { body, .. } = message(tx);
        assert_eq!(body, Bytes::from_static(b"x"));
        assert_eq!(rx.try_recv().ok(), Some(Response::Forget(id, 7)));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn answering_after_the_connection_is_gone_is_harmless() {
        let (tx, rx) = mpsc::unbounded_channel();
        drop(rx);
        let msg = message(tx);
        msg.touch();
        msg.fin();
    }
}
