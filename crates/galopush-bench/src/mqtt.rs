//! The MQTT side of `galopush bench --target mqtt://host:port`: terminals that are MQTT 3.1.1
//! clients subscribed at QoS 1, and publishers that publish at QoS 1, over plain TCP with the
//! packet codec of rumqttc. Each connection holds its own read and write buffers, as a galopush
//! terminal does: what one read brought is acked (PUBACK) in one write.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::Error as CodecError;
use rumqttc::{
    ConnectReturnCode, Packet, PubAck, Publish, QoS, Subscribe, SubscribeFilter,
    SubscribeReasonCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::args::MAX_BODY_SIZE;
use crate::fleet::{FailureKind, Fleet, Outcome, Seen, TerminalSpec};

/// Largest packet a bench connection reads or writes: a body of the largest `--body-size`
/// with its topic and headers.
const MAX_PACKET: usize = MAX_BODY_SIZE as usize + 64 * 1024;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 4096;
/// The keep-alive every client announces, s: longer than a run, so that no PINGREQ is due
/// (galopush terminals send no heartbeat during a run either).
const KEEP_ALIVE_S: u16 = 3600;
/// How long a publisher waits for the PUBACKs of a batch.
const PUBACK_TIMEOUT: Duration = Duration::from_secs(60);
/// The packet id of a terminal's one SUBSCRIBE.
const SUBSCRIBE_ID: u16 = 1;

/// The `host:port` of a `--target mqtt://host:port`.
pub(crate) fn broker_addr(target: &str) -> Result<&str, String> {
    let addr = target
        .strip_prefix("mqtt://")
        .map(|rest| rest.trim_end_matches('/'))
        .ok_or_else(|| format!("--target {target:?}: only mqtt://host:port is known"))?;
    match addr.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty() && !addr.contains('/') && port.parse::<u16>().is_ok() =>
        {
            Ok(addr)
        }
        _ => Err(format!("--target {target:?} is not mqtt://host:port")),
    }
}

/// Where the messages of a run are published.
#[derive(Debug)]
pub(crate) enum Topics {
    /// Message `seq` to the topic of terminal `seq % len` (named as its client id).
    Own(Vec<String>),
    /// Every message to the one topic every terminal subscribed to.
    Shared(String),
}

impl Topics {
    /// The topic of message `seq`.
    pub fn of(&self, seq: u64) -> &str {
        match self {
            Topics::Own(topics) => &topics[(seq % topics.len() as u64) as usize],
            Topics::Shared(topic) => topic,
        }
    }
}

/// One MQTT connection: its socket and what was read but not decoded yet, or encoded but not
/// written yet.
pub(crate) struct Connection {
    stream: TcpStream,
    read: BytesMut,
    write: BytesMut,
}

