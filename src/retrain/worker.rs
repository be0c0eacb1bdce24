//! A retraining round in its own process, so that nothing a round does can take the gateway
//! down with it.
//!
//! Why a process and not a thread: a Rust program cannot survive an allocation failure (it
//! aborts), and the kernel's OOM killer picks processes, not threads. A round is the one big,
//! bursty allocator on a gateway; in its own process under a hard `RLIMIT_DATA` of
//! `max_memory_mb`, running out of memory kills the round — the gateway sees the worker die,
//! logs and publishes why, and keeps scoring. The same boundary gives the round a whole-process
//! nice level and thread count, and lets a shutdown or a blown budget end it at once (its
//! checkpoints are atomic files, so a kill is just a power cut for it).
//!
//! The split: the gateway *stages* the round ([`round::stage`], which needs the store that
//! only the gateway may open) and spawns `affectgate retrain-worker --spec <json>`, which runs
//! [`round::run_staged`] and reports on stdout, one JSON [`WorkerMessage`] per line. Its
//! stderr (logs) is forwarded to the gateway's stderr, and the last lines are kept so a crash
//! can be explained ("memory allocation of … bytes failed"). The worker dies with the gateway
//! (`PR_SET_PDEATHSIG`), so a killed gateway never leaves a round running.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use super::registry::Registry;
use super::round::{self, RoundReport};
use crate::infer::Backend;
use crate::learn::round::RoundConfig;

/// Everything the worker process needs (passed as one JSON argument).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub models_dir: PathBuf,
    pub shipped: PathBuf,
    /// The serving backend (for the serving gate), exactly as the gateway serves with.
    pub backend: Backend,
    pub round: RoundConfig,
    pub threads: usize,
    /// Wall-clock budget: the round stops itself at the next epoch boundary after it.
    pub budget_s: f64,
}

/// One line of the worker's stdout.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerMessage {
    Progress { stage: String, fraction: f32 },
    Done { report: Box<RoundReport> },
    Failed { message: String },
}

fn emit(m: &WorkerMessage) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", serde_json::to_string(m).expect("serialises"));
    let _ = out.flush();
}

/// The worker process's main: run the staged round, report, return the exit code.
pub fn worker_main(spec: &WorkerSpec) -> i32 {
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(spec.threads.max(1))
        .thread_name(|i| format!("affectgate-retrain-{i}"))
        .build_global();
    let registry = Registry::open(&spec.models_dir);
    let t0 = Instant::now();
    let budget = spec.budget_s;
    let should_stop = || -> Option<String> {
        (t0.elapsed().as_secs_f64() > budget).then(|| {
            format!(
                "wall-clock budget of {:.0} min spent (the round continues from its checkpoint next time)",
                budget / 60.0
            )
        })
    };
    let res = round::run_staged(
        &registry,
        &spec.shipped,
        &spec.backend,
        &spec.round,
        &mut |stage, fraction| {
            emit(&WorkerMessage::Progress {
                stage: stage.to_string(),
                fraction,
            })
        },
        &should_stop,
    );
    match res {
        Ok(mut report) => {
            report.peak_rss_mib = crate::sys::peak_rss_mib();
            emit(&WorkerMessage::Done {
                report: Box::new(report),
            });
            0
        }
        Err(e) => {
            emit(&WorkerMessage::Failed {
                message: e.to_string(),
            });
            1
        }
    }
}

/// How a supervised round ended without a report.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The round reported an error (full disk, corrupt file, budget, not enough data).
    #[error("{0}")]
    Failed(String),
    /// The worker process died without a result (out of memory, killed, crashed).
    #[error("{0}")]
    Crashed(String),
    /// The gateway is shutting down; the worker was stopped.
    #[error(
        "the gateway stopped during the round; it resumes from its checkpoint at the next start"
    )]
    Stopped,
    #[error("cannot start the retraining worker {}: {message}", .exe.display())]
    Spawn { exe: PathBuf, message: String },
}

/// Limits the gateway puts on the worker process.
#[derive(Clone, Debug)]
pub struct WorkerLimits {
    pub nice: i32,
    pub max_memory_mb: u64,
}

