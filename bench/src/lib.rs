//! What the benchmark programs share: finding the `nbhd` binary they measure, the soak (run
//! long by `bench/soak`, for two minutes by the test command), and what trust costs.

pub mod crypto;
pub mod soak;

use std::path::PathBuf;

/// The `nbhd` built beside the running benchmark (`cargo build --release -p nbhd -p nbhd-bench`).
pub fn nbhd_bin() -> PathBuf {
    let p = std::env::current_exe()
        .expect("own path")
        .with_file_name("nbhd");
    assert!(
        p.exists(),
        "{} not built: cargo build --release -p nbhd -p nbhd-bench",
        p.display()
    );
    p
}
