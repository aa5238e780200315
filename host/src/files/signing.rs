//! Signed file URLs: the DEA's HMAC-SHA512 over a canonical query (reference dea_ng.md §5.3).
//!
//! The signed string is `<url path>?path=<P>&timestamp=<T>`, each value escaped the way Ruby's
//! `URI.encode_www_form_component` does. The verifier form-decodes the query it received and
//! re-encodes it, so a client may escape the URL however it likes: only the decoded values count.

use hmac::{Hmac, Mac};
use sha2::Sha512;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

type HmacSha512 = Hmac<Sha512>;

/// Signs and verifies directory-server URLs with one key.
#[derive(Clone)]
pub struct UrlSigner {
    key: Vec<u8>,
    /// HMAC state with the key already absorbed, cloned for each signature.
    keyed: HmacSha512,
}

// The key is a secret: keep it out of logs and debug output.
impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlSigner").finish_non_exhaustive()
    }
}

impl UrlSigner {
    pub fn new(key: impl Into<Vec<u8>>) -> UrlSigner {
        let key = key.into();
        let keyed = keyed_hmac(&key);
        UrlSigner { key, keyed }
    }

    /// A fresh key in the DEA's `secure_uuid` shape: 32 lowercase hex characters, used as
    /// ASCII bytes. Such a key dies with the process, and so do the URLs it signed.
    pub fn random() -> UrlSigner {
        let mut bytes = [0u8; 16];
        // The OS generator failing leaves no safe way to sign anything; Linux's never does
        // once the system has booted.
        #[allow(clippy::expect_used)]
        getrandom::getrandom(&mut bytes).expect("the operating system's random generator works");
        UrlSigner::new(hex::encode(bytes))
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// `<base>/instance_paths/<id>?hmac=..&path=..&timestamp=<now>`; `base` is like
    /// `http://<uuid>.<domain>`.
    pub fn instance_url(&self, base: &str, instance_id: &str, path: &str) -> String {
        self.url(base, &instance_url_path(instance_id), path, now())
    }

    /// `<base>/staging_tasks/<id>/file_path?hmac=..&path=..&timestamp=<now>`; `path` is an
    /// absolute path inside the staging container.
    pub fn staging_url(&self, base: &str, task_id: &str, path: &str) -> String {
        self.url(base, &staging_url_path(task_id), path, now())
    }

    /// The URL for `url_path` signed at `timestamp`, query keys sorted as the DEA sorts them.
    pub fn url(&self, base: &str, url_path: &str, path: &str, timestamp: i64) -> String {
        let hmac = self.sign(url_path, path, timestamp);
        format!(
            "{}{url_path}?hmac={hmac}&path={}&timestamp={timestamp}",
            base.trim_end_matches('/'),
            form_encode(path.as_bytes())
        )
    }

    /// Lowercase hex HMAC-SHA512 of the canonical string for these values.
    pub fn sign(&self, url_path: &str, path: &str, timestamp: i64) -> String {
        self.sign_bytes(url_path, path.as_bytes(), timestamp.to_string().as_bytes())
    }

    /// Whether `hmac` signs these values (already form-decoded). Constant time in the content
    /// of `hmac`; a length mismatch is simply false, as in the DEA.
    pub fn verify(&self, url_path: &str, path: &str, timestamp: &str, hmac: &str) -> bool {
        self.verify_bytes(
            url_path,
            path.as_bytes(),
            timestamp.as_bytes(),
            hmac.as_bytes(),
        )
    }

    /// [`UrlSigner::verify`] over raw decoded bytes: a query may carry bytes that are not
    /// UTF-8, and Linux paths are bytes, so nothing is lost to lossy decoding.
    pub(crate) fn verify_bytes(
        &self,
        url_path: &str,
        path: &[u8],
        timestamp: &[u8],
        hmac: &[u8],
    ) -> bool {
        // The DEA compared lowercase hex strings, so anything that is not 128 lowercase hex
        // digits is a mismatch; the shape of the input says nothing about the key.
        // (`hex` alone would also take uppercase digits.)
        let mut given = [0u8; 64];
        let lowercase_hex = hmac.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !lowercase_hex || hex::decode_to_slice(hmac, &mut given).is_err() {
            return false;
        }
        // `verify_slice` compares in constant time.
        self.mac(url_path, path, timestamp)
            .verify_slice(&given)
            .is_ok()
    }

    fn sign_bytes(&self, url_path: &str, path: &[u8], timestamp: &[u8]) -> String {
        hex::encode(self.mac(url_path, path, timestamp).finalize().into_bytes())
    }

    /// The MAC over the canonical string, fed piece by piece instead of building the string.
    fn mac(&self, url_path: &str, path: &[u8], timestamp: &[u8]) -> HmacSha512 {
        let mut mac = self.keyed.clone();
        mac.update(url_path.as_bytes());
        mac.update(b"?path=");
        form_encode_with(path, |piece| mac.update(piece));
        mac.update(b"&timestamp=");
        form_encode_with(timestamp, |piece| mac.update(piece));
        mac
    }
}

fn keyed_hmac(key: &[u8]) -> HmacSha512 {
    // HMAC accepts keys of any length (long ones are hashed first), so this cannot fail.
    match HmacSha512::new_from_slice(key) {
        Ok(mac) => mac,
        Err(hmac::digest::InvalidLength) => unreachable!("HMAC takes keys of any length"),
    }
}

/// The string the DEA signs: Rack's `build_query` of the sorted pairs `path`, `timestamp`,
/// appended to the URL path with `?`. ([`UrlSigner`] feeds the same pieces to the MAC
/// without building it.)
#[cfg(test)]
fn canonical_string(url_path: &str, path: &[u8], timestamp: &[u8]) -> String {
    format!(
        "{url_path}?path={}&timestamp={}",
        form_encode(path),
        form_encode(timestamp)
    )
}

pub(crate) fn instance_url_path(instance_id: &str) -> String {
    format!("/instance_paths/{instance_id}")
}

pub(crate) fn staging_url_path(task_id: &str) -> String {
    format!("/staging_tasks/{task_id}/file_path")
}

/// Ruby's `URI.encode_www_form_component`: `*-._0-9A-Za-z` kept, space → `+`, every other
/// byte `%XX` with uppercase hex. `form_urlencoded::byte_serialize` is exactly that (the
/// WHATWG `application/x-www-form-urlencoded` serializer keeps the same set);
/// `every_byte_encodes_as_ruby_does` pins it byte by byte.
pub fn form_encode(bytes: &[u8]) -> String {
    form_urlencoded::byte_serialize(bytes).collect()
}

/// [`form_encode`] as a series of pieces handed to `sink`, so the MAC is fed without building
/// the string.
fn form_encode_with(bytes: &[u8], mut sink: impl FnMut(&[u8])) {
    for piece in form_urlencoded::byte_serialize(bytes) {
        sink(piece.as_bytes());
    }
}

/// Decodes one `application/x-www-form-urlencoded` component to bytes: `+` is a space, `%XX`
/// a byte. A `%` not followed by two hex digits is kept as it is.
///
/// This is `form_urlencoded::parse`'s own decoding (`+` first, then percent-decoding), which
/// that crate keeps private and only offers as lossy UTF-8: a Linux path is bytes, and a byte
/// lost to U+FFFD would make the signed path differ from the one opened.
pub fn form_decode(text: &str) -> Vec<u8> {
    form_decode_cow(text).into_owned()
}

/// [`form_decode`] without a copy when there is nothing to decode (a hex HMAC, a timestamp,
/// a key): the text's own bytes.
pub(crate) fn form_decode_cow(text: &str) -> std::borrow::Cow<'_, [u8]> {
    if !text.contains(['%', '+']) {
        return std::borrow::Cow::Borrowed(text.as_bytes());
    }
    percent_encoding::percent_decode(text.replace('+', " ").as_bytes())
        .collect::<Vec<u8>>()
        .into()
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Where a running agent keeps its active key, for `dea files url`.
pub fn key_file_path(base_dir: &Path) -> PathBuf {
    base_dir.join("db").join("directory_server.key")
}

/// Writes the signer's key to `<base_dir>/db/directory_server.key`, mode 0600, atomically (a
/// temporary file in the same directory, synced, then renamed over the old one), so the local
/// operator CLI can sign URLs that the running agent accepts.
pub fn write_key_file(base_dir: &Path, signer: &UrlSigner) -> std::io::Result<PathBuf> {
    let path = key_file_path(base_dir);
    let dir = base_dir.join("db");
    crate::private_dir::ensure(&dir)?;
    // NamedTempFile creates its file with mode 0600 before anything is written to it.
    let mut file = tempfile::Builder::new()
        .prefix(".directory_server.key")
        .tempfile_in(&dir)?;
    file.write_all(signer.key())?;
    file.as_file().sync_all()?;
    file.persist(&path).map_err(|e| e.error)?;
    Ok(path)
}

/// Reads the key a running agent wrote with [`write_key_file`].
pub fn read_key_file(base_dir: &Path) -> std::io::Result<UrlSigner> {
    std::fs::read(key_file_path(base_dir)).map(UrlSigner::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha512_matches_the_dea_spec_vector() {
        let mut mac = keyed_hmac(b"key");
        mac.update(b"value");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "86951dc765bef95f9474669cd18df7705d99ae47ea3e76a2ca4c22f71656f42e\
             a66e3acdc898c93f475009fa599d0bb83bd5365f36a9cb92c570708f8de5fae8"
        );
    }

    #[test]
    fn instance_url_signature_matches_the_dea_spec_vector() {
        let url_path = instance_url_path("instance-id");
        assert_eq!(
            canonical_string(&url_path, b"/path-to-file", b"10"),
            "/instance_paths/instance-id?path=%2Fpath-to-file&timestamp=10"
        );
        let expected = "84ca7c070634cb26f1e6225d8f3338d670b5543f756929b3e1ce6f144e394205\
                        7862e1921f41f263e1fae8d498cc5a5cb3a358d4cf175be8307521a09a949d61";
        let signer = UrlSigner::new("key");
        let mut mac = keyed_hmac(b"key");
        mac.update(canonical_string(&url_path, b"/path-to-file", b"10").as_bytes());
        assert_eq!(hex::encode(mac.finalize().into_bytes()), expected);
        assert_eq!(signer.sign(&url_path, "/path-to-file", 10), expected);
        assert!(signer.verify(&url_path, "/path-to-file", "10", expected));
        assert!(!signer.verify(&url_path, "/path-to-file", "11", expected));
        assert!(!signer.verify(&url_path, "/path-to-file", "10", &expected[..127]));
        assert!(!signer.verify(&url_path, "/path-to-file", "10", &expected.to_uppercase()));
        assert!(!signer.verify(&url_path, "/path-to-file", "10", &format!("{expected}00")));
    }

    #[test]
    fn form_encoding_is_rubys_encode_www_form_component() {
        assert_eq!(form_encode(b"a b"), "a+b");
        assert_eq!(form_encode(b"/logs/x.log"), "%2Flogs%2Fx.log");
        assert_eq!(form_encode(b"~user"), "%7Euser");
        assert_eq!(form_encode(b"*-._09AZaz"), "*-._09AZaz");
        assert_eq!(form_encode("é?&=+%".as_bytes()), "%C3%A9%3F%26%3D%2B%25");
        assert_eq!(form_encode(&[0xff, 0x00]), "%FF%00");
    }

    /// Ruby's `URI.encode_www_form_component`, spelled out from its table: the oracle the
    /// crate's encoder is checked against for every byte.
    fn ruby_encode_byte(byte: u8) -> String {
        match byte {
            b'*' | b'-' | b'.' | b'_' | b'0'..=b'9' | b'A'..=b'Z' | b'a'..=b'z' => {
                char::from(byte).to_string()
            }
            b' ' => "+".to_string(),
            other => format!("%{other:02X}"),
        }
    }

    #[test]
    fn every_byte_encodes_as_ruby_does() {
        let mut all = Vec::new();
        let mut expected = String::new();
        let mut lowercase_escapes = String::new();
        for byte in 0..=u8::MAX {
            assert_eq!(
                form_encode(&[byte]),
                ruby_encode_byte(byte),
                "byte {byte:#04x}"
            );
            all.push(byte);
            expected.push_str(&ruby_encode_byte(byte));
            lowercase_escapes.push_str(&match ruby_encode_byte(byte) {
                escape if escape.starts_with('%') => escape.to_lowercase(),
                kept => kept,
            });
        }
        // Runs of kept bytes and escapes together, and the piecewise form the MAC is fed.
        assert_eq!(form_encode(&all), expected);
        let mut pieces = Vec::new();
        form_encode_with(&all, |piece| pieces.extend_from_slice(piece));
        assert_eq!(pieces, expected.as_bytes());
        // Decoding gives every byte back, whatever the case of the hex digits.
        assert_eq!(form_decode(&expected), all);
        assert_eq!(form_decode(&lowercase_escapes), all);
    }

    #[test]
    fn hmacs_are_lowercase_hex_of_the_right_length_only() {
        let signer = UrlSigner::new("key");
        let good = signer.sign("/p", "x", 1);
        assert!(signer.verify("/p", "x", "1", &good));
        for bad in [
            good.to_uppercase(),
            good.replacen(|c: char| c.is_ascii_hexdigit(), "g", 1),
            format!(" {}", &good[1..]),
            String::new(),
            "0".repeat(128),
        ] {
            assert!(!signer.verify("/p", "x", "1", &bad), "{bad}");
        }
    }

    #[test]
    fn form_decoding_undoes_any_client_escaping() {
        assert_eq!(form_decode("a+b%20c"), b"a b c");
        assert_eq!(form_decode("%2e%2E%2f"), b"../");
        assert_eq!(form_decode("100%"), b"100%");
        assert_eq!(form_decode("%zz%4"), b"%zz%4");
        assert_eq!(form_decode("%FF"), [0xff]);
        assert_eq!(form_decode(&form_encode(b"/a b/~c")), b"/a b/~c");
    }

    #[test]
    fn random_keys_look_like_secure_uuids() {
        let a = UrlSigner::random();
        let b = UrlSigner::random();
        assert_eq!(a.key().len(), 32);
        assert!(
            a.key()
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        );
        assert_ne!(a.key(), b.key());
    }

    #[test]
    fn urls_carry_sorted_query_and_verify() {
        let signer = UrlSigner::new("k");
        let url = signer.url("http://abc.dea.local/", "/instance_paths/i", "logs/a b", 42);
        let hmac = signer.sign("/instance_paths/i", "logs/a b", 42);
        assert_eq!(
            url,
            format!(
                "http://abc.dea.local/instance_paths/i?hmac={hmac}&path=logs%2Fa+b&timestamp=42"
            )
        );
    }

    #[test]
    fn key_file_round_trips_with_private_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let signer = UrlSigner::random();
        let path = write_key_file(dir.path(), &signer).expect("key written");
        assert_eq!(path, dir.path().join("db/directory_server.key"));
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_key_file(dir.path()).expect("read").key(), signer.key());
        // Rewriting replaces the key in place.
        let other = UrlSigner::new("configured");
        write_key_file(dir.path(), &other).expect("rewritten");
        assert_eq!(
            read_key_file(dir.path()).expect("read").key(),
            b"configured"
        );
    }
}
