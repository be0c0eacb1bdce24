//! Held-out pretext accuracy *and* AUC per transformation of a pretext network
//! (docs/RESULTS.md §8): `cargo run --release --example pretext_auc -- PRETEXT.onnx REC…`.
use affectgate::dsp::PreprocessConfig;
use affectgate::learn::{dataset, model::PRETEXT_TASKS, pipeline, train};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (w, _) = pipeline::read_weights(std::path::Path::new(&args[1])).unwrap();
    let files: Vec<std::path::PathBuf> = args[2..].iter().map(Into::into).collect();
    let data = dataset::unlabelled_from_paths(&files, &PreprocessConfig::default()).unwrap();
    let windows = data.samples();
    let (loss, ba) = train::pretext_eval(&w, &windows, 7);
    let auc = train::pretext_auc(&w, &windows, 7);
    println!("{} held-out windows, pretext loss {loss:.4}", windows.len());
    for (i, t) in PRETEXT_TASKS.iter().enumerate() {
        println!("{t:<10} balanced accuracy {:.3}  AUC {:.3}", ba[i], auc[i]);
    }
}
