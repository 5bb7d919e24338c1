//! Plain ustar encoding: the header every reader in COMPAT.md agrees on.
//!
//! Only what a portable shard needs: regular files (typeflag '0'), ASCII names of at most 100
//! bytes in the name field (no prefix, no PAX, no GNU long names: wids and DALI read only the
//! 100-byte field), integer mtime, fixed mode/owner.
use crate::error::{Error, Result};

pub const BLOCK: u64 = 512;
/// Two zero blocks close an archive.
pub const END_OF_ARCHIVE: [u8; 1024] = [0; 1024];
/// 11 octal digits: the largest size a plain ustar header can state.
pub const MAX_MEMBER_SIZE: u64 = 0o77777777777;
pub const MAX_NAME_LEN: usize = 100;

const MODE: u32 = 0o644;
const OWNER_NAME: &[u8] = b"root";

/// Bytes of zero padding that follow `size` bytes of member data.
pub fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// Bytes a member occupies in the archive: header block plus padded data.
pub fn member_span(size: u64) -> u64 {
    BLOCK + size + padding(size)
}

/// Check a member name against the portable rules (ASCII, printable, no space or backslash,
/// relative, no `..`, at most 100 bytes).
pub fn check_name(name: &str) -> Result<()> {
    let bad = |reason| Err(Error::InvalidName { name: name.to_string(), reason });
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than the 100 bytes of the ustar name field");
    }
    if !name.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') {
        return bad("only printable ASCII without spaces or backslashes is portable");
    }
    if name.starts_with('/') || name.split('/').any(|part| part == ".." || part.is_empty()) {
        return bad("must be a relative path without '..' or empty parts");
    }
    Ok(())
}

/// Write `value` as zero-padded octal filling `field` except for a trailing NUL.
fn put_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    debug_assert!(text.len() == digits, "octal value does not fit its field");
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

/// Encode the ustar header of a regular file. The name must have passed `check_name`.
pub fn header(name: &str, size: u64, mtime: u64) -> Result<[u8; 512]> {
    check_name(name)?;
    if size > MAX_MEMBER_SIZE {
        return Err(Error::MemberTooLarge { id: String::new(), name: name.to_string(), size });
    }
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    put_octal(&mut h[100..108], MODE as u64);
    put_octal(&mut h[108..116], 0); // uid
    put_octal(&mut h[116..124], 0); // gid
    put_octal(&mut h[124..136], size);
    put_octal(&mut h[136..148], mtime.min(0o77777777777));
    h[156] = b'0'; // regular file
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..265 + OWNER_NAME.len()].copy_from_slice(OWNER_NAME);
    h[297..297 + OWNER_NAME.len()].copy_from_slice(OWNER_NAME);
    put_octal(&mut h[329..337], 0); // devmajor
    put_octal(&mut h[337..345], 0); // devminor
    // The checksum is computed with its own field read as eight spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    // POSIX form: six octal digits, NUL, space.
    h[148..154].copy_from_slice(format!("{sum:06o}").as_bytes());
    h[154] = 0;
    h[155] = b' ';
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_str(h: &[u8], range: std::ops::Range<usize>) -> String {
        let f = &h[range];
        let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
        String::from_utf8(f[..end].to_vec()).unwrap()
    }

    #[test]
    fn header_fields_are_plain_ustar() {
        let h = header("abc.jpg", 1234, 7).unwrap();
        assert_eq!(field_str(&h, 0..100), "abc.jpg");
        assert_eq!(field_str(&h, 100..108), "0000644");
        assert_eq!(field_str(&h, 124..136), format!("{:011o}", 1234));
        assert_eq!(field_str(&h, 136..148), format!("{:011o}", 7));
        assert_eq!(h[156], b'0');
        assert_eq!(&h[257..265], b"ustar\x0000");
        assert_eq!(field_str(&h, 265..297), "root");
        assert_eq!(field_str(&h, 345..500), "", "prefix must stay empty");
    }

    #[test]
    fn checksum_matches_definition() {
        let h = header("k.json", 0, 0).unwrap();
        let stored = u32::from_str_radix(field_str(&h, 148..154).trim(), 8).unwrap();
        let mut copy = h;
        copy[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, copy.iter().map(|&b| b as u32).sum::<u32>());
    }

    #[test]
    fn names_are_checked() {
        assert!(header(&"a".repeat(100), 0, 0).is_ok());
        assert!(header(&"a".repeat(101), 0, 0).is_err());
        for bad in ["", "a b.txt", "a\\b.txt", "/abs.txt", "../x.txt", "a//b.txt", "é.txt", "a/../b.txt"] {
            assert!(check_name(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn sizes_and_padding() {
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 511);
        assert_eq!(padding(512), 0);
        assert_eq!(member_span(513), 512 + 1024);
        assert!(header("x.bin", MAX_MEMBER_SIZE, 0).is_ok());
        assert!(matches!(header("x.bin", MAX_MEMBER_SIZE + 1, 0), Err(Error::MemberTooLarge { .. })));
    }
}
