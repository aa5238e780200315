//! Instance ids, in the DEA's shapes (reference dea_ng.md §1): `instance_id` is 32 lowercase
//! hex digits, `private_instance_id` (sent to routers for sticky sessions) two of them.

use std::time::{SystemTime, UNIX_EPOCH};

/// A fresh `instance_id`.
pub(super) fn new_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{:016x}{:016x}", rand_u64(), rand_u64() ^ nanos)
}

/// A fresh `private_instance_id`: two ids joined, as the DEA makes it.
pub(super) fn new_private_id() -> String {
    format!("{}{}", new_id(), new_id())
}

/// 64 random bits from the standard library's per-instance SipHash keys.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(u64::from(std::process::id()));
    hasher.finish()
}
