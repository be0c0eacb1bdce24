//! Building a replay pack from the training datasets (the format is [`crate::model::replay`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::learn::dataset::Dataset;
use crate::model::replay::{PackWindow, ReplayPack};

/// Build a pack: every window of `labelled` (with its labels and subject) and up to
/// `max_pretext` windows of `unlabelled`, drawn round-robin across subjects (each
/// subject's windows shuffled with `seed`) so that no one person dominates the replay.
///
/// An unlabelled window whose file is also a file of `labelled` gets that labelled
/// subject (`unlabelled_from_paths` names subjects by file path), so the gate can keep a
/// held-out person's pretext windows out of training.
pub fn build_pack(
    labelled: &Dataset,
    unlabelled: &Dataset,
    max_pretext: usize,
    seed: u64,
) -> ReplayPack {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let by_file: HashMap<PathBuf, String> = labelled
        .windows
        .iter()
        .map(|w| (canon(&w.file), w.subject.clone()))
        .collect();
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, w) in unlabelled.windows.iter().enumerate() {
        let subject = by_file
            .get(&canon(&w.file))
            .cloned()
            .unwrap_or_else(|| w.subject.clone());
        groups.entry(subject).or_default().push(i);
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut queues: Vec<(String, std::vec::IntoIter<usize>)> = groups
        .into_iter()
        .map(|(s, mut v)| {
            v.shuffle(&mut rng);
            (s, v.into_iter())
        })
        .collect();
    let mut pretext = Vec::new();
    let mut pretext_subjects = Vec::new();
    'outer: loop {
        let mut any = false;
        for (s, q) in queues.iter_mut() {
            if pretext.len() >= max_pretext {
                break 'outer;
            }
            if let Some(i) = q.next() {
                pretext.push(unlabelled.windows[i].samples.clone());
                pretext_subjects.push(s.clone());
                any = true;
            }
        }
        if !any {
            break;
        }
    }
    ReplayPack {
        head_names: labelled.label_names.clone(),
        pretext,
        pretext_subjects,
        labelled: labelled
            .windows
            .iter()
            .map(|w| PackWindow {
                window: w.samples.clone(),
                labels: w.labels.clone(),
                subject: w.subject.clone(),
            })
            .collect(),
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    }
}
