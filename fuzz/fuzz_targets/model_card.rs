//! Model card (`*.card.toml`): `ModelCard::load`, then a card that loads must survive
//! `to_toml` and load again (what `save` writes), and `check` against some bytes.
#![no_main]
use affectgate::model::card::ModelCard;
use libfuzzer_sys::fuzz_target;

#[path = "../src/common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::file("m.card.toml", data);
    match ModelCard::load(&path) {
        Ok(card) => {
            let again = common::file("again.card.toml", card.to_toml().as_bytes());
            if let Err(e) = ModelCard::load(&again) {
                panic!("a loaded card does not load after to_toml: {e}");
            }
            let _ = card.check(&path, std::path::Path::new("m.onnx"), data);
        }
        Err(e) => common::assert_names_file(&e),
    }
});
