//! Any bytes as a `.model` file: parse, resolve imports (the standard library only: no file
//! system), check every model and variant, and format. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(file) = lmc_grammar::parse_file(text, 0) {
        let formatted = lmc_grammar::format_file(&file, &lmc_grammar::SourceFile::new("fuzz.model", text));
        let again = lmc_grammar::parse_file(&formatted, 0).expect("formatted text parses");
        let twice = lmc_grammar::format_file(&again, &lmc_grammar::SourceFile::new("fuzz.model", formatted.clone()));
        assert_eq!(formatted, twice, "formatting is idempotent");
    }
    let Ok(program) = lmc_core::load_source("fuzz.model", text, None) else { return };
    for model in lmc_core::model_names(&program) {
        if let Ok(checked) = lmc_core::check_model(&program, Some(&model), &lmc_core::ConfigOverrides::default()) {
            assert_eq!(checked.graph.verify(), Ok(()));
            let _ = lmc_core::manifest(&checked.graph).to_json();
            let _ = checked.graph.print();
        }
    }
});
