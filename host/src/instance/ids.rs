//! Instance ids, in the DEA's shapes (reference dea_ng.md §1): `instance_id` is `secure_uuid`,
//! a random UUID without its dashes (32 lowercase hex digits); `private_instance_id`, sent to
//! routers for sticky sessions, is two of them joined (64).

use uuid::Uuid;

/// A fresh `instance_id` (also given anew when `dea.update` changes the version).
pub(super) fn new_id() -> String {
    Uuid::new_v4().simple().to_string()
}

/// A fresh `private_instance_id`.
pub(super) fn new_private_id() -> String {
    format!("{}{}", new_id(), new_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lowercase_hex(id: &str) -> bool {
        id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }

    #[test]
    fn an_instance_id_is_32_lowercase_hex_digits() {
        let id = new_id();
        assert_eq!(id.len(), 32, "{id}");
        assert!(lowercase_hex(&id), "{id}");
        // A version 4 UUID: the version nibble is 4 (the 13th digit).
        assert_eq!(&id[12..13], "4", "{id}");
    }

    #[test]
    fn a_private_instance_id_is_64_lowercase_hex_digits() {
        let id = new_private_id();
        assert_eq!(id.len(), 64, "{id}");
        assert!(lowercase_hex(&id), "{id}");
        assert_ne!(id[..32], id[32..]);
    }

    #[test]
    fn ids_do_not_repeat() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