/// Run `exe retrain-worker` for the staged round and supervise it until it reports, dies,
/// overruns its budget by a minute (killed), or `stop` fires (killed).
pub async fn supervise(
    exe: &Path,
    spec: &WorkerSpec,
    limits: &WorkerLimits,
    mut progress: impl FnMut(String, f32),
    stop: &CancellationToken,
) -> Result<RoundReport, WorkerError> {
    let spawn_err = |e: std::io::Error| WorkerError::Spawn {
        exe: exe.to_path_buf(),
        message: e.to_string(),
    };
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("retrain-worker")
        .arg("--spec")
        .arg(serde_json::to_string(spec).expect("spec serialises"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    #[cfg(target_os = "linux")]
    {
        let nice = limits.nice;
        let bytes = limits.max_memory_mb.saturating_mul(1 << 20) as libc::rlim_t;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe libc calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    libc::_exit(1); // the gateway died before prctl took effect
                }
                libc::setpriority(libc::PRIO_PROCESS, 0, nice);
                let lim = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                if libc::setrlimit(libc::RLIMIT_DATA, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut stderr = BufReader::new(child.stderr.take().expect("piped")).lines();
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut result: Option<Result<RoundReport, String>> = None;
    let deadline = tokio::time::sleep(Duration::from_secs_f64(spec.budget_s + 60.0));
    tokio::pin!(deadline);
    let (mut out_open, mut err_open) = (true, true);
    let killed: Option<WorkerError> = loop {
        if !out_open && !err_open {
            break None;
        }
        tokio::select! {
            line = stdout.next_line(), if out_open => match line {
                Ok(Some(l)) => match serde_json::from_str::<WorkerMessage>(&l) {
                    Ok(WorkerMessage::Progress { stage, fraction }) => progress(stage, fraction),
                    Ok(WorkerMessage::Done { report }) => result = Some(Ok(*report)),
                    Ok(WorkerMessage::Failed { message }) => result = Some(Err(message)),
                    Err(_) => tracing::debug!("retrain worker stdout: {l}"),
                },
                _ => out_open = false,
            },
            line = stderr.next_line(), if err_open => match line {
                Ok(Some(l)) => {
                    eprintln!("{l}");
                    tail.push_back(l);
                    if tail.len() > 20 {
                        tail.pop_front();
                    }
                }
                _ => err_open = false,
            },
            _ = stop.cancelled() => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                break Some(WorkerError::Stopped);
            }
            _ = &mut deadline => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                break Some(WorkerError::Failed(format!(
                    "the round overran its wall-clock budget of {:.0} min by a minute and was killed",
                    spec.budget_s / 60.0
                )));
            }
        }
    };
    if let Some(e) = killed {
        return Err(e);
    }
    let status = child.wait().await.map_err(spawn_err)?;
    match result {
        Some(Ok(r)) => Ok(r),
        Some(Err(m)) => Err(WorkerError::Failed(m)),
        None => Err(WorkerError::Crashed(crash_reason(status, &tail, limits))),
    }
}

/// Why the worker died without a result, in words a user can act on.
fn crash_reason(
    status: std::process::ExitStatus,
    tail: &std::collections::VecDeque<String>,
    limits: &WorkerLimits,
) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    let oom_line = tail
        .iter()
        .rev()
        .find(|l| l.contains("memory allocation of") || l.contains("out of memory"));
    let how = match status.signal() {
        Some(s) => format!("was killed by signal {s}"),
        None => format!(
            "exited with code {} without a result",
            status.code().unwrap_or(-1)
        ),
    };
    match (oom_line, status.signal()) {
        (Some(l), _) => format!(
            "out of memory: the round process {how} ({}) under max_memory_mb = {}; raise \
             [retrain] max_memory_mb or lower max_windows. The gateway and its serving model \
             are unaffected",
            l.trim(),
            limits.max_memory_mb
        ),
        (None, Some(9)) => format!(
            "the round process {how} (SIGKILL: the kernel's OOM killer?); the gateway and its \
             serving model are unaffected"
        ),
        (None, _) => format!(
            "the round process {how}{}; the gateway and its serving model are unaffected",
            tail.back()
                .map(|l| format!(" (last log line: {})", l.trim()))
                .unwrap_or_default()
        ),
    }
}
