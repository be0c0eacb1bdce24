//! `affectgate-fleet`: the operator's tool for signed model releases (see docs/FLEET.md).

use std::path::PathBuf;
use std::process::ExitCode;

use affectgate_fleet::{client, repo};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "affectgate-fleet",
    version,
    about = "Signed model releases for fleets of affectgate gateways"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the role keys and an empty, signed TUF repository.
    Init {
        /// Repository folder (serve it over HTTP, or copy it).
        #[arg(long)]
        repo: PathBuf,
        /// Where the private keys go (keep the root key offline afterwards).
        #[arg(long)]
        keys: PathBuf,
    },
    /// Add a release (its files become signed targets `<name>/<file>`).
    Release {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long)]
        keys: PathBuf,
        /// A release folder made by `affectgate model release` (every file in it is signed;
        /// the name comes from its release.json).
        #[arg(long, conflicts_with_all = ["name", "files"])]
        from: Option<PathBuf>,
        /// Release name, e.g. `arousal-v3` (with explicit files).
        #[arg(long, required_unless_present = "from")]
        name: Option<String>,
        /// The release's files, release.json among them.
        files: Vec<PathBuf>,
    },
    /// Fleet-wide rollback: re-publish an earlier release's files as a new, higher release
    /// (`--name`), and with `--broker` start its rollout to every gateway at once.
    Rollback {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long)]
        keys: PathBuf,
        /// The release to go back to.
        #[arg(long)]
        to: String,
        /// Name of the new release (e.g. `arousal-v4-rollback`).
        #[arg(long)]
        name: String,
        /// Publish the rollout plan (all gateways, no waves) on this broker.
        #[arg(long)]
        broker: Option<String>,
        #[arg(long, default_value = "stable")]
        channel: String,
        #[arg(long, default_value_t = 3)]
        max_failures: u32,
    },
    /// Re-sign the timestamp (for cron; needs only the timestamp key).
    Refresh {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long)]
        keys: PathBuf,
    },
    /// Renew targets, snapshot and timestamp (same targets, new expiries): monthly from cron,
    /// so a repository stays valid without a release (needs the targets and snapshot keys).
    Renew {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long)]
        keys: PathBuf,
    },
    /// Replace the root key: root vN+1 signed by the old root key and the new one (gateways
    /// that pinned vN follow it). The old key is kept as `root-vN.pk8`.
    RotateRoot {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long)]
        keys: PathBuf,
    },
    /// Download and verify a release into a new folder (whole or not at all), from a pinned
    /// root — what a gateway does before its self-test.
    Fetch {
        /// Repository folder or URL.
        #[arg(long)]
        repo: String,
        #[arg(long)]
        root: PathBuf,
        /// Release name.
        #[arg(long)]
        name: String,
        /// The folder to create.
        #[arg(long)]
        out: PathBuf,
    },
    /// Start a rollout: publish the channel's plan (retained) on the broker.
    Rollout {
        /// MQTT broker, host:port.
        #[arg(long, default_value = "127.0.0.1:1883")]
        broker: String,
        #[arg(long, default_value = "stable")]
        channel: String,
        /// Release name in the repository.
        #[arg(long)]
        release: String,
        /// Canary gateway ids, comma-separated.
        #[arg(long, value_delimiter = ',')]
        canary: Vec<String>,
        /// Cumulative percentages per wave.
        #[arg(long, value_delimiter = ',', default_value = "10,50,100")]
        waves: Vec<u8>,
        /// Seconds between waves.
        #[arg(long, default_value_t = 3600)]
        wave_delay: u64,
        /// Failed installs that halt the rollout.
        #[arg(long, default_value_t = 1)]
        max_failures: u32,
        /// Spread each wave's starts over this many seconds (large fleets).
        #[arg(long, default_value_t = 0)]
        jitter: u64,
    },
    /// Halt the channel's rollout (gateways that have not installed yet never will).
    Halt {
        #[arg(long, default_value = "127.0.0.1:1883")]
        broker: String,
        #[arg(long, default_value = "stable")]
        channel: String,
        #[arg(long, default_value = "halted by an operator")]
        reason: String,
    },
    /// Resume a halted rollout.
    Resume {
        #[arg(long, default_value = "127.0.0.1:1883")]
        broker: String,
        #[arg(long, default_value = "stable")]
        channel: String,
        /// New failure threshold (the failures already reported still count).
        #[arg(long)]
        max_failures: Option<u32>,
    },
    /// Every gateway's status; halts the rollout when its failures reach the threshold.
    Status {
        #[arg(long, default_value = "127.0.0.1:1883")]
        broker: String,
        #[arg(long, default_value = "stable")]
        channel: String,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Verify the repository from a pinned root.json as a gateway would, and list its targets.
    Verify {
        /// The repository folder, or its URL (`http://host/repo/`: metadata/ and targets/
        /// below it).
        #[arg(long)]
        repo: String,
        /// The root.json gateways pin (default: the folder's own; required with a URL).
        #[arg(long)]
        root: Option<PathBuf>,
    },
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Every file of a release folder, and the name its release.json gives.
fn release_folder(
    dir: &std::path::Path,
) -> Result<(String, Vec<PathBuf>), affectgate_fleet::FleetError> {
    use affectgate_fleet::FleetError;
    let mf = dir.join(affectgate_fleet::release::MANIFEST);
    let text = std::fs::read(&mf).map_err(|e| FleetError::io(&mf, e))?;
    let m: affectgate_fleet::release::ReleaseManifest = serde_json::from_slice(&text)
        .map_err(|e| FleetError::Invalid(format!("{}: {e}", mf.display())))?;
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| FleetError::io(dir, e))? {
        let p = e.map_err(|e| FleetError::io(dir, e))?.path();
        if p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok((m.name, files))
}

fn split_broker(b: &str) -> Result<(String, u16), affectgate_fleet::FleetError> {
    let (h, p) = b.rsplit_once(':').unwrap_or((b, "1883"));
    let port = p.parse().map_err(|_| {
        affectgate_fleet::FleetError::Invalid(format!("--broker {b}: expected host:port"))
    })?;
    Ok((h.to_string(), port))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Init { repo, keys } => repo::init(&repo, &keys, repo::Expiry::default())
            .await
            .map(|()| {
                println!(
                    "repository {} created; pin {} on the gateways; keys in {} (move root.pk8 offline)",
                    repo.display(),
                    repo::root_path(&repo).display(),
                    keys.display()
                )
            }),
        Cmd::Release { repo, keys, from, name, files } => {
            let picked = match (from, name) {
                (Some(dir), _) => release_folder(&dir),
                (None, Some(name)) => Ok((name, files)),
                (None, None) => Err(affectgate_fleet::FleetError::Invalid("--from or --name".into())),
            };
            match picked {
                Err(e) => Err(e),
                Ok((name, files)) => repo::release(&repo, &keys, &name, &files, repo::Expiry::default())
                    .await
                    .map(|names| {
                        for n in names {
                            println!("signed {n}");
                        }
                    }),
            }
        }
        Cmd::Rollback { repo, keys, to, name, broker, channel, max_failures } => {
            match repo::rollback(&repo, &keys, &to, &name, repo::Expiry::default()).await {
                Err(e) => Err(e),
                Ok(m) => {
                    println!("release {} (version {}) re-publishes {to}", m.name, m.version);
                    match broker.map(|b| split_broker(&b)) {
                        None => Ok(()),
                        Some(Err(e)) => Err(e),
                        Some(Ok((h, p))) => {
                            let plan = affectgate_fleet::plan::RolloutPlan {
                                channel,
                                release: m.name.clone(),
                                canaries: vec![],
                                waves: vec![100],
                                wave_delay_s: 0,
                                max_failures,
                                started_s: now_s(),
                                halted: None,
                                jitter_s: 0,
                            };
                            affectgate_fleet::rollout::start(&h, p, &plan)
                                .await
                                .map(|()| println!("rollout of {} to every gateway on {} started", plan.release, plan.channel))
                        }
                    }
                }
            }
        }
        Cmd::Refresh { repo, keys } => repo::refresh(&repo, &keys, repo::Expiry::default())
            .await
            .map(|v| println!("timestamp v{v} signed, valid for 1 day")),
        Cmd::Renew { repo, keys } => repo::renew(&repo, &keys, repo::Expiry::default())
            .await
            .map(|v| println!("targets v{v}, snapshot and timestamp renewed (targets and snapshot valid for 90 days)")),
        Cmd::RotateRoot { repo, keys } => repo::rotate_root(&repo, &keys, repo::Expiry::default())
            .await
            .map(|v| println!("root v{v} written; gateways that pinned an older root follow it")),
        Cmd::Fetch { repo, root, name, out } => {
            let loaded = match client::urls_for(&repo) {
                Ok((m, t)) => client::load_urls(&root, m, t, None, tough::ExpirationEnforcement::Safe).await,
                Err(e) => Err(e),
            };
            match loaded {
                Ok(r) => client::fetch_release(&r, &name, &out).await.map(|files| {
                    for f in files {
                        println!("{}", out.join(f).display());
                    }
                }),
                Err(e) => Err(e),
            }
        }
        Cmd::Rollout { broker, channel, release, canary, waves, wave_delay, max_failures, jitter } => {
            match split_broker(&broker) {
                Err(e) => Err(e),
                Ok((h, p)) => {
                    let plan = affectgate_fleet::plan::RolloutPlan {
                        channel,
                        release,
                        canaries: canary,
                        waves,
                        wave_delay_s: wave_delay,
                        max_failures,
                        started_s: now_s(),
                        halted: None,
                        jitter_s: jitter,
                    };
                    affectgate_fleet::rollout::start(&h, p, &plan).await.map(|()| {
                        println!("rollout of {} on {} started", plan.release, plan.channel)
                    })
                }
            }
        }
        Cmd::Halt { broker, channel, reason } => match split_broker(&broker) {
            Err(e) => Err(e),
            Ok((h, p)) => affectgate_fleet::rollout::halt(&h, p, &channel, &reason)
                .await
                .map(|plan| println!("rollout of {} on {channel} halted", plan.release)),
        },
        Cmd::Resume { broker, channel, max_failures } => match split_broker(&broker) {
            Err(e) => Err(e),
            Ok((h, p)) => affectgate_fleet::rollout::resume(&h, p, &channel, max_failures)
                .await
                .map(|plan| println!("rollout of {} on {channel} resumed (max failures {})", plan.release, plan.max_failures)),
        },
        Cmd::Status { broker, channel, json } => match split_broker(&broker) {
            Err(e) => Err(e),
            Ok((h, p)) => affectgate_fleet::rollout::check(&h, p, &channel).await.map(|(plan, st)| {
                if json {
                    println!("{}", serde_json::json!({ "plan": plan, "gateways": st }));
                    return;
                }
                match &plan {
                    None => println!("no rollout on {channel}"),
                    Some(p) => println!(
                        "{channel}: {} — {}",
                        p.release,
                        p.halted.as_deref().map_or("running".to_string(), |h| format!("HALTED: {h}"))
                    ),
                }
                println!("{:<24} {:<14} {:<14} {:<12} {:<6} reason", "gateway", "serving", "target", "state", "wave");
                for s in st {
                    let wave = plan.as_ref().map_or("-".to_string(), |p| p.wave_of(&s.gateway).to_string());
                    println!(
                        "{:<24} {:<14} {:<14} {:<12} {:<6} {}",
                        s.gateway,
                        s.serving.as_deref().unwrap_or("-"),
                        s.target.as_deref().unwrap_or("-"),
                        s.state,
                        wave,
                        s.reason.as_deref().unwrap_or("")
                    );
                }
            }),
        },
        Cmd::Verify { repo, root } => {
            let loaded = if repo.starts_with("http://") || repo.starts_with("https://") {
                match (root, client::urls_for_base(&repo)) {
                    (Some(root), Ok((m, t))) => {
                        client::load_urls(&root, m, t, None, tough::ExpirationEnforcement::Safe).await
                    }
                    (None, _) => Err(affectgate_fleet::FleetError::Invalid(
                        "--root: a URL needs the pinned root.json (the one the gateways have)".into(),
                    )),
                    (_, Err(e)) => Err(e),
                }
            } else {
                let dir = PathBuf::from(&repo);
                let root = root.unwrap_or_else(|| repo::root_path(&dir));
                client::load(&root, &dir, None, tough::ExpirationEnforcement::Safe).await
            };
            match loaded {
                Ok(r) => {
                    println!(
                        "ok: targets v{}, snapshot v{}, timestamp v{} (expires {})",
                        r.targets().signed.version,
                        r.snapshot().signed.version,
                        r.timestamp().signed.version,
                        r.timestamp().signed.expires
                    );
                    let mut names: Vec<_> = r.targets().signed.targets.keys().map(|n| n.raw().to_string()).collect();
                    names.sort();
                    for n in names {
                        println!("  {n}");
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("affectgate-fleet: {e}");
            ExitCode::FAILURE
        }
    }
}
