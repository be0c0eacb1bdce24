//! An embedded MQTT broker (rumqttd) so `affectgate demo` needs no setup.
//!
//! Only the demo uses it: a real installation points `mqtt.host` at the home's broker
//! (Mosquitto, the Home Assistant add-on, …). rumqttd runs its own threads and has no stop
//! API; it lives until the process exits, which is what a demo wants.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A running embedded broker.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedBroker {
    pub addr: SocketAddr,
}

/// Errors starting the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded MQTT broker: no free TCP port on 127.0.0.1: {0}")]
    NoPort(std::io::Error),
    #[error("embedded MQTT broker: invalid built-in configuration: {0}")]
    Config(String),
    #[error("embedded MQTT broker did not accept connections on {addr} within {waited_s} s")]
    NotListening { addr: SocketAddr, waited_s: u64 },
}

impl EmbeddedBroker {
    /// Start on `127.0.0.1:preferred_port`, or on a free port if that one is taken.
    pub fn start(preferred_port: u16) -> Result<EmbeddedBroker, BrokerError> {
        let port = match TcpListener::bind(("127.0.0.1", preferred_port)) {
            Ok(l) => l.local_addr().map_err(BrokerError::NoPort)?.port(),
            Err(_) => TcpListener::bind(("127.0.0.1", 0))
                .and_then(|l| l.local_addr())
                .map_err(BrokerError::NoPort)?
                .port(),
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        // rumqttd's config is serde-deserialisable; TOML keeps the settings readable.
        let text = format!(
            r#"
id = 0
[router]
id = 0
max_connections = 64
max_outgoing_packet_count = 200
max_segment_size = 10485760
max_segment_count = 10
[v4.1]
name = "affectgate-demo"
listen = "{addr}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 262144
max_inflight_count = 200
dynamic_filters = true
"#
        );
        let config: rumqttd::Config =
            toml::from_str(&text).map_err(|e| BrokerError::Config(e.to_string()))?;
        std::thread::Builder::new()
            .name("rumqttd".into())
            .spawn(move || {
                let mut broker = rumqttd::Broker::new(config);
                if let Err(e) = broker.start() {
                    tracing::error!("embedded MQTT broker stopped: {e}");
                }
            })
            .map_err(|e| BrokerError::Config(e.to_string()))?;
        let t0 = Instant::now();
        let wait = Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if t0.elapsed() > wait {
                return Err(BrokerError::NotListening {
                    addr,
                    waited_s: wait.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(EmbeddedBroker { addr })
    }
}
