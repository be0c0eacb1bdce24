//! `affectgate model list|show|promote|rollback`: the gateway's model registry from the
//! command line. Promotion and rollback only edit the registry; a running gateway notices
//! within seconds and swaps its serving model between two inference batches.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use affectgate::config::Config;
use affectgate::model::sha256_hex;
use affectgate::retrain::registry::{Registry, SHIPPED};

#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Configuration file (locates `retrain.models_dir` and the shipped model).
    #[arg(long, short, global = true, default_value = "plugin.toml")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub what: ModelCmd,
}

#[derive(Subcommand, Debug)]
pub enum ModelCmd {
    /// Every model: id, status (serving / previous / candidate / rejected / retired), parent.
    List,
    /// One model's registry entry (gate metrics, decision) and model card.
    Show { id: String },
    /// Serve this model (a passed candidate, a retired one, or `shipped`).
    Promote { id: String },
    /// Serve the previous model again.
    Rollback,
    /// Build a model's replay pack (`<model>.replay.bin`: a sample of its pretraining windows
    /// and its heads' labelled training set), which on-gateway retraining needs.
    Pack {
        /// The model the pack belongs to (written beside it).
        #[arg(long)]
        model: PathBuf,
        /// Labelled manifest the model's heads were trained on.
        #[arg(long)]
        manifest: PathBuf,
        /// Recordings (files or folders) the encoder was pretrained on.
        #[arg(long, num_args = 1.., required = true)]
        unlabelled: Vec<PathBuf>,
        /// Pretraining windows kept in the pack.
        #[arg(long, default_value_t = 300)]
        max_pretext: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Pack a model into a release folder for the fleet (model, card, pretext network and
    /// replay pack when beside it, golden self-test windows, release.json); sign it with
    /// `affectgate-fleet release --from <out>`.
    Release {
        /// The model (its card beside it).
        #[arg(long)]
        model: PathBuf,
        /// Release name (its folder in the repository), e.g. `arousal-v3`.
        #[arg(long)]
        name: String,
        /// Release number: above every earlier release of the channel.
        #[arg(long)]
        version: u64,
        #[arg(long, default_value = "stable")]
        channel: String,
        /// Oldest gateway version that may install it (default: this build's).
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        min_gateway: String,
        /// One line shown in Home Assistant's update entity.
        #[arg(long, default_value = "")]
        summary: String,
        /// The folder to create.
        #[arg(long)]
        out: PathBuf,
    },
}

fn open(config: &Path) -> Result<(Config, Registry, PathBuf)> {
    // `Config::load` has resolved relative paths against the config file's directory.
    let cfg = Config::load(config)?;
    let registry = Registry::open(&cfg.retrain.models_dir);
    let shipped = cfg.model.path.clone();
    Ok((cfg, registry, shipped))
}

pub fn model(a: ModelArgs) -> Result<()> {
    if let ModelCmd::Pack {
        model,
        manifest,
        unlabelled,
        max_pretext,
        seed,
    } = &a.what
    {
        return pack(model, manifest, unlabelled, *max_pretext, *seed);
    }
    if let ModelCmd::Release {
        model,
        name,
        version,
        channel,
        min_gateway,
        summary,
        out,
    } = &a.what
    {
        let spec = affectgate::fleet::pack::PackSpec {
            model: model.clone(),
            name: name.clone(),
            version: *version,
            channel: channel.clone(),
            min_gateway: min_gateway.clone(),
            summary: summary.clone(),
        };
        let m = affectgate::fleet::pack::pack_release(&spec, out)?;
        println!(
            "release {} (version {}, channel {}, gateways ≥ {}) packed in {}; sign it with: affectgate-fleet release --repo <repo> --keys <keys> --from {}",
            m.name,
            m.version,
            m.channel,
            m.min_gateway,
            out.display(),
            out.display()
        );
        return Ok(());
    }
    let (_, registry, shipped) = open(&a.config)?;
    match a.what {
        ModelCmd::List => {
            let (current, previous) = registry.serving()?;
            let shipped_status = match (&current, &previous) {
                (None, _) => "serving",
                (_, Some(p)) if p == SHIPPED => "previous",
                _ => "available",
            };
            let sha = std::fs::read(&shipped)
                .map(|b| sha256_hex(&b)[..8].to_string())
                .unwrap_or_else(|e| format!("unreadable: {e}"));
            println!(
                "{:<8}  {:<10}  {:<20}  {:<8}  {:<8}  NOTE",
                "ID", "STATUS", "CREATED", "PARENT", "SHA256"
            );
            println!(
                "{:<8}  {:<10}  {:<20}  {:<8}  {:<8}  {}",
                SHIPPED,
                shipped_status,
                "-",
                "-",
                sha,
                shipped.display()
            );
            for e in registry.list()? {
                println!(
                    "{:<8}  {:<10}  {:<20}  {:<8}  {:<8}  {}",
                    e.id,
                    e.status,
                    e.created.chars().take(20).collect::<String>(),
                    e.parent,
                    &e.sha256[..e.sha256.len().min(8)],
                    e.reason
                );
            }
        }
        ModelCmd::Show { id } => {
            if id == SHIPPED {
                println!("shipped model: {}", shipped.display());
                let card = affectgate::model::card::ModelCard::path_for(&shipped);
                print!(
                    "{}",
                    std::fs::read_to_string(&card)
                        .with_context(|| format!("reading {}", card.display()))?
                );
                return Ok(());
            }
            let e = registry.get(&id)?;
            println!("{}", serde_json::to_string_pretty(&e)?);
            let card = registry.model_path(&id).with_extension("card.toml");
            if let Ok(text) = std::fs::read_to_string(&card) {
                println!("\n# {}\n{text}", card.display());
            }
        }
        ModelCmd::Promote { id } => {
            registry.promote(&id)?;
            println!("{id} now serves (a running gateway swaps to it within seconds); `affectgate model rollback` undoes this");
        }
        ModelCmd::Rollback => {
            let back = registry.rollback()?;
            println!("rolled back: {back} serves again");
        }
        ModelCmd::Pack { .. } | ModelCmd::Release { .. } => unreachable!("handled above"),
    }
    Ok(())
}

fn pack(
    model: &Path,
    manifest: &Path,
    unlabelled: &[PathBuf],
    max_pretext: usize,
    seed: u64,
) -> Result<()> {
    use affectgate::dsp::PreprocessConfig;
    use affectgate::learn::dataset;
    use affectgate::model::replay::ReplayPack;
    let pre = PreprocessConfig::default();
    let labelled = dataset::labelled_from_manifest(manifest, &pre)?;
    let files = dataset::find_recordings(unlabelled)?;
    let pretext = dataset::unlabelled_from_paths(&files, &pre)?;
    let pack = affectgate::learn::round::build_pack(&labelled, &pretext, max_pretext, seed);
    let out = ReplayPack::path_for(model);
    pack.save(&out)?;
    let bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}: {} pretext windows, {} labelled windows ({} subjects), heads {:?}, {:.1} MB",
        out.display(),
        pack.pretext.len(),
        pack.labelled.len(),
        pack.labelled_subjects().len(),
        pack.head_names,
        bytes as f64 / 1e6
    );
    Ok(())
}
