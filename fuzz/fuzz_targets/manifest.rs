//! Any bytes as a module's manifest (the JSON a generated library exports): parsing, the
//! runtime's checks, and, for a manifest the checks accept, validating inputs shaped after it
//! (each symbolic dimension given size 2) and computing the output shapes. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lmc_runtime::{DType, Dim, HostTensor, Manifest};
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(manifest) = Manifest::from_json(text) else { return };
    if lmc_runtime::validate::check_manifest(&manifest, "fuzz").is_err() {
        return;
    }
    let mut inputs = Vec::new();
    for spec in &manifest.inputs {
        let shape: Vec<usize> = spec
            .shape
            .iter()
            .map(|d| match d {
                Dim::Static(n) => (*n).clamp(0, 8) as usize,
                Dim::Symbol(_) => 2,
            })
            .collect();
        let n: usize = shape.iter().product();
        let t = match spec.dtype {
            DType::F32 => HostTensor::from_f32(&spec.name, shape, vec![0.5; n]),
            DType::I32 => HostTensor::from_i32(&spec.name, shape, vec![1; n]),
            DType::I64 => HostTensor::from_i64(&spec.name, shape, vec![1; n]),
        };
        if let Ok(t) = t {
            inputs.push(t);
        }
    }
    let _ = lmc_runtime::validate_inputs(&manifest, &inputs);
    let symbols: BTreeMap<String, usize> = manifest
        .inputs
        .iter()
        .flat_map(|s| s.shape.iter())
        .filter_map(|d| match d {
            Dim::Symbol(s) => Some((s.clone(), 2)),
            Dim::Static(_) => None,
        })
        .collect();
    let _ = lmc_runtime::validate::output_shapes(&manifest, &symbols);
});
