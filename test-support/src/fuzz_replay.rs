//! What the stable replays of the fuzz targets share
//! (`proto/tests/fuzz_replay.rs`, `relay/tests/router_sequences.rs`): a
//! fixed, dependency-free random stream per seed, the `LANRAGE_FUZZ_*`
//! numbers, and the committed inputs of a regressions directory.

use std::path::{Path, PathBuf};

/// SplitMix64 (Steele, Lea, Flood 2014): the same numbers for the same
/// `seed` and `salt` on every machine and every version, so that a
/// failing seed replays. `salt` keeps two test files' streams apart.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64, salt: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The number in environment variable `name`, if it is set and one.
pub fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Every file in `dir` with its bytes, sorted by path. Panics if `dir`
/// can't be read or holds none: a replay with no inputs proves nothing.
pub fn committed_inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs in {}", dir.display());
    files
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            (f, bytes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_fixed() {
        // The reference SplitMix64 output for state 0 (seed 0, salt 0).
        let mut rng = SplitMix64::new(0, 0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }
}
