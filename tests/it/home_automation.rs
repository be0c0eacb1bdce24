//! Home-automation integration against a real Mosquitto: Home Assistant discovery (field by
//! field), HA birth → re-publication, sensor removal, the outbox across broker restarts and
//! gateway restarts, and malformed label/command payloads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::{shared_data, Mosquitto, Recorder};
use affectgate::config::{Config, SensorConfig, SourceConfig};
use affectgate::gateway::GatewayBuilder;
use affectgate::mqtt::StateMessage;
use affectgate::source::synthetic::SyntheticConfig;
use affectgate::store::{Retention, Store};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

fn base_config(port: u16, store: &Path, gateway: &str) -> Config {
    crate::util::gateway_config(gateway, port, store)
}

use crate::util::replay_sensor as replay;

fn polar() -> Option<PathBuf> {
    Some(shared_data()?.join("polar-h10/polar_h10_ecg.csv"))
}

fn json(m: &crate::util::Msg) -> Value {
    serde_json::from_slice(&m.payload).unwrap_or_else(|e| panic!("{}: {e}", m.topic))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_follows_home_assistant_conventions_and_removal_clears_entities() {
    let Some(file) = polar() else { return };
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut cfg = base_config(broker.port, &store, "home");
    cfg.sensors = vec![replay("chest", &file, false), replay("spare", &file, false)];
    let rx = Recorder::start(broker.port, &["homeassistant/#", "affectgate/home/#"]).await;
    GatewayBuilder::new(cfg.clone())
        .run(std::future::pending())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Strap configs: four levels (`<prefix>/<component>/<object id>/config`); the gateway
    // device's are five (node id = the gateway), checked in their own test. Empty payloads
    // delete the strap copies of entities that moved to the gateway device.
    let strap_configs: Vec<_> = rx
        .messages()
        .into_iter()
        .filter(|m| {
            m.topic.starts_with("homeassistant/")
                && m.topic.ends_with("/config")
                && m.topic.split('/').count() == 4
        })
        .collect();
    let moved: BTreeSet<String> = strap_configs
        .iter()
        .filter(|m| m.payload.is_empty())
        .map(|m| m.topic.clone())
        .collect();
    assert_eq!(
        moved.len(),
        6,
        "model version, last retrain, store problem × 2: {moved:?}"
    );
    let by_topic: BTreeMap<String, Value> = strap_configs
        .iter()
        .filter(|m| !m.payload.is_empty())
        .map(|m| (m.topic.clone(), json(m)))
        .collect();
    // 7 entities per strap (arousal, heart rate, heart rate vs usual, RMSSD, quality,
    // calibrating, connected).
    assert_eq!(by_topic.len(), 14, "{:?}", by_topic.keys());
    let state: Value = json(
        rx.on("affectgate/home/chest/state")
            .first()
            .expect("chest states"),
    );
    let mut unique = BTreeSet::new();
    for (topic, c) in &by_topic {
        let parts: Vec<&str> = topic.split('/').collect();
        assert_eq!(parts.len(), 4, "{topic}");
        assert!(["sensor", "binary_sensor"].contains(&parts[1]), "{topic}");
        let uid = c["unique_id"].as_str().unwrap();
        assert_eq!(uid, parts[2]);
        assert!(unique.insert(uid.to_string()), "duplicate unique_id {uid}");
        let sensor = if uid.contains("_chest_") {
            "chest"
        } else {
            "spare"
        };
        assert_eq!(
            c["device"]["identifiers"][0],
            format!("affectgate_home_{sensor}")
        );
        assert_eq!(c["device"]["manufacturer"], "affectgate");
        assert_eq!(c["device"]["via_device"], "affectgate/home");
        let st = c["state_topic"].as_str().unwrap();
        let avail: Vec<&str> = c["availability"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["topic"].as_str().unwrap())
            .collect();
        assert!(avail.contains(&"affectgate/home/status"), "{uid}");
        if uid.ends_with("_calibrating") {
            assert_eq!(parts[1], "binary_sensor");
            assert!(avail.contains(&format!("affectgate/home/{sensor}/live").as_str()));
            assert_eq!(st, format!("affectgate/home/{sensor}/state"));
            assert!(c["value_template"]
                .as_str()
                .unwrap()
                .contains("value_json.calibrating"));
            assert!(state["calibrating"].is_boolean(), "{state}");
            assert_eq!(c["expire_after"], 30, "{uid}");
            continue;
        }
        if parts[1] == "binary_sensor" {
            assert_eq!(c["device_class"], "connectivity");
            assert_eq!(st, format!("affectgate/home/{sensor}/availability"));
            continue;
        }
        if st.ends_with("/state") {
            assert_eq!(st, format!("affectgate/home/{sensor}/state"));
            // The template reads a key the real state message has.
            let tpl = c["value_template"].as_str().unwrap();
            let key = tpl
                .trim_start_matches("{{ value_json.")
                .trim_end_matches(" }}")
                .split('.')
                .next()
                .unwrap();
            assert!(state.get(key).is_some(), "{uid}: {tpl} vs {state}");
        }
        if uid.ends_with("_arousal") {
            // The window's own time and facts as attributes, read from keys the state has.
            let tpl = c["json_attributes_template"].as_str().unwrap();
            for key in ["time", "window", "sdnn_ms", "rr_corrected"] {
                assert!(tpl.contains(&format!("value_json.{key}")), "{tpl}");
                assert!(state.get(key).is_some(), "{key} missing from {state}");
            }
        }
        let per_window = uid.ends_with("_arousal")
            || uid.ends_with("_heart_rate")
            || uid.ends_with("_heart_rate_relative")
            || uid.ends_with("_rmssd")
            || uid.ends_with("_quality");
        if per_window {
            assert_eq!(c["expire_after"], 30, "{uid}: 3 × the 10 s window");
            assert_eq!(c["availability_mode"], "all");
            // Current only while this run's connection has produced a window.
            assert_eq!(
                avail,
                [
                    "affectgate/home/status".to_string(),
                    format!("affectgate/home/{sensor}/live")
                ]
            );
        }
        let numeric = uid.ends_with("_arousal")
            || uid.ends_with("_heart_rate")
            || uid.ends_with("_heart_rate_relative")
            || uid.ends_with("_rmssd");
        assert_eq!(
            c.get("state_class").and_then(|v| v.as_str()),
            numeric.then_some("measurement"),
            "{uid}"
        );
    }
    assert_eq!(
        by_topic["homeassistant/sensor/affectgate_home_chest_heart_rate/config"]
            ["unit_of_measurement"],
        "bpm"
    );
    // Strap availability went online, then offline at shutdown (retained).
    let av = rx.on("affectgate/home/chest/availability");
    assert_eq!(av.first().unwrap().payload, b"online");
    assert_eq!(av.last().unwrap().payload, b"offline");
    // `live`: offline from the start, online before the first state arrives, offline at the
    // end; the per-window entities are never available with a value from an earlier run.
    let all = rx.messages();
    let live: Vec<(usize, &[u8])> = all
        .iter()
        .enumerate()
        .filter(|(_, m)| m.topic == "affectgate/home/chest/live")
        .map(|(i, m)| (i, m.payload.as_slice()))
        .collect();
    let payloads: Vec<&[u8]> = live.iter().map(|(_, p)| *p).collect();
    assert_eq!(
        payloads,
        [&b"offline"[..], b"online", b"offline"],
        "one connection"
    );
    let first_state = all
        .iter()
        .position(|m| m.topic == "affectgate/home/chest/state")
        .unwrap();
    assert!(
        live[1].0 < first_state,
        "online (#{}) before the first state (#{first_state})",
        live[1].0
    );
    assert!(live[0].0 < live[1].0);

    // Second run without "spare": its 7 configs are deleted (empty retained payloads).
    let mut cfg2 = cfg.clone();
    cfg2.sensors = vec![replay("chest", &file, false)];
    let before = rx.messages().len();
    GatewayBuilder::new(cfg2)
        .run(std::future::pending())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cleared: BTreeSet<String> = rx.messages()[before..]
        .iter()
        .filter(|m| m.topic.contains("_spare_") && m.payload.is_empty())
        .map(|m| m.topic.clone())
        .collect();
    assert_eq!(cleared.len(), 7, "{cleared:?}");
    // A fresh subscriber sees retained configs for chest only.
    let late = Recorder::start(broker.port, &["homeassistant/#"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let retained: Vec<_> = late
        .messages()
        .into_iter()
        .filter(|m| m.retain && m.topic.split('/').count() == 4)
        .collect();
    assert_eq!(retained.len(), 7);
    assert!(retained.iter().all(|m| m.topic.contains("_chest_")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_birth_republishes_discovery_and_last_state() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(broker.port, &dir.path().join("s"), "birth");
    cfg.sensors = vec![SensorConfig {
        id: "synth".into(),
        source: SourceConfig::Synthetic {
            ecg: SyntheticConfig::default(),
        },
    }];
    let rx = Recorder::start(broker.port, &["homeassistant/#", "affectgate/birth/#"]).await;
    let stop = Arc::new(tokio::sync::Notify::new());
    let s2 = stop.clone();
    let gw = tokio::spawn(async move {
        GatewayBuilder::new(cfg)
            .run(async move { s2.notified().await })
            .await
    });
    // First window after ≈ 12.3 s.
    assert!(
        rx.wait_for(Duration::from_secs(30), |m| m
            .iter()
            .any(|m| m.topic == "affectgate/birth/synth/state"))
            .await
    );
    // Configs that announce something (empty ones delete the strap copies of entities that
    // moved to the gateway device).
    let n_cfg = |m: &[crate::util::Msg]| {
        m.iter()
            .filter(|m| m.topic.ends_with("/config") && !m.payload.is_empty())
            .count()
    };
    let n_state = |m: &[crate::util::Msg]| m.iter().filter(|m| m.topic.ends_with("/state")).count();
    let (c0, s0) = (n_cfg(&rx.messages()), n_state(&rx.messages()));
    // 7 strap entities and 7 gateway entities (retraining is off: its 3 are not announced).
    assert_eq!(c0, 14);
    rx.client
        .publish("homeassistant/status", QoS::AtLeastOnce, false, "online")
        .await
        .unwrap();
    assert!(
        rx.wait_for(Duration::from_secs(5), |m| n_cfg(m) == 2 * c0
            && n_state(m) > s0)
            .await,
        "no re-publication after the HA birth message"
    );
    // Anything else on homeassistant/status (e.g. `offline`) does not trigger it.
    rx.client
        .publish("homeassistant/status", QoS::AtLeastOnce, false, "offline")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(n_cfg(&rx.messages()), 2 * c0);
    stop.notify_one();
    gw.await.unwrap().unwrap();
}

/// A subscriber with a persistent session (clean_session = false): the broker queues QoS 1
/// messages for it while it is away, across broker restarts.
struct Persistent {
    seen: Arc<Mutex<Vec<StateMessage>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Persistent {
    async fn start(port: u16, id: &str, filter: &str) -> Persistent {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_session(false);
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut ev) = AsyncClient::new(o, 64);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready = Some(ready_tx);
        let task = tokio::spawn(async move {
            let _client = client;
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(m) = serde_json::from_slice::<StateMessage>(&p.payload) {
                            s2.lock().unwrap().push(m);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        ready_rx.await.unwrap();
        Persistent { seen, task }
    }

    fn distinct(&self) -> BTreeSet<(String, i64)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|m| (m.sensor.clone(), m.window_start_ms))
            .collect()
    }
}

impl Drop for Persistent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn stored(store_dir: &Path, sensor: &str) -> BTreeSet<(String, i64)> {
    let s = Store::open(store_dir, Retention::KEEP_ALL).unwrap();
    s.range(sensor, i64::MIN, i64::MAX)
        .map(|r| {
            let w = r.unwrap();
            (sensor.to_string(), w.window.start_ns.div_euclid(1_000_000))
        })
        .collect()
}

/// Kill (SIGTERM) and restart the broker 20 times while a replay streams: afterwards every
/// stored window's state message has been received at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarted_20_times_loses_no_state_message() {
    let Some(d) = shared_data() else { return };
    let Some(bin) = crate::util::mosquitto_bin() else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let persist = dir.path().join("mq");
    std::fs::create_dir_all(&persist).unwrap();
    let mut broker = Some(Mosquitto::start_persistent(&bin, port, &persist));
    let sub = Persistent::start(port, "flap-sub", "affectgate/flap/+/state").await;
    let store_dir = dir.path().join("store");
    let mut cfg = base_config(port, &store_dir, "flap");
    // MIT-BIH 100 looped as fast as the pipeline goes: hundreds of windows over the test.
    cfg.sensors = vec![replay("mit", &d.join("mitbih/100.hea"), true)];
    let stop = Arc::new(tokio::sync::Notify::new());
    let s2 = stop.clone();
    let gw = tokio::spawn(async move {
        GatewayBuilder::new(cfg)
            .run(async move { s2.notified().await })
            .await
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    for _ in 0..20 {
        broker.take().unwrap().stop();
        tokio::time::sleep(Duration::from_millis(400)).await;
        broker = Some(Mosquitto::start_persistent(&bin, port, &persist));
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    stop.notify_one();
    let report = gw.await.unwrap().unwrap();
    // It reconnected after the outages. Not necessarily after each: a broker up for 0.7 s
    // can be missed when a reconnect attempt falls into the restart (a loaded machine needs
    // longer to start Mosquitto); what must hold is that nothing is lost, below.
    assert!(report.mqtt.connects >= 2, "{:?}", report.mqtt);
    assert!(report.mqtt.all_acked, "{:?}", report.mqtt);
    let want = stored(&store_dir, "mit");
    assert!(want.len() > 100, "{} windows", want.len());
    let t0 = Instant::now();
    while sub.distinct().len() < want.len() && t0.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = sub.distinct();
    let missing: Vec<_> = want.difference(&got).collect();
    assert!(
        missing.is_empty(),
        "{} of {} windows never received: {:?}",
        missing.len(),
        want.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(got.is_subset(&want));
    drop(broker);
}

/// Broker unreachable for a whole run: the state messages wait in the outbox and are
/// delivered, in order, by the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_messages_are_delivered_after_a_gateway_restart() {
    let Some(file) = polar() else { return };
    let Some(bin) = crate::util::mosquitto_bin() else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let mut cfg = base_config(port, &store_dir, "later");
    cfg.sensors = vec![replay("polar", &file, false)];
    // Run 1: no broker.
    let r1 = GatewayBuilder::new(cfg.clone())
        .run(std::future::pending())
        .await
        .unwrap();
    assert_eq!(r1.mqtt.delivered, 0);
    assert_eq!(r1.mqtt.pending, r1.published, "{:?}", r1.mqtt);
    assert!(r1.published > 50);
    // Run 2 with a broker and a subscriber.
    let _broker = Mosquitto::start_on(&bin, port);
    let rx = Recorder::start(port, &["affectgate/later/polar/state"]).await;
    let r2 = GatewayBuilder::new(cfg)
        .run(std::future::pending())
        .await
        .unwrap();
    assert!(r2.mqtt.all_acked, "{:?}", r2.mqtt);
    assert_eq!(r2.mqtt.pending, 0);
    assert_eq!(r2.mqtt.delivered, r1.published + r2.published);
    rx.wait_for(Duration::from_secs(5), |m| {
        m.len() as u64 >= r1.published + r2.published
    })
    .await;
    let msgs: Vec<StateMessage> = rx
        .messages()
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    assert_eq!(msgs.len() as u64, r1.published + r2.published);
    // In order: run 1's windows first (0..n1), then run 2's (0..n2). (Fast replay timestamps
    // run ahead of the wall clock, so order is checked by window number, per run.)
    let idx: Vec<u64> = msgs.iter().map(|m| m.window).collect();
    let want: Vec<u64> = (0..r1.published).chain(0..r2.published).collect();
    assert_eq!(idx, want, "delivery order");
    assert_eq!(
        stored(&store_dir, "polar").len() as u64,
        r1.published + r2.published
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_inputs_get_error_messages_and_labels_reach_the_store() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("s");
    let mut cfg = base_config(broker.port, &store_dir, "inp");
    cfg.sensors = vec![SensorConfig {
        id: "synth".into(),
        source: SourceConfig::Synthetic {
            ecg: SyntheticConfig::default(),
        },
    }];
    let rx = Recorder::start(broker.port, &["affectgate/inp/#"]).await;
    let stop = Arc::new(tokio::sync::Notify::new());
    let s2 = stop.clone();
    let gw = tokio::spawn(async move {
        GatewayBuilder::new(cfg)
            .run(async move { s2.notified().await })
            .await
    });
    assert!(
        rx.wait_for(Duration::from_secs(30), |m| m
            .iter()
            .any(|m| m.topic == "affectgate/inp/synth/state"))
            .await
    );
    let bad: [(&str, &[u8], Option<&str>); 5] = [
        (
            "affectgate/inp/synth/label",
            b"{\"arousl\": 5}",
            Some("arousl"),
        ),
        ("affectgate/inp/synth/label", b"not json", None),
        (
            "affectgate/inp/synth/label",
            b"{\"arousal\": 12, \"scale\": \"1-9\"}",
            Some("arousal"),
        ),
        ("affectgate/inp/ghost/label", b"{\"arousal\": 0.5}", None),
        ("affectgate/inp/cmd/explode", b"", None),
    ];
    for (t, p, _) in &bad {
        rx.client
            .publish(*t, QoS::AtLeastOnce, false, p.to_vec())
            .await
            .unwrap();
    }
    assert!(
        rx.wait_for(Duration::from_secs(5), |m| m
            .iter()
            .filter(|m| m.topic == "affectgate/inp/error")
            .count()
            >= bad.len())
            .await
    );
    let errors: Vec<Value> = rx.on("affectgate/inp/error").iter().map(json).collect();
    for (t, _, field) in &bad {
        let e = errors
            .iter()
            .find(|e| e["topic"] == *t && field.is_none_or(|f| e["field"] == f))
            .unwrap_or_else(|| panic!("no error for {t} {field:?}: {errors:?}"));
        assert!(!e["error"].as_str().unwrap().is_empty());
    }
    // A valid self-report labels the stored window(s) of the last 10 minutes.
    rx.client
        .publish(
            "affectgate/inp/synth/label",
            QoS::AtLeastOnce,
            false,
            br#"{"arousal": 7, "scale": "1-9", "last_minutes": 10}"#.to_vec(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Still alive: another window arrives after all that.
    let n = rx.on("affectgate/inp/synth/state").len();
    assert!(
        rx.wait_for(Duration::from_secs(15), |m| m
            .iter()
            .filter(|m| m.topic == "affectgate/inp/synth/state")
            .count()
            > n)
            .await,
        "gateway stopped publishing after bad inputs"
    );
    stop.notify_one();
    gw.await.unwrap().unwrap();
    let s = Store::open(&store_dir, Retention::KEEP_ALL).unwrap();
    let all: Vec<_> = s
        .range("synth", i64::MIN, i64::MAX)
        .map(|r| r.unwrap())
        .collect();
    assert!(all.len() >= 2);
    let labelled: Vec<_> = all.iter().filter(|w| !w.labels.is_empty()).collect();
    assert!(!labelled.is_empty());
    for w in &labelled {
        assert_eq!(w.labels, vec![("arousal".to_string(), 0.75)]);
    }
    assert_eq!(
        s.unlabelled_since("synth", i64::MIN).count(),
        all.len() - labelled.len()
    );
}

/// `cmd/reload` re-reads the config file: a sensor added to the file starts publishing,
/// without restarting the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_command_applies_an_edited_config() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(broker.port, &dir.path().join("s"), "rl");
    let synth = |id: &str| SensorConfig {
        id: id.into(),
        source: SourceConfig::Synthetic {
            ecg: SyntheticConfig::default(),
        },
    };
    cfg.sensors = vec![synth("one")];
    let p = dir.path().join("rl.toml");
    std::fs::write(&p, toml::to_string(&cfg).unwrap()).unwrap();
    let rx = Recorder::start(broker.port, &["affectgate/rl/#"]).await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_affectgate"))
        .args(["run", "--config"])
        .arg(&p)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        rx.wait_for(Duration::from_secs(20), |m| m.iter().any(|m| m.topic
            == "affectgate/rl/one/availability"
            && m.payload == b"online"))
            .await
    );
    cfg.sensors.push(synth("two"));
    std::fs::write(&p, toml::to_string(&cfg).unwrap()).unwrap();
    rx.client
        .publish("affectgate/rl/cmd/reload", QoS::AtLeastOnce, false, "{}")
        .await
        .unwrap();
    let ok = rx
        .wait_for(Duration::from_secs(30), |m| {
            m.iter().any(|m| m.topic == "affectgate/rl/two/state")
        })
        .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "sensor added by reload never published");
}

/// A retained message over the gateway's 256 KiB packet limit on one of its topics closes its
/// connection at every connect. It used to reconnect ~3×/s for ever (the back-off reset on
/// every ConnAck) and never said why; now the back-off keeps growing and the reason (with
/// how to delete the message) is published on the error topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_retained_message_backs_off_and_is_explained() {
    let Some(file) = polar() else { return };
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(broker.port, &dir.path().join("s"), "big");
    cfg.sensors = vec![replay("chest", &file, true)];
    cfg.mqtt.discovery = false;
    let rx = Recorder::start(broker.port, &["affectgate/big/error"]).await;
    rx.client
        .publish(
            "affectgate/big/cmd/reload",
            QoS::AtLeastOnce,
            true,
            vec![b'x'; 300 * 1024],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = GatewayBuilder::new(cfg)
        .run(tokio::time::sleep(Duration::from_secs(12)))
        .await
        .unwrap();
    // 250 ms doubling: connects at ≈ 0, 0.25, 0.75, 1.75, 3.75, 7.75 s (± jitter) — not 36.
    assert!(
        (2..=8).contains(&report.mqtt.connects),
        "{} connects in 12 s",
        report.mqtt.connects
    );
    let errors = rx.on("affectgate/big/error");
    assert!(
        errors.iter().any(|m| {
            let t = String::from_utf8_lossy(&m.payload);
            t.contains("closed the MQTT connection") && t.contains("mosquitto_pub -r -n -t")
        }),
        "{errors:?}"
    );
}

/// The gateway device (issue: gateway-wide facts were copied onto every strap): its
/// entities and buttons are announced, the straps point at it, and the MQTT model commands
/// act like `affectgate model promote|rollback` — the registry changes, the watcher swaps,
/// and the retained `affectgate/<gw>/model` says what serves; refusals are answered on the
/// error topic (the "Last input error" entity). A press of the announced reload button ends
/// the run with a reload request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_device_buttons_and_model_commands() {
    use affectgate::retrain::registry::{Entry, ModelStatus, Registry};
    let Some(file) = polar() else { return };
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(broker.port, &dir.path().join("store"), "ctl");
    cfg.sensors = vec![replay("chest", &file, true)];
    cfg.retrain.models_dir = dir.path().join("models");
    // A registered model: the shipped one's bytes and card, as a round would leave it.
    let registry = Registry::open(&cfg.retrain.models_dir);
    let onnx = std::fs::read(&cfg.model.path).unwrap();
    let card = std::fs::read_to_string(affectgate::model::card::ModelCard::path_for(
        &cfg.model.path,
    ))
    .unwrap();
    let entry = Entry {
        id: "r0001".into(),
        created: "2026-12-01T00:00:00Z".into(),
        parent: "shipped".into(),
        status: ModelStatus::Candidate,
        reason: String::new(),
        metrics: serde_json::json!({}),
        sha256: String::new(),
    };
    registry.add(entry, &onnx, &card).unwrap();
    let rx = Recorder::start(broker.port, &["homeassistant/#", "affectgate/ctl/#"]).await;
    let model_id = |rx: &Recorder| -> Option<String> {
        rx.on("affectgate/ctl/model")
            .last()
            .map(|m| json(m)["id"].as_str().unwrap().to_string())
    };
    let errors = |rx: &Recorder| -> Vec<String> {
        rx.on("affectgate/ctl/error")
            .iter()
            .map(|m| json(m)["error"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        GatewayBuilder::new(cfg.clone()).run(async {
            let wait = |what: &'static str, f: Box<dyn Fn(&Recorder) -> bool + Send>| {
                let rx = &rx;
                async move {
                    let t0 = Instant::now();
                    while !f(rx) {
                        assert!(
                            t0.elapsed() < Duration::from_secs(30),
                            "timed out waiting for {what}"
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            };
            wait(
                "a state",
                Box::new(|rx| !rx.on("affectgate/ctl/chest/state").is_empty()),
            )
            .await;
            assert_eq!(model_id(&rx).as_deref(), Some("shipped"));
            let send = |topic: &'static str, payload: &'static str| {
                let c = rx.client.clone();
                async move {
                    c.publish(topic, QoS::AtLeastOnce, false, payload)
                        .await
                        .unwrap()
                }
            };
            send("affectgate/ctl/cmd/promote", r#"{"id": "r0001"}"#).await;
            wait(
                "r0001 to serve",
                Box::new(move |rx| model_id(rx).as_deref() == Some("r0001")),
            )
            .await;
            send("affectgate/ctl/cmd/promote", r#"{"id": "r0009"}"#).await;
            wait(
                "the unknown id refused",
                Box::new(move |rx| {
                    errors(rx)
                        .iter()
                        .any(|e| e.contains("r0009") && e.contains("r0001"))
                }),
            )
            .await;
            send("affectgate/ctl/cmd/rollback", "{}").await;
            wait(
                "the shipped model back",
                Box::new(move |rx| model_id(rx).as_deref() == Some("shipped")),
            )
            .await;
            let before = errors(&rx).len();
            send("affectgate/ctl/cmd/rollback", "{}").await;
            wait(
                "a second rollback refused",
                Box::new(move |rx| errors(rx).len() > before),
            )
            .await;
            // Retraining is off in this config: the switch has nothing to switch, and says so.
            send("affectgate/ctl/cmd/auto_retrain", r#"{"enabled": false}"#).await;
            wait(
                "the switch refused",
                Box::new(move |rx| {
                    errors(rx).iter().any(|e| {
                        e.contains("retraining is disabled") && e.contains("nothing to switch")
                    })
                }),
            )
            .await;
            // The reload button, as Home Assistant presses it: its announced payload on its
            // announced command topic.
            let button = rx
                .on("homeassistant/button/affectgate_ctl/reload/config")
                .last()
                .map(json)
                .expect("reload button announced");
            rx.client
                .publish(
                    button["command_topic"].as_str().unwrap(),
                    QoS::AtLeastOnce,
                    false,
                    button["payload_press"].as_str().unwrap().to_string(),
                )
                .await
                .unwrap();
            std::future::pending::<()>().await
        }),
    )
    .await
    .expect("the reload button ends the run")
    .unwrap();
    assert!(
        report.reload_requested,
        "the reload button asked for a reload"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // What serves, as retained: shipped again, with the model's heads.
    let model = json(rx.on("affectgate/ctl/model").last().unwrap());
    assert_eq!(model["id"], "shipped");
    assert_eq!(model["heads"], serde_json::json!(["arousal"]));
    let ids: Vec<String> = rx
        .on("affectgate/ctl/model")
        .iter()
        .map(|m| json(m)["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["shipped", "r0001", "shipped"]);
    let errs = errors(&rx);
    let last_rollback_error = errs[errs.len() - 2].clone();
    assert!(
        last_rollback_error.contains("roll back"),
        "{last_rollback_error}"
    );
    // The gateway device: retraining and fleet updates are off in the shipped config, so its
    // four retraining entities (state, last retrain, button, switch) and the update entity
    // are deleted and seven are announced.
    let gw: BTreeMap<String, Vec<u8>> = rx
        .messages()
        .into_iter()
        .filter(|m| m.topic.starts_with("homeassistant/") && m.topic.split('/').count() == 5)
        .map(|m| (m.topic.clone(), m.payload.clone()))
        .collect();
    let announced: BTreeSet<&str> = gw
        .iter()
        .filter(|(_, p)| !p.is_empty())
        .map(|(t, _)| t.as_str())
        .collect();
    assert_eq!(
        announced,
        [
            "homeassistant/binary_sensor/affectgate_ctl/online/config",
            "homeassistant/binary_sensor/affectgate_ctl/store_problem/config",
            "homeassistant/button/affectgate_ctl/flush_outbox/config",
            "homeassistant/button/affectgate_ctl/reload/config",
            "homeassistant/button/affectgate_ctl/rollback/config",
            "homeassistant/sensor/affectgate_ctl/last_input_error/config",
            "homeassistant/sensor/affectgate_ctl/model_version/config",
        ]
        .into_iter()
        .collect()
    );
    assert_eq!(
        gw.len(),
        12,
        "and the four retraining configs and the update entity's emptied: {:?}",
        gw.keys()
    );
    for t in &announced {
        let c: Value = serde_json::from_slice(&gw[*t]).unwrap();
        assert_eq!(c["device"]["identifiers"][0], "affectgate/ctl", "{t}");
        // Every state topic an entity reads is one the gateway published.
        if let Some(st) = c["state_topic"].as_str() {
            assert!(
                !rx.on(st).is_empty(),
                "{t} reads {st}, which nobody published"
            );
        }
    }
    let strap: Value = json(
        rx.on("homeassistant/sensor/affectgate_ctl_chest_arousal/config")
            .last()
            .unwrap(),
    );
    assert_eq!(strap["device"]["via_device"], "affectgate/ctl");
}

/// Windows published more than 3 window periods after their end (a backlog) go to
/// `…/history`, fresh ones to `…/state`; Home Assistant reads `state` only. Each window is
/// delivered once on exactly one of the two. And a restart: the `live` topic is `offline` until
/// the new run's first window, so the entities never show the previous run's value as current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_windows_go_to_history_and_a_restart_never_looks_current() {
    use affectgate::source::live::ReplaySource;
    let Some(file) = polar() else { return };
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let cfg = base_config(broker.port, &store_dir, "late");
    let rx = Recorder::start(broker.port, &["affectgate/late/#"]).await;
    let src = |id: &str, start_ns: Option<i64>| -> Box<dyn affectgate::source::Source> {
        Box::new(ReplaySource {
            sensor: id.into(),
            path: file.clone(),
            signal: None,
            realtime: false,
            looped: false,
            start_ns,
        })
    };
    let two_hours_ago = affectgate::time::now_ns() - 7_200_000_000_000;
    let report = GatewayBuilder::new(cfg.clone())
        .source(src("old", Some(two_hours_ago)))
        .source(src("new", None))
        .run(std::future::pending())
        .await
        .unwrap();
    rx.wait_for(Duration::from_secs(5), |m| {
        m.iter()
            .filter(|m| m.topic.ends_with("/state") || m.topic.ends_with("/history"))
            .count() as u64
            >= report.published
    })
    .await;
    let windows = |topic: &str| -> Vec<StateMessage> {
        rx.on(topic)
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
            .collect()
    };
    let old_history = windows("affectgate/late/old/history");
    let new_state = windows("affectgate/late/new/state");
    let per_sensor = report.published / 2;
    assert!(per_sensor > 20, "{report:?}");
    assert_eq!(
        old_history.len() as u64,
        per_sensor,
        "every old window, as history"
    );
    assert!(
        windows("affectgate/late/old/state").is_empty(),
        "no old window as current"
    );
    assert_eq!(
        new_state.len() as u64,
        per_sensor,
        "every fresh window, as current"
    );
    assert!(windows("affectgate/late/new/history").is_empty());
    // In order, each once; the payload is the window's own (its time two hours back).
    let idx: Vec<u64> = old_history.iter().map(|m| m.window).collect();
    assert_eq!(idx, (0..per_sensor).collect::<Vec<_>>());
    let t0 = affectgate::time::parse_rfc3339(&old_history[0].time).unwrap();
    let ago_s = (t0 - two_hours_ago) as f64 / 1e9;
    assert!(
        (10.0..60.0).contains(&ago_s),
        "first window ends {ago_s} s after the replay's start"
    );
    // Both straps went live (a connection that delivers is live, late windows or not).
    for s in ["old", "new"] {
        let live: Vec<Vec<u8>> = rx
            .on(&format!("affectgate/late/{s}/live"))
            .into_iter()
            .map(|m| m.payload)
            .collect();
        assert_eq!(
            live,
            [b"offline".to_vec(), b"online".to_vec(), b"offline".to_vec()],
            "{s}"
        );
    }

    // Restart: the broker's retained `live` says offline from the first moment of the new
    // run (before any window), and a fresh subscriber (Home Assistant restarting) sees it.
    let before = rx.messages().len();
    let stop = Arc::new(tokio::sync::Notify::new());
    let s2 = stop.clone();
    let mut cfg2 = cfg.clone();
    cfg2.sensors = vec![SensorConfig {
        id: "new".into(),
        source: SourceConfig::Synthetic {
            ecg: SyntheticConfig::default(),
        },
    }];
    let gw = tokio::spawn(async move {
        GatewayBuilder::new(cfg2)
            .run(async move { s2.notified().await })
            .await
    });
    assert!(
        rx.wait_for(Duration::from_secs(20), |m| m[before..]
            .iter()
            .any(|m| m.topic == "affectgate/late/new/state"))
            .await,
        "a synthetic window within 20 s"
    );
    let ha = Recorder::start(broker.port, &["affectgate/late/new/live"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.notify_one();
    gw.await.unwrap().unwrap();
    let after: Vec<_> = rx.messages()[before..].to_vec();
    let first_live = after
        .iter()
        .position(|m| m.topic == "affectgate/late/new/live")
        .unwrap();
    let first_state = after
        .iter()
        .position(|m| m.topic == "affectgate/late/new/state")
        .unwrap();
    assert_eq!(
        after[first_live].payload, b"offline",
        "the restart starts not live"
    );
    let online = after
        .iter()
        .position(|m| m.topic == "affectgate/late/new/live" && m.payload == b"online")
        .unwrap();
    assert!(first_live < online && online < first_state);
    assert_eq!(
        ha.messages().first().map(|m| m.payload.clone()),
        Some(b"online".to_vec()),
        "retained while scoring"
    );
}

/// A gateway and sensor id with `_` (ambiguous in the first releases' ids) get unambiguous
/// unique ids and topics; the old configs are deleted before the new ones are written, and
/// the entity ids stay the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_with_underscores_migrate_to_unambiguous_unique_ids() {
    let Some(file) = polar() else { return };
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(broker.port, &dir.path().join("store"), "home_1");
    cfg.sensors = vec![replay("chest_2", &file, false)];
    let rx = Recorder::start(broker.port, &["homeassistant/#"]).await;
    GatewayBuilder::new(cfg)
        .run(std::future::pending())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let msgs = rx.messages();
    let pos = |t: &str| {
        msgs.iter()
            .position(|m| m.topic == t)
            .unwrap_or_else(|| panic!("{t}"))
    };
    let old = "homeassistant/sensor/affectgate_home_1_chest_2_arousal/config";
    let new = "homeassistant/sensor/affectgate_home_1/strap-chest-_2_arousal/config";
    assert!(
        msgs[pos(old)].payload.is_empty(),
        "the old config is deleted"
    );
    assert!(pos(old) < pos(new), "before the new one is written");
    let c = json(&msgs[pos(new)]);
    assert_eq!(c["unique_id"], "affectgate/home_1/chest_2/arousal");
    assert_eq!(c["device"]["identifiers"][0], "affectgate/home_1/chest_2");
    assert_eq!(
        c["default_entity_id"],
        "sensor.affectgate_home_1_chest_2_arousal"
    );
    // 7 old topics emptied, 7 new ones written for the strap.
    let strap_new = msgs
        .iter()
        .filter(|m| m.topic.contains("/strap-chest-_2_") && !m.payload.is_empty())
        .count();
    let strap_old = msgs
        .iter()
        .filter(|m| m.topic.contains("affectgate_home_1_chest_2_") && m.payload.is_empty())
        .count();
    assert_eq!(
        (strap_new, strap_old),
        (7, 7 + 3),
        "7 entities; plus the 3 that moved to the gateway device"
    );
}
