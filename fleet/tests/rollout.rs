//! Rollout over a real Mosquitto: the plan is retained for every gateway to read; statuses
//! are retained per gateway; once the failures for the release reach the threshold, `check`
//! halts the plan, and a gateway reading it afterwards may not install.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use affectgate_fleet::mqtt;
use affectgate_fleet::plan::{status_topic, GatewayStatus, RolloutPlan};
use affectgate_fleet::rollout;

struct Broker(Child, u16);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mosquitto() -> Option<Broker> {
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(bin) = bin else {
        assert!(
            std::env::var_os("AFFECTGATE_REQUIRE_MOSQUITTO").is_none(),
            "mosquitto is required (AFFECTGATE_REQUIRE_MOSQUITTO) but not installed"
        );
        eprintln!("skipped: mosquitto not installed");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args(["-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "mosquitto did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Broker(child, port))
}

fn status(g: &str, state: &str) -> Vec<u8> {
    serde_json::to_vec(&GatewayStatus {
        gateway: g.into(),
        serving: Some("arousal-v2".into()),
        target: Some("arousal-v3".into()),
        state: state.into(),
        reason: (state != "succeeded").then(|| "self-test: output NaN".to_string()),
        at_s: 1_700_000_000,
    })
    .unwrap()
}

#[tokio::test]
async fn failures_at_the_threshold_halt_the_retained_plan() {
    let Some(b) = mosquitto() else { return };
    let port = b.1;
    let plan = RolloutPlan {
        channel: "stable".into(),
        release: "arousal-v3".into(),
        canaries: vec!["lab-1".into(), "lab-2".into()],
        waves: vec![10, 50, 100],
        wave_delay_s: 600,
        max_failures: 2,
        started_s: 1_700_000_000,
        halted: None,
        jitter_s: 0,
    };
    // A bad plan is refused naming the field, and nothing is published.
    let mut bad = plan.clone();
    bad.waves = vec![10, 50];
    let e = rollout::start("127.0.0.1", port, &bad).await.unwrap_err();
    assert!(e.to_string().contains("waves"), "{e}");
    assert_eq!(
        rollout::current("127.0.0.1", port, "stable").await.unwrap(),
        None
    );

    rollout::start("127.0.0.1", port, &plan).await.unwrap();
    assert_eq!(
        rollout::current("127.0.0.1", port, "stable").await.unwrap(),
        Some(plan.clone())
    );
    // The canaries report: one failed, one succeeded. Below the threshold: still running.
    mqtt::publish_retained(
        "127.0.0.1",
        port,
        &status_topic("lab-1"),
        status("lab-1", "failed"),
    )
    .await
    .unwrap();
    mqtt::publish_retained(
        "127.0.0.1",
        port,
        &status_topic("lab-2"),
        status("lab-2", "succeeded"),
    )
    .await
    .unwrap();
    let (p, st) = rollout::check("127.0.0.1", port, "stable").await.unwrap();
    assert_eq!(st.len(), 2);
    assert_eq!(p.unwrap().halted, None);
    // A gateway of wave 1 rolls back: 2 of max 2 → halted, retained for everyone.
    let g = (0..)
        .map(|i| format!("home-{i}"))
        .find(|id| plan.wave_of(id) == 1)
        .unwrap();
    mqtt::publish_retained(
        "127.0.0.1",
        port,
        &status_topic(&g),
        status(&g, "rolled_back"),
    )
    .await
    .unwrap();
    let (p, _) = rollout::check("127.0.0.1", port, "stable").await.unwrap();
    let why = p.unwrap().halted.unwrap();
    assert!(
        why.contains("2 of max 2") && why.contains("lab-1") && why.contains(&g),
        "{why}"
    );
    let seen = rollout::current("127.0.0.1", port, "stable")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.halted.as_deref(), Some(why.as_str()));
    // Later waves never start under it.
    let late = (0..)
        .map(|i| format!("home-{i}"))
        .find(|id| plan.wave_of(id) == 3)
        .unwrap();
    assert!(!seen.may_install(&late, u64::MAX));
    assert!(
        plan.may_install(&late, plan.started_s + 3 * 600),
        "it would have, unhalted"
    );
}
