//! The device registration API over MQTT 3.1.1 and TLS, as Azure DPS serves it on port 8883
//! (`shared/notes/dps-wire.md` section 6). No broker: one session task per connection, so each
//! unit's replies go only to the connection that asked, and the TLS client certificate (X.509
//! units) is at hand. Packets are read and written with rumqttc's v4 codec only.
//!
//! - CONNECT: the client ID is the registration ID; the user name starts with
//!   `{idScope}/registrations/{registrationId}/` (the rest is the SDK's version string); the
//!   password is a SAS token, or absent for X.509 units. The unit is authenticated here
//!   exactly as over HTTPS (`device_auth.rs`): CONNACK 0, or 5 (not authorized) with the reason
//!   in the service log. Any protocol level but 4 gets CONNACK 1.
//! - SUBSCRIBE `$dps/registrations/res/#` is granted at QoS 0 or 1.
//! - PUBLISH `$dps/registrations/PUT/iotdps-register/?$rid={rid}` registers the unit
//!   (`device::register_unit`); PUBLISH
//!   `$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}` polls.
//!   Each is answered (QoS 0) on `$dps/registrations/res/{status}/?$rid={rid}[&retry-after=s]`
//!   with the JSON the HTTP API gives. A QoS 1 publish is acknowledged first.
//! - PINGREQ, UNSUBSCRIBE and DISCONNECT as MQTT says; a unit silent for 1.5 x its keep-alive
//!   is dropped.
//!
//! Each register or poll passes the same admission as an HTTPS call (`gate::admit`: the
//! operation quota and the test faults); a refused one is answered on its reply topic (429
//! with `retry-after`, 503, 500), which the SDKs retry. Successful calls count as operations.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    Codec, ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode,
    UnsubAck,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder, Framed};

use super::device::{self, RETRY_AFTER_S};
use super::device_auth::authenticate;
use super::error::ServiceError;
use super::peer::PeerCerts;
use super::state::AppState;

/// Largest packet taken or sent (DPS's message limit is 96 KB).
const MAX_PACKET: usize = 96 * 1024;
/// Time a new connection has to send CONNECT.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);

const REGISTER: &str = "$dps/registrations/PUT/iotdps-register/?";
const POLL: &str = "$dps/registrations/GET/iotdps-get-operationstatus/?";

/// What the session reads: a packet, or the protocol level of a CONNECT that is not 3.1.1
/// (rumqttc misreads those rather than refusing them).
#[derive(Debug)]
enum Incoming {
    Packet(Packet),
    OtherLevel(u8),
}

/// rumqttc's v4 codec, with a look at the first CONNECT's protocol level.
struct MqttCodec {
    inner: Codec,
    first: bool,
}

/// The protocol level of the CONNECT at the start of `src`: None until enough bytes are in,
/// Err when the first packet is not a CONNECT.
fn connect_level(src: &[u8]) -> Option<Result<u8, ()>> {
    let first = *src.first()?;
    if first >> 4 != 1 {
        return Some(Err(()));
    }
    // Remaining length: 1 to 4 bytes, 7 bits each.
    let mut at = 1;
    loop {
        let b = *src.get(at)?;
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        if at > 4 {
            return Some(Err(()));
        }
    }
    let name_len = usize::from(u16::from_be_bytes([*src.get(at)?, *src.get(at + 1)?]));
    src.get(at + 2 + name_len).map(|level| Ok(*level))
}

impl Decoder for MqttCodec {
    type Item = Incoming;
    type Error = rumqttc::mqttbytes::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, Self::Error> {
        if self.first {
            match connect_level(src) {
                None => return Ok(None),
                Some(Err(())) => return Err(rumqttc::mqttbytes::Error::IncorrectPacketFormat),
                Some(Ok(4)) => self.first = false,
                Some(Ok(level)) => return Ok(Some(Incoming::OtherLevel(level))),
            }
        }
        Ok(self.inner.decode(src)?.map(Incoming::Packet))
    }
}

impl Encoder<Packet> for MqttCodec {
    type Error = rumqttc::mqttbytes::Error;

    fn encode(&mut self, item: Packet, dst: &mut BytesMut) -> Result<(), Self::Error> {
        self.inner.encode(item, dst)
    }
}

