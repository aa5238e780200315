//! Sizes as people read them, shared by the directory server's listings and the staging log.

/// `1.5K`-style sizes: bytes below 1 KiB, else one decimal in the largest binary unit reached
/// (up to `T`). This is Go's `fileSizeFormat` in the DEA's directory listings and what
/// `du -h`-style lines in Cloud Foundry's staging log show.
pub fn human_size(size: u64) -> String {
    const UNITS: [(u32, char); 4] = [(40, 'T'), (30, 'G'), (20, 'M'), (10, 'K')];
    for (shift, unit) in UNITS {
        if size >= 1 << shift {
            // Display only: the rounding of a u64 to f64 beyond 2^53 is invisible at one decimal.
            return format!("{:.1}{unit}", size as f64 / (1u64 << shift) as f64);
        }
    }
    format!("{size}B")
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_follow_go() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(1023), "1023B");
        assert_eq!(human_size(1024), "1.0K");
        assert_eq!(human_size(1536), "1.5K");
        assert_eq!(human_size(1024 * 1024 - 1), "1024.0K");
        assert_eq!(human_size(3 << 20), "3.0M");
        assert_eq!(human_size(5 << 30), "5.0G");
        assert_eq!(human_size((1 << 40) + (1 << 39)), "1.5T");
        assert_eq!(human_size(u64::MAX), "16777216.0T");
    }
}
