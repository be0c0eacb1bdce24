//! MQTT inputs (`affectgate/<gw>/<sensor>/label`, `affectgate/<gw>/cmd/<name>`):
//! `parse_delivery`. Byte 0 picks the retain flag (bit 7) and the topic (low bits: one of
//! ours (9), or — when 0 — a topic taken from the input up to the first NUL); the rest is the
//! payload. A label that parses must keep the promises `LabelReport` documents.
#![no_main]
use affectgate::mqtt::inputs::{parse_delivery, Input, MAX_FUTURE_NS, MAX_SPAN_NS};
use libfuzzer_sys::fuzz_target;

const GATEWAY: &str = "gw1";
/// 2026-12-01T00:00:00Z: a fixed "now", as the MQTT loop passes the wall clock.
const NOW_NS: i64 = 1_796_083_200_000_000_000;
const TOPICS: [&str; 9] = [
    "affectgate/gw1/h10/label",
    "affectgate/gw1/cmd/retrain",
    "affectgate/gw1/cmd/reload",
    "affectgate/gw1/cmd/flush_outbox",
    "affectgate/gw1/cmd/rollback",
    "affectgate/gw1/cmd/promote",
    "affectgate/gw1/other/label",
    "affectgate/gw1/cmd/label",
    "affectgate/gw2/h10/label",
];

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let retained = head & 0x80 != 0;
    let pick = usize::from(head & 0x7F) % (TOPICS.len() + 1);
    let owned;
    let (topic, payload): (&str, &[u8]) = if pick == 0 {
        let i = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        owned = String::from_utf8_lossy(&rest[..i]).into_owned();
        (&owned, rest.get(i + 1..).unwrap_or(&[]))
    } else {
        (TOPICS[pick - 1], rest)
    };
    let known = ["h10".to_string(), "bench_1".to_string()];
    match parse_delivery(GATEWAY, topic, payload, retained, NOW_NS, &known) {
        Ok(Some(Input::Label { sensor, label })) => {
            assert!(known.contains(&sensor));
            assert!(!label.values.is_empty());
            for (name, v) in &label.values {
                assert!((0.0..=1.0).contains(v), "{name} = {v} not normalised");
            }
            assert!(label.scale.0 < label.scale.1, "scale {:?}", label.scale);
            assert!(label.from_ns < label.to_ns, "span {}..{}", label.from_ns, label.to_ns);
            assert!(i128::from(label.to_ns) - i128::from(label.from_ns) <= i128::from(MAX_SPAN_NS));
            assert!(label.to_ns <= NOW_NS + MAX_FUTURE_NS);
        }
        Ok(Some(Input::Promote { id })) => {
            assert!(topic.ends_with("/cmd/promote"));
            assert!(!id.is_empty() && id.len() <= 64);
            assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'), "{id:?}");
        }
        Ok(_) => {}
        Err(e) => {
            assert_eq!(e.topic(), topic);
            let _ = e.to_json();
        }
    }
});
