//! The broker side of the operator's tool: publish a retained message and wait for the
//! broker's acknowledgement; read the retained messages under a topic filter. Plain TCP (the
//! operator runs it where the broker is reachable; TLS comes with the gateway side).

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::FleetError;

fn options(host: &str, port: u16) -> MqttOptions {
    let id = format!("affectgate-fleet-{}", std::process::id());
    let mut o = MqttOptions::new(id, host, port);
    o.set_keep_alive(Duration::from_secs(10));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

fn broker_err(host: &str, port: u16, e: impl std::fmt::Display) -> FleetError {
    FleetError::Invalid(format!(
        "MQTT broker {host}:{port}: {e} (check --broker host:port and that it is running)"
    ))
}

/// Publish `payload` retained at QoS 1 and return once the broker acknowledged it.
pub async fn publish_retained(
    host: &str,
    port: u16,
    topic: &str,
    payload: Vec<u8>,
) -> Result<(), FleetError> {
    let (client, mut el) = AsyncClient::new(options(host, port), 10);
    client
        .publish(topic, QoS::AtLeastOnce, true, payload)
        .await
        .map_err(|e| broker_err(host, port, e))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, el.poll())
            .await
            .map_err(|_| broker_err(host, port, "no acknowledgement within 10 s"))?
            .map_err(|e| broker_err(host, port, e))?;
        if let Event::Incoming(Packet::PubAck(_)) = ev {
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), el.poll()).await;
            return Ok(());
        }
    }
}

/// The retained messages under `filter`: everything the broker sends within `quiet` of the
/// last one (retained messages arrive right after the subscription).
pub async fn retained(
    host: &str,
    port: u16,
    filter: &str,
    quiet: Duration,
) -> Result<Vec<(String, Vec<u8>)>, FleetError> {
    let (client, mut el) = AsyncClient::new(options(host, port), 10);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .map_err(|e| broker_err(host, port, e))?;
    let mut out = Vec::new();
    let mut subscribed = false;
    loop {
        let wait = if subscribed {
            quiet
        } else {
            Duration::from_secs(10)
        };
        match tokio::time::timeout(wait, el.poll()).await {
            Err(_) if subscribed => break,
            Err(_) => {
                return Err(broker_err(
                    host,
                    port,
                    "no subscription acknowledgement within 10 s",
                ))
            }
            Ok(Err(e)) => return Err(broker_err(host, port, e)),
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => subscribed = true,
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) if p.retain => {
                out.push((p.topic.clone(), p.payload.to_vec()))
            }
            Ok(Ok(_)) => {}
        }
    }
    let _ = client.disconnect().await;
    Ok(out)
}
