//! Any bytes as an experiment file (`lmc ab EXPERIMENT.yaml`): parse it, render the diagnostic
//! of a bad one, and turn every `set` into `--set` text. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lmc_lab::experiment_file::{parse, set_pairs};
use lmc_grammar::SourceMap;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut sources = SourceMap::new();
    match parse(&mut sources, "fuzz.yaml".into(), text) {
        Ok(file) => {
            let _ = set_pairs(&file.set);
            for v in &file.variants {
                let _ = set_pairs(&v.set);
            }
        }
        Err(d) => {
            let _ = d.render(&sources);
        }
    }
});
