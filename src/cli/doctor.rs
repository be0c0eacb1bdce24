//! `affectgate doctor`: checks everything a gateway needs before it can run, each with the fix
//! when it fails. Exit status 1 when any check fails (a package's post-install or a systemd
//! `ExecStartPre=` can use it).

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;

use affectgate::config::{Config, SourceConfig};

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// The configuration to check against.
    #[arg(long, short, default_value = "plugin.toml")]
    pub config: std::path::PathBuf,
}

/// One check's verdict.
enum Verdict {
    Ok(String),
    Skip(String),
    /// What is wrong, and what to do.
    Fail(String, String),
}

fn print(name: &str, v: &Verdict) {
    match v {
        Verdict::Ok(d) => println!("ok    {name}: {d}"),
        Verdict::Skip(d) => println!("skip  {name}: {d}"),
        Verdict::Fail(d, fix) => {
            println!("FAIL  {name}: {d}");
            println!("      fix: {fix}");
        }
    }
}

pub fn doctor(a: DoctorArgs) -> Result<()> {
    let cfg = match Config::load(&a.config) {
        Ok(c) => {
            print(
                "config",
                &Verdict::Ok(format!("{} is valid", a.config.display())),
            );
            c
        }
        Err(e) => {
            print(
                "config",
                &Verdict::Fail(
                    e.to_string(),
                    "correct the key it names (`affectgate config check` shows the same)".into(),
                ),
            );
            bail!("1 check failed");
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let checks: Vec<(&str, Verdict)> = vec![
        ("clock", clock()),
        ("store", store(&cfg)),
        ("model", model(&cfg)),
        ("onnxruntime", onnxruntime(&cfg)),
        ("broker", rt.block_on(broker(&cfg))),
        ("bluetooth", bluetooth(&cfg)),
        ("fleet", rt.block_on(fleet(&cfg))),
    ];
    let mut failed = 0;
    for (name, v) in &checks {
        print(name, v);
        failed += usize::from(matches!(v, Verdict::Fail(..)));
    }
    if failed > 0 {
        bail!("{failed} check(s) failed");
    }
    println!("all checks passed");
    Ok(())
}

/// A Raspberry Pi has no real-time clock: until NTP has run it may think it is 1970 (or the
/// last shutdown). TLS certificates and the fleet's signed metadata are checked against it.
fn clock() -> Verdict {
    let now = affectgate::time::now_ns();
    // 2026-01-01T00:00:00Z: no build of this gateway is older.
    let floor = 1_767_225_600_000_000_000i64;
    let ceiling = floor + 100 * 365 * 86_400 * 1_000_000_000i64;
    let shown = affectgate::time::rfc3339_s(now);
    if now < floor || now > ceiling {
        Verdict::Fail(
            format!("the system clock says {shown}"),
            "let the clock synchronise: `timedatectl set-ntp true` (TLS and signed model releases need the right date)".into(),
        )
    } else {
        Verdict::Ok(format!("{shown} (UTC)"))
    }
}

fn store(cfg: &Config) -> Verdict {
    let dir = &cfg.store.path;
    let fix_perm = format!(
        "make {} writable by the gateway's user (the package's unit uses StateDirectory=affectgate)",
        dir.display()
    );
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Verdict::Fail(format!("cannot create {}: {e}", dir.display()), fix_perm);
    }
    let probe = dir.join(".doctor-probe");
    let written =
        std::fs::write(&probe, b"probe").and_then(|()| std::fs::File::open(&probe)?.sync_all());
    let _ = std::fs::remove_file(&probe);
    if let Err(e) = written {
        return Verdict::Fail(format!("cannot write in {}: {e}", dir.display()), fix_perm);
    }
    match affectgate::sys::free_bytes(dir) {
        Some(free) if free < 100 << 20 => Verdict::Fail(
            format!("{} has {} MiB free", dir.display(), free >> 20),
            "free at least 100 MiB there (or set store.path to a bigger disk); a full disk stops the gateway".into(),
        ),
        Some(free) => Verdict::Ok(format!(
            "{} writable, {:.1} GiB free (retention keeps at most {:.1} GiB)",
            dir.display(),
            free as f64 / (1u64 << 30) as f64,
            cfg.store.max_bytes as f64 / (1u64 << 30) as f64
        )),
        None => Verdict::Ok(format!("{} writable", dir.display())),
    }
}

fn model(cfg: &Config) -> Verdict {
    let path = &cfg.model.path;
    match affectgate::infer::Model::load(path, &cfg.model.backend) {
        Ok(m) => match affectgate::model::check_feature_names(m.feature_names()) {
            Ok(()) => Verdict::Ok(format!(
                "{} loads on {} (heads {:?}; card sha256 matches)",
                affectgate::gateway::model_version(path, m.sha256()),
                m.backend(),
                m.head_names()
            )),
            Err(e) => Verdict::Fail(format!("{}: {e}", path.display()), "use a model this gateway version serves".into()),
        },
        Err(e) => Verdict::Fail(
            e.to_string(),
            match cfg.model.backend.kind() {
                affectgate::infer::BackendKind::OnnxRuntime => "install ONNX Runtime (`pip install onnxruntime`, or set model.backend.dylib / ORT_DYLIB_PATH), or use backend = \"tract\"; a damaged model: reinstall the package".into(),
                _ => "reinstall the package's model, or point model.path at a model with its .card.toml beside it".into(),
            },
        ),
    }
}

fn onnxruntime(cfg: &Config) -> Verdict {
    let needed = cfg.model.backend.kind() == affectgate::infer::BackendKind::OnnxRuntime;
    match affectgate::infer::find_onnxruntime_dylib() {
        Some(p) => Verdict::Ok(format!("found {}", p.display())),
        None if needed => Verdict::Fail(
            "model.backend = \"onnxruntime\" but no libonnxruntime.so was found".into(),
            "`pip install onnxruntime` (or the distribution's package), set ORT_DYLIB_PATH, or use backend = \"tract\"".into(),
        ),
        None => Verdict::Skip("not installed; the tract backend serves (ONNX Runtime is optional and faster)".into()),
    }
}

async fn broker(cfg: &Config) -> Verdict {
    if cfg.mqtt.host.is_empty() {
        return Verdict::Fail(
            "mqtt.host is empty".into(),
            "set [mqtt] host (and port, username, password) to the broker Home Assistant uses"
                .into(),
        );
    }
    let tls = match &cfg.mqtt.tls {
        Some(t) => match affectgate::mqtt::TlsFiles::load(t) {
            Ok(f) => Some(f),
            Err(e) => {
                return Verdict::Fail(e.to_string(), "fix the [mqtt.tls] file it names".into())
            }
        },
        None => None,
    };
    let id = format!("affectgate-doctor-{}", std::process::id());
    match affectgate::mqtt::probe(&cfg.mqtt, tls.as_ref(), &id, Duration::from_secs(5)).await {
        Ok(()) => Verdict::Ok(format!(
            "connected to {}:{}{}{}",
            cfg.mqtt.host,
            cfg.mqtt.port,
            if tls.is_some() { " over TLS" } else { "" },
            if cfg.mqtt.username.is_some() {
                " with credentials"
            } else {
                ""
            }
        )),
        Err((what, fix)) => Verdict::Fail(what, fix),
    }
}

fn bluetooth(cfg: &Config) -> Verdict {
    let wanted: Vec<Option<String>> = cfg
        .sensors
        .iter()
        .filter_map(|s| match &s.source {
            SourceConfig::Ble { ble } => Some(ble.adapter.clone()),
            _ => None,
        })
        .collect();
    if wanted.is_empty() {
        return Verdict::Skip("no BLE sensor configured".into());
    }
    use affectgate::source::ble::scan;
    let blocked = scan::rfkill_blocked();
    if let Some((name, hard)) = blocked.first() {
        return Verdict::Fail(
            format!(
                "the Bluetooth radio {name} is switched off (rfkill, {})",
                if *hard { "hard" } else { "soft" }
            ),
            if *hard {
                "turn on the hardware radio switch".into()
            } else {
                "`sudo rfkill unblock bluetooth`".to_string()
            },
        );
    }
    let adapters = match scan::adapters() {
        Ok(a) => a,
        Err(e) => {
            return Verdict::Fail(
                e.to_string(),
                "start BlueZ (`sudo systemctl enable --now bluetooth`) and run the gateway as a user in group `bluetooth`".into(),
            )
        }
    };
    let mut ok = Vec::new();
    for w in wanted {
        let found = match &w {
            Some(name) => adapters.iter().find(|a| &a.name == name),
            None => adapters.first(),
        };
        match found {
            None => {
                return Verdict::Fail(
                    format!(
                        "no adapter {} (BlueZ lists: {})",
                        w.as_deref().unwrap_or("at all"),
                        adapters.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                    "plug in the adapter, or set the sensor's `adapter` to one `bluetoothctl list` shows".into(),
                )
            }
            Some(a) if !a.powered => {
                return Verdict::Fail(
                    format!("adapter {} ({}) is powered off", a.name, a.address),
                    format!("`bluetoothctl power on` (for {}), and AutoEnable=true in /etc/bluetooth/main.conf", a.name),
                )
            }
            Some(a) => ok.push(format!("{} ({}) powered", a.name, a.address)),
        }
    }
    ok.dedup();
    Verdict::Ok(ok.join(", "))
}

async fn fleet(cfg: &Config) -> Verdict {
    if !cfg.fleet.enabled {
        return Verdict::Skip("fleet updates are off ([fleet] enabled = false)".into());
    }
    use affectgate::fleet::client;
    let loaded = match client::urls_for(&cfg.fleet.repository) {
        Ok((m, t)) => {
            client::load_urls(
                &cfg.fleet.root,
                m,
                t,
                None,
                tough::ExpirationEnforcement::Safe,
            )
            .await
        }
        Err(e) => Err(e),
    };
    match loaded {
        Ok(r) => Verdict::Ok(format!(
            "{} verified from {} (targets v{}, timestamp expires {})",
            cfg.fleet.repository,
            cfg.fleet.root.display(),
            r.targets().signed.version,
            r.timestamp().signed.expires
        )),
        Err(e) => Verdict::Fail(
            e.to_string(),
            "check fleet.repository (reachable from here?) and that fleet.root is the repository's root.json; an expired timestamp means its operator's daily `refresh` is not running".into(),
        ),
    }
}
