//! The robustness checks of docs/RESULTS.md §7: the fusion arms at several embedding penalties
//! and with the embedding reduced to k principal components (fitted per fold), beside the
//! heart-rate baselines, all leave-one-subject-out on the quality-gated windows; and the
//! within-subject spread of window amplitude against the `scale` pretext transform.
//!
//! `cargo run --release --example fusion_study -- MODEL.onnx MANIFEST.csv [PENALTY…]`
//! (penalties in rows' worth per embedding coefficient, e.g. `0.1 0.3 1 3`).
use affectgate::dsp::PreprocessConfig;
use affectgate::learn::{baseline, dataset, fusion, metrics::HeadReport, pipeline, train};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = &args[1];
    let manifest = &args[2];
    let (w, _) = pipeline::read_weights(std::path::Path::new(model)).unwrap();
    let data = dataset::labelled_from_manifest(
        std::path::Path::new(manifest),
        &PreprocessConfig::default(),
    )
    .unwrap();
    let subjects: Vec<String> = data.windows.iter().map(|w| w.subject.clone()).collect();
    let phys: Vec<_> = data
        .windows
        .iter()
        .map(|w| baseline::window_physio(&w.samples))
        .collect();
    let good: Vec<bool> = phys.iter().map(|p| p.good).collect();
    let li = data.label_index("arousal").unwrap();
    let labels: Vec<Option<bool>> = data
        .windows
        .iter()
        .zip(&good)
        .map(|(w, &g)| {
            if g {
                w.labels[li].map(|v| v >= 0.5)
            } else {
                None
            }
        })
        .collect();
    let emb: Vec<Vec<f64>> = train::embed(&w, &data.samples())
        .into_iter()
        .map(|r| r.into_iter().map(f64::from).collect())
        .collect();
    let rel = baseline::wearer_relative(&subjects, &phys);
    let report = |name: &str, probs: &[Option<f64>]| {
        let (s, y): (Vec<f64>, Vec<bool>) = probs
            .iter()
            .zip(&labels)
            .filter_map(|(p, y)| Some(((*p)?, (*y)?)))
            .unzip();
        let r = HeadReport::from_scores(&s, &y).unwrap();
        let ps = baseline::per_subject_balanced_accuracy(probs, &labels, &subjects);
        let (m, sd) = baseline::mean_sd(&ps);
        println!(
            "{name:<28} ba {:.3} auc {:.3} n {} per-subject {:.3} ± {:.3}",
            r.balanced_accuracy,
            r.auc.unwrap_or(0.0),
            r.n,
            m,
            sd
        );
    };
    for (n, p) in baseline::baseline_probabilities(&subjects, &phys, &labels) {
        report(n, &p);
    }
    let emb_rel = fusion::subject_relative(&subjects, &good, &emb);
    // Pretext-task ambiguity: per subject, spread of window log-RMS vs the ×1.1 of `scale`.
    {
        let mut by: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
        for (w, g) in data.windows.iter().zip(&good) {
            if *g {
                let r = (w.samples.iter().map(|v| (*v as f64).powi(2)).sum::<f64>()
                    / w.samples.len() as f64)
                    .sqrt()
                    .ln();
                by.entry(&w.subject).or_default().push(r);
            }
        }
        let sds: Vec<f64> = by
            .values()
            .map(|v| {
                let m = v.iter().sum::<f64>() / v.len() as f64;
                (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
            })
            .collect();
        let mut s2 = sds.clone();
        s2.sort_by(f64::total_cmp);
        println!("within-subject sd of window log-RMS: median {:.3} (min {:.3}, max {:.3}); ln 1.1 = {:.3}", s2[s2.len()/2], s2[0], s2[s2.len()-1], 1.1f64.ln());
    }
    for k in [1usize, 2, 4, 8, 16] {
        // LOSO with PCA fitted on the training subjects' relative embeddings only.
        let mut out = vec![None; subjects.len()];
        let mut names = subjects.clone();
        names.sort();
        names.dedup();
        for s in &names {
            let train_rows: Vec<&[f64]> = (0..subjects.len())
                .filter(|&i| &subjects[i] != s)
                .filter_map(|i| emb_rel[i].as_deref())
                .collect();
            let (mean, dirs) = fusion::pca(&train_rows, k);
            let feat = |i: usize| -> Option<Vec<f64>> {
                let p = rel[i]?;
                let e = emb_rel[i].as_ref()?;
                let mut v: Vec<f64> = p.to_vec();
                for d in &dirs {
                    v.push(
                        d.iter()
                            .zip(e)
                            .zip(&mean)
                            .map(|((a, b), m)| a * (b - m))
                            .sum(),
                    );
                }
                Some(v)
            };
            let (mut tx, mut ty) = (vec![], vec![]);
            for i in 0..subjects.len() {
                if &subjects[i] != s {
                    if let (Some(x), Some(y)) = (feat(i), labels[i]) {
                        tx.push(x);
                        ty.push(y);
                    }
                }
            }
            let m = baseline::Logistic::fit(&tx, &ty);
            for i in 0..subjects.len() {
                if &subjects[i] == s {
                    out[i] = feat(i).map(|x| m.predict(&x));
                }
            }
        }
        report(&format!("fused_pca k={k}"), &out);
    }
    for lam in args[3..].iter().map(|s| s.parse::<f64>().unwrap()) {
        for (n, p) in fusion::fusion_probabilities(&subjects, &good, &rel, &emb, &labels, lam) {
            report(&format!("{n} λ/row={lam}"), &p);
        }
    }
}