impl Connection {
    /// Connects to the broker at `addr` (from `source` when given) as `client_id` with a clean
    /// session; done when the broker accepts (CONNACK 0).
    pub async fn open(
        addr: &str,
        source: Option<IpAddr>,
        client_id: &str,
    ) -> Result<Connection, String> {
        let stream = galopush_client::terminal::connect_tcp(addr, source)
            .await
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut connection = Connection {
            stream,
            read: BytesMut::new(),
            write: BytesMut::new(),
        };
        let mut connect = rumqttc::Connect::new(client_id);
        connect.keep_alive = KEEP_ALIVE_S;
        connection.queue(&Packet::Connect(connect))?;
        connection.flush().await?;
        match connection.next().await? {
            Some(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => Ok(connection),
            Some(Packet::ConnAck(ack)) => Err(format!("CONNACK {:?}", ack.code)),
            Some(other) => Err(format!("{other:?} before CONNACK")),
            None => Err("the broker closed the connection before CONNACK".to_owned()),
        }
    }

    /// Subscribes to each of `topics` at QoS 1; done when the broker grants QoS 1 to all.
    async fn subscribe(&mut self, topics: &[&str]) -> Result<(), String> {
        let mut subscribe = Subscribe::new_many(
            topics
                .iter()
                .map(|topic| SubscribeFilter::new((*topic).to_owned(), QoS::AtLeastOnce)),
        );
        subscribe.pkid = SUBSCRIBE_ID;
        self.queue(&Packet::Subscribe(subscribe))?;
        self.flush().await?;
        match self.next().await? {
            Some(Packet::SubAck(ack))
                if ack.pkid == SUBSCRIBE_ID
                    && ack.return_codes.len() == topics.len()
                    && ack
                        .return_codes
                        .iter()
                        .all(|c| *c == SubscribeReasonCode::Success(QoS::AtLeastOnce)) =>
            {
                Ok(())
            }
            Some(other) => Err(format!("{other:?} instead of SUBACK with QoS 1")),
            None => Err("the broker closed the connection before SUBACK".to_owned()),
        }
    }

    /// Encodes `packet` for the next [`Connection::flush`].
    fn queue(&mut self, packet: &Packet) -> Result<(), String> {
        packet
            .write(&mut self.write, MAX_PACKET)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Writes what was queued.
    async fn flush(&mut self) -> Result<(), String> {
        let written = self.stream.write_all(&self.write).await;
        self.write.clear();
        written.map_err(|e| format!("write: {e}"))
    }

    /// A packet that was read whole already, if any.
    fn buffered(&mut self) -> Result<Option<Packet>, String> {
        match Packet::read(&mut self.read, MAX_PACKET) {
            Ok(packet) => Ok(Some(packet)),
            Err(CodecError::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(format!("undecodable packet: {e}")),
        }
    }

    /// The next packet, reading as needed; `None` when the broker closed the connection.
    async fn next(&mut self) -> Result<Option<Packet>, String> {
        loop {
            if let Some(packet) = self.buffered()? {
                return Ok(Some(packet));
            }
            self.read.reserve(READ_CHUNK);
            let read = self.stream.read_buf(&mut self.read).await;
            if read.map_err(|e| format!("read: {e}"))? == 0 {
                return Ok(None);
            }
        }
    }
}

/// Connects terminal `spec` as the client named as its user id and subscribes it to its own
/// topic (of the same name) and to `shared` when given; `None` when that failed, counted in
/// `outcome`.
pub(crate) async fn connect_and_subscribe(
    spec: &TerminalSpec,
    fleet: &Fleet,
    shared: Option<&str>,
    outcome: &mut Outcome,
) -> Option<Connection> {
    let _permit = fleet.admit(spec).await?;
    let bound = fleet.register_timeout;
    let opened = tokio::time::timeout(bound, Connection::open(&spec.addr, spec.source, &spec.uid));
    let mut connection = match opened.await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            outcome.fail(
                FailureKind::Connect,
                format!("connect to {}: {e}", spec.addr),
            );
            return None;
        }
        Err(_) => {
            let why = format!("connect to {}: no CONNACK within {bound:?}", spec.addr);
            outcome.fail(FailureKind::Connect, why);
            return None;
        }
    };
    fleet.count_connect();
    let topics: Vec<&str> = std::iter::once(spec.uid.as_str()).chain(shared).collect();
    let why = match tokio::time::timeout(bound, connection.subscribe(&topics)).await {
        Ok(Ok(())) => {
            fleet.count_register(outcome);
            return Some(connection);
        }
        Ok(Err(e)) => e,
        Err(_) => format!("no SUBACK within {bound:?}"),
    };
    outcome.fail(
        FailureKind::Register,
        format!("subscribe {}: {why}", spec.uid),
    );
    None
}

/// Acks (PUBACK) and checks every message until the run stops or the connection fails.
pub(crate) async fn receive(
    mut connection: Connection,
    spec: &TerminalSpec,
    fleet: &Fleet,
    outcome: &mut Outcome,
) {
    let mut seen = Seen::new(spec, fleet, outcome);
    let stopped = fleet.stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let mut next = tokio::select! {
            biased;
            () = &mut stopped => return,
            next = connection.next() => next,
        };
        // What one read brought arrived at one time, and is counted and acked in one go.
        let now_us = fleet.now_us();
        let received_before = outcome.received;
        let read = loop {
            match next {
                Ok(Some(Packet::Publish(publish))) => {
                    if publish.qos != QoS::AtMostOnce
                        && let Err(e) = connection.queue(&Packet::PubAck(PubAck::new(publish.pkid)))
                    {
                        break Err(e);
                    }
                    seen.record(&publish.payload, spec, fleet, now_us, outcome);
                }
                Ok(Some(_)) => {}
                Ok(None) => break Err("the broker closed the connection".to_owned()),
                Err(e) => break Err(e),
            }
            next = match connection.buffered() {
                Ok(None) => break Ok(()),
                more => more,
            };
        };
        fleet
            .progress
            .delivered
            .fetch_add(outcome.received - received_before, Ordering::Relaxed);
        let acked = match read {
            Ok(()) => connection.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = acked {
            outcome.fail(FailureKind::Protocol, format!("{}: {e}", spec.uid));
            return;
        }
    }
}

/// A publishing connection: QoS 1 PUBLISHes with packet ids of its own.
pub(crate) struct Publisher {
    connection: Connection,
    last_id: u16,
}

impl Publisher {
    /// Connects to the broker at `addr` as `client_id`.
    pub async fn open(addr: &str, client_id: &str) -> Result<Publisher, String> {
        Ok(Publisher {
            connection: Connection::open(addr, None, client_id).await?,
            last_id: 0,
        })
    }

    /// Publishes each `(topic, payload)` at QoS 1 in one write; done when the broker has acked
    /// (PUBACK) them all. At most 65,535 at once: packet ids must not repeat while in flight.
    pub async fn publish<'a>(
        &mut self,
        messages: impl Iterator<Item = (&'a str, Vec<u8>)>,
    ) -> Result<(), String> {
        let mut waiting = 0u32;
        for (topic, payload) in messages {
            self.last_id = self.last_id.checked_add(1).unwrap_or(1);
            let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload);
            publish.pkid = self.last_id;
            self.connection.queue(&Packet::Publish(publish))?;
            waiting += 1;
        }
        self.connection.flush().await?;
        let acked = async {
            while waiting > 0 {
                match self.connection.next().await? {
                    Some(Packet::PubAck(_)) => waiting -= 1,
                    Some(_) => {}
                    None => return Err("the broker closed the publishing connection".to_owned()),
                }
            }
            Ok(())
        };
        tokio::time::timeout(PUBACK_TIMEOUT, acked)
            .await
            .unwrap_or_else(|_| Err(format!("no PUBACK within {PUBACK_TIMEOUT:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(broker_addr("mqtt://127.0.0.1:18830"), Ok("127.0.0.1:18830"));
        assert_eq!(broker_addr("mqtt://localhost:1883/"), Ok("localhost:1883"));
        for bad in [
            "127.0.0.1:1883",
            "mqtts://h:1",
            "mqtt://h",
            "mqtt://:1",
            "mqtt://h:x",
            "mqtt://h:1/a",
        ] {
            assert!(broker_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topics_of_messages() {
        let own = Topics::Own(vec!["a".into(), "b".into()]);
        assert_eq!((own.of(0), own.of(1), own.of(2)), ("a", "b", "a"));
        assert_eq!(Topics::Shared("all".into()).of(7), "all");
    }
}
