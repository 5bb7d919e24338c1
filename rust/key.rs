//! Sample id -> portable key, and member extension rules.
//!
//! Readers split a member name at the FIRST dot of its basename (COMPAT.md), wids and DALI read
//! only 100 bytes of name, HF skips names starting with `.` or `__`. So a key is restricted to
//! `[A-Za-z0-9_-]`, starts with a letter or digit and leaves room for an extension.
//!
//! Ids that already look like that are kept as they are (human-readable). Any other id becomes
//! `<slug>--<16 hex digits of sha256(id)>`. Kept ids are never allowed to end like a derived key,
//! so the two families cannot collide; two derived keys collide only on a 64-bit hash collision,
//! which the writer still detects (`Error::DuplicateKey`).
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Longest key: 100-byte name field minus room for `.` and an extension such as `0.jpg`.
pub const MAX_KEY_LEN: usize = 80;
const SLUG_LEN: usize = 48;
const HASH_HEX_LEN: usize = 16;
const DERIVED_SEPARATOR: &str = "--";
const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// True when `s` ends the way a derived key does: `--` and 16 lowercase hex digits.
fn has_derived_suffix(s: &str) -> bool {
    let b = s.as_bytes();
    let n = DERIVED_SEPARATOR.len() + HASH_HEX_LEN;
    b.len() >= n
        && s[b.len() - n..].starts_with(DERIVED_SEPARATOR)
        && b[b.len() - HASH_HEX_LEN..].iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// True when an id can be used as its own key.
pub fn is_portable(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_KEY_LEN
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|&c| is_key_byte(c))
        && !has_derived_suffix(id)
}

/// The key a sample with this id is written under. Pure function of the id.
pub fn portable_key(id: &str) -> String {
    if is_portable(id) {
        return id.to_string();
    }
    // Keep the readable part of the id, one `_` per run of anything else.
    let mut slug = String::with_capacity(SLUG_LEN);
    for c in id.chars() {
        if slug.len() >= SLUG_LEN {
            break;
        }
        if c.is_ascii() && is_key_byte(c as u8) {
            slug.push(c);
        } else if !slug.ends_with('_') {
            slug.push('_');
        }
    }
    let slug = slug.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    let slug = if slug.is_empty() { "id" } else { slug };
    let digest = Sha256::digest(id.as_bytes());
    let mut key = String::with_capacity(slug.len() + DERIVED_SEPARATOR.len() + HASH_HEX_LEN);
    key.push_str(slug);
    key.push_str(DERIVED_SEPARATOR);
    // Hex digits pushed directly: format!("{b:02x}") per byte was most of a key's time.
    for byte in &digest[..HASH_HEX_LEN / 2] {
        key.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
        key.push(char::from(HEX_DIGITS[usize::from(byte & 0x0f)]));
    }
    key
}

/// Normalise an extension to lowercase and check it: dot-separated parts of `[a-z0-9_-]`,
/// none empty, not starting with `_` (webdataset treats `__x__` names as metadata).
pub fn normalize_extension(id: &str, ext: &str) -> Result<String> {
    let bad = |reason| Err(Error::InvalidExtension { id: id.to_string(), ext: ext.to_string(), reason });
    let lower = ext.to_ascii_lowercase();
    if lower.is_empty() {
        return bad("empty");
    }
    if lower.starts_with('_') {
        return bad("extensions starting with '_' are metadata to webdataset");
    }
    if lower.split('.').any(|part| part.is_empty() || !part.bytes().all(is_key_byte)) {
        return bad("use dot-separated parts of letters, digits, '_' or '-'");
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_ids_are_kept() {
        for id in ["000000033471", "GCC_train_002582585", "a-b_c", "X"] {
            assert_eq!(portable_key(id), id);
        }
    }

    #[test]
    fn unsafe_ids_get_readable_derived_keys() {
        let k = portable_key("coco/train2017/0001.jpg");
        assert!(k.starts_with("coco_train2017_0001_jpg--"), "{k}");
        for id in ["", "..", "a.b", "a b", "é", "__meta__", "-x", &"z".repeat(300), "a/../../etc"] {
            let k = portable_key(id);
            assert!(is_portable(&k[..k.len() - 18]) || k.starts_with("id--"), "{id:?} -> {k}");
            assert!(k.len() <= MAX_KEY_LEN && k.bytes().all(is_key_byte), "{id:?} -> {k}");
            assert!(k.as_bytes()[0].is_ascii_alphanumeric(), "{id:?} -> {k}");
            assert_eq!(k, portable_key(id), "must be deterministic");
        }
    }

    #[test]
    fn kept_ids_never_look_derived() {
        let derived = portable_key("a.b");
        // An id spelled exactly like a derived key is itself derived again, so they differ.
        assert_ne!(portable_key(&derived), derived);
        assert_ne!(portable_key("a.b"), portable_key("a_b"));
    }

    #[test]
    fn extensions() {
        assert_eq!(normalize_extension("i", "JPG").unwrap(), "jpg");
        assert_eq!(normalize_extension("i", "npy.zst").unwrap(), "npy.zst");
        assert_eq!(normalize_extension("i", "0.jpg").unwrap(), "0.jpg");
        for bad in ["", ".jpg", "jpg.", "a..b", "__key__", "a b", "a/b", "é"] {
            assert!(normalize_extension("i", bad).is_err(), "{bad:?}");
        }
    }
}
