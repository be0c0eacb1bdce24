//! The operator's rollout commands over the broker: start a plan, halt it, and read the
//! fleet's statuses — halting the rollout when its failures reach the threshold.

use std::time::Duration;

use crate::mqtt;
use crate::plan::{plan_topic, GatewayStatus, RolloutPlan};
use crate::FleetError;

/// Publish `plan` (checked) as the channel's retained plan.
pub async fn start(host: &str, port: u16, plan: &RolloutPlan) -> Result<(), FleetError> {
    plan.validate()
        .map_err(|e| FleetError::Invalid(format!("rollout plan: {e}")))?;
    let bytes = serde_json::to_vec(plan).expect("plan serialises");
    mqtt::publish_retained(host, port, &plan_topic(&plan.channel), bytes).await
}

/// The channel's current plan, if any.
pub async fn current(
    host: &str,
    port: u16,
    channel: &str,
) -> Result<Option<RolloutPlan>, FleetError> {
    let topic = plan_topic(channel);
    let msgs = mqtt::retained(host, port, &topic, Duration::from_millis(500)).await?;
    match msgs.into_iter().find(|(t, _)| *t == topic) {
        None => Ok(None),
        Some((_, p)) => serde_json::from_slice(&p)
            .map(Some)
            .map_err(|e| FleetError::Invalid(format!("{topic}: not a rollout plan: {e}"))),
    }
}

/// Halt the channel's rollout, saying why.
pub async fn halt(
    host: &str,
    port: u16,
    channel: &str,
    reason: &str,
) -> Result<RolloutPlan, FleetError> {
    let mut plan = current(host, port, channel).await?.ok_or_else(|| {
        FleetError::Invalid(format!("{}: no rollout plan to halt", plan_topic(channel)))
    })?;
    plan.halted = Some(reason.to_string());
    start(host, port, &plan).await?;
    Ok(plan)
}

/// Resume a halted rollout (after the cause is fixed or judged harmless). Failures already
/// reported still count, so the threshold must be raised (`raise_to`) unless the failed
/// gateways have reported again; otherwise the next `check` halts it again at once.
pub async fn resume(
    host: &str,
    port: u16,
    channel: &str,
    raise_to: Option<u32>,
) -> Result<RolloutPlan, FleetError> {
    let mut plan = current(host, port, channel).await?.ok_or_else(|| {
        FleetError::Invalid(format!(
            "{}: no rollout plan to resume",
            plan_topic(channel)
        ))
    })?;
    plan.halted = None;
    if let Some(n) = raise_to {
        plan.max_failures = n;
    }
    start(host, port, &plan).await?;
    Ok(plan)
}

/// Every gateway's retained status (`affectgate/+/fleet`); unreadable ones are skipped with
/// their topic in the second list.
pub async fn statuses(
    host: &str,
    port: u16,
) -> Result<(Vec<GatewayStatus>, Vec<String>), FleetError> {
    let msgs = mqtt::retained(host, port, "affectgate/+/fleet", Duration::from_millis(500)).await?;
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (t, p) in msgs {
        match serde_json::from_slice::<GatewayStatus>(&p) {
            Ok(s) => ok.push(s),
            Err(_) => bad.push(t),
        }
    }
    ok.sort_by(|a, b| a.gateway.cmp(&b.gateway));
    Ok((ok, bad))
}

/// Read the statuses and, when the failures for the plan's release reach its threshold,
/// halt the plan. Returns the plan as it now stands and the statuses.
pub async fn check(
    host: &str,
    port: u16,
    channel: &str,
) -> Result<(Option<RolloutPlan>, Vec<GatewayStatus>), FleetError> {
    let (st, _) = statuses(host, port).await?;
    let Some(plan) = current(host, port, channel).await? else {
        return Ok((None, st));
    };
    if let Some(why) = plan.halt_reason(&st) {
        let halted = halt(host, port, channel, &why).await?;
        return Ok((Some(halted), st));
    }
    Ok((Some(plan), st))
}
