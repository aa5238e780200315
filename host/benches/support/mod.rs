//! Pieces the benchmark binaries share (each bench is its own crate; `mod support;`).
#![allow(dead_code)] // not every bench uses every piece

/// `len` bytes of xorshift noise: incompressible, and the same in every run.
pub fn noise(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut seed: u64 = 0x2545f4914f6cdd1d;
    for chunk in out.chunks_mut(8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
    }
    out
}

/// Resident set of process `pid` ("self" for this one), in MB (0 when it is gone).
pub fn rss_mb(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Anonymous memory of process `pid` in MB (its heap, stacks and private copies: what the
/// process costs beyond the file pages it shares with the page cache), 0 when it is gone.
pub fn anon_mb(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Anonymous:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