/// The `key=value` pairs after the `?` of a topic.
fn property<'t>(topic: &'t str, name: &str) -> Option<&'t str> {
    topic
        .split_once('?')?
        .1
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Splits `{idScope}/registrations/{registrationId}/...` (the CONNECT user name).
fn user_name_target(user: &str) -> Option<(&str, &str)> {
    let mut parts = user.splitn(4, '/');
    let scope = parts.next()?;
    if !parts.next()?.eq_ignore_ascii_case("registrations") {
        return None;
    }
    let id = parts.next()?;
    Some((scope, id))
}

type Frames<S> = Framed<S, MqttCodec>;

async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    f: &mut Frames<S>,
    p: Packet,
) -> Result<(), rumqttc::mqttbytes::Error> {
    f.send(p).await
}

/// One unit's connection, until it ends.
pub async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: PeerCerts,
    st: Arc<AppState>,
) {
    if let Err(e) = exchange(stream, &peer, &st).await {
        tracing::debug!(error = %e, "MQTT session ended");
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: &PeerCerts,
    st: &Arc<AppState>,
) -> Result<(), rumqttc::mqttbytes::Error> {
    let mut f = Framed::new(
        stream,
        MqttCodec {
            inner: Codec {
                max_incoming_size: MAX_PACKET,
                max_outgoing_size: MAX_PACKET + 1024,
            },
            first: true,
        },
    );
    let refuse = |code| Packet::ConnAck(ConnAck::new(code, false));
    let connect = match tokio::time::timeout(CONNECT_WITHIN, f.next()).await {
        Ok(Some(Ok(Incoming::Packet(Packet::Connect(c))))) => c,
        Ok(Some(Ok(Incoming::OtherLevel(level)))) => {
            tracing::info!(
                level,
                "MQTT CONNECT with an unsupported protocol level refused"
            );
            return send(&mut f, refuse(ConnectReturnCode::RefusedProtocolVersion)).await;
        }
        _ => return Ok(()),
    };
    let (user, password) = match &connect.login {
        Some(l) => (l.username.as_str(), Some(l.password.as_str())),
        None => ("", None),
    };
    let Some((scope, id)) = user_name_target(user) else {
        tracing::info!(
            user,
            "MQTT CONNECT refused: the user name is not {{idScope}}/registrations/{{registrationId}}/..."
        );
        return send(&mut f, refuse(ConnectReturnCode::BadUserNamePassword)).await;
    };
    let id = id.to_owned();
    if !connect.client_id.eq_ignore_ascii_case(&id) {
        tracing::info!(client_id = %connect.client_id, registration_id = %id, "MQTT CONNECT refused: the client ID is not the registration ID");
        return send(&mut f, refuse(ConnectReturnCode::BadClientId)).await;
    }
    let password = password.filter(|p| !p.is_empty());
    if let Err(e) = device::target(st, scope, &id)
        .and_then(|()| authenticate(st, &id, password, peer).map(|_| ()))
    {
        tracing::info!(registration_id = %id, reason = e.message(), "MQTT CONNECT refused");
        return send(&mut f, refuse(ConnectReturnCode::NotAuthorized)).await;
    }
    send(&mut f, refuse(ConnectReturnCode::Success)).await?;
    let idle = match connect.keep_alive {
        0 => Duration::from_secs(3600),
        k => Duration::from_millis(u64::from(k) * 1500),
    };
    loop {
        let packet = match tokio::time::timeout(idle, f.next()).await {
            Err(_) => {
                tracing::info!(registration_id = %id, "MQTT client silent beyond its keep-alive; dropped");
                return Ok(());
            }
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => return Err(e),
            Ok(Some(Ok(Incoming::OtherLevel(_)))) => return Ok(()),
            Ok(Some(Ok(Incoming::Packet(p)))) => p,
        };
        match packet {
            Packet::Subscribe(s) => {
                let codes = s
                    .filters
                    .iter()
                    .map(|flt| {
                        SubscribeReasonCode::Success(match flt.qos {
                            QoS::AtMostOnce => QoS::AtMostOnce,
                            _ => QoS::AtLeastOnce,
                        })
                    })
                    .collect();
                send(&mut f, Packet::SubAck(SubAck::new(s.pkid, codes))).await?;
            }
            Packet::Unsubscribe(u) => {
                send(&mut f, Packet::UnsubAck(UnsubAck::new(u.pkid))).await?;
            }
            Packet::PingReq => send(&mut f, Packet::PingResp).await?,
            Packet::Disconnect => return Ok(()),
            Packet::Publish(p) => {
                if p.qos != QoS::AtMostOnce {
                    send(&mut f, Packet::PubAck(PubAck::new(p.pkid))).await?;
                }
                let reply = match super::gate::admit(st, false).await {
                    Ok(()) => answer(st, &id, password, peer, &p),
                    // Throttled or failing (test options): said on the reply topic, as DPS does.
                    Err(e) => Some(Publish::new(
                        error_reply(property(&p.topic, "$rid").unwrap_or_default(), &e).0,
                        QoS::AtMostOnce,
                        e.body(),
                    )),
                };
                if let Some(reply) = reply {
                    send(&mut f, Packet::Publish(reply)).await?;
                }
            }
            // Acknowledgements of our own publishes (sent at QoS 0: none expected) and the
            // like carry nothing for us.
            _ => {}
        }
    }
}

/// The reply to a unit's publish, if the topic is one of the API's.
fn answer(
    st: &Arc<AppState>,
    id: &str,
    password: Option<&str>,
    peer: &PeerCerts,
    p: &Publish,
) -> Option<Publish> {
    let rid = property(&p.topic, "$rid").unwrap_or_default().to_owned();
    let outcome = if p.topic.starts_with(REGISTER) {
        device::parse_request(&p.payload)
            .and_then(|r| {
                if r.tpm.is_some() {
                    return Err(ServiceError::bad_request(
                        "TPM attestation is served over HTTPS only (as in Azure DPS), not MQTT",
                    ));
                }
                device::check_request(id, &r)
            })
            // The enrollment may have changed since CONNECT: authenticate again.
            .and_then(|()| authenticate(st, id, password, peer))
            .and_then(|a| device::register_unit(st, id, &a))
            .map(|s| (202u16, s))
    } else if p.topic.starts_with(POLL) {
        let op = property(&p.topic, "operationId").unwrap_or_default();
        authenticate(st, id, password, peer)
            .and_then(|_| device::operation_status(st, id, op))
            .map(|s| (200u16, s))
    } else {
        tracing::debug!(topic = %p.topic, "MQTT publish to an unknown topic ignored");
        return None;
    };
    let (topic, body) = match outcome {
        Ok((status, s)) => {
            st.ops_pending
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let wait = if s.status == crate::wire::RegistrationStatus::Assigning {
                format!("&retry-after={RETRY_AFTER_S}")
            } else {
                String::new()
            };
            (
                format!("$dps/registrations/res/{status}/?$rid={rid}{wait}"),
                serde_json::to_vec(&s).unwrap_or_default(),
            )
        }
        Err(e) => error_reply(&rid, &e),
    };
    Some(Publish::new(topic, QoS::AtMostOnce, body))
}

fn error_reply(rid: &str, e: &ServiceError) -> (String, Vec<u8>) {
    let wait = e
        .retry_after()
        .map(|s| format!("&retry-after={s}"))
        .unwrap_or_default();
    (
        format!(
            "$dps/registrations/res/{}/?$rid={rid}{wait}",
            e.status().as_u16()
        ),
        e.body(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_user_names_are_read_as_the_sdks_write_them() {
        let t = "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=7b1&operationId=abc";
        assert_eq!(property(t, "$rid"), Some("7b1"));
        assert_eq!(property(t, "operationId"), Some("abc"));
        assert_eq!(
            property("$dps/registrations/PUT/iotdps-register/", "$rid"),
            None
        );
        let node = "0ne0000CAP1/registrations/dev-mqtt-1/api-version=2019-03-31&ClientVersion=azure-iot-provisioning-device%2F1.9.1";
        assert_eq!(user_name_target(node), Some(("0ne0000CAP1", "dev-mqtt-1")));
        assert_eq!(user_name_target("0ne0000CAP1/devices/x/"), None);
        assert_eq!(user_name_target("just-a-name"), None);
    }

    #[test]
    fn the_connect_level_is_read_before_the_codec() {
        // CONNECT, remaining length 18, "MQTT", level 4.
        let v4 = [0x10, 18, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2];
        assert_eq!(connect_level(&v4), Some(Ok(4)));
        // MQTT 3.1: "MQIsdp", level 3.
        let v3 = [0x10, 20, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3];
        assert_eq!(connect_level(&v3), Some(Ok(3)));
        assert_eq!(connect_level(&v4[..5]), None);
        assert_eq!(connect_level(&[0x30, 2]), Some(Err(())));
    }
}
