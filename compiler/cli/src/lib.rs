//! What the `lmc` command line reads that other crates exercise directly: the fuzz targets
//! feed it arbitrary bytes.

pub mod experiment_file;
