//! Any bytes as a safetensors file: the header parser and every tensor's bytes. Nothing may
//! panic; every tensor the parser accepts must be readable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = lmc_runtime::SafeTensorsFile::from_bytes("fuzz.safetensors", data.to_vec()) {
        let names: Vec<String> = file.tensors().map(|t| t.name.clone()).collect();
        for name in names {
            let t = file.get(&name).expect("listed tensors exist");
            let _ = t.bytes().len();
            let _ = t.to_host();
        }
    }
});
