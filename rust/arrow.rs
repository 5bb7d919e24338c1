//! Arrow binary (and large binary) arrays read in place: offsets and validity decoded from the
//! raw buffers pyarrow exports, values sliced out of the data buffer. No PyO3 here: the bindings
//! hand over byte slices, and `cargo test` covers the parsing.

/// The layout of one binary array: where each value starts and ends in the data buffer, and
/// which values are null.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinaryLayout {
    /// `len + 1` offsets into the data buffer.
    offsets: Vec<usize>,
    valid: Option<Vec<bool>>,
}

impl BinaryLayout {
    /// From the raw offsets buffer (little-endian i32, or i64 when `large`), the validity bitmap
    /// (None: no nulls), the array's `offset` and `length`, and the data buffer's length.
    pub fn parse(offsets: &[u8], validity: Option<&[u8]>, offset: usize, length: usize, large: bool, data_len: usize) -> Result<Self, String> {
        let width = if large { 8 } else { 4 };
        let needed = offset.checked_add(length).and_then(|n| n.checked_add(1)).and_then(|n| n.checked_mul(width));
        if needed.is_none_or(|needed| offsets.len() < needed) {
            return Err("offsets buffer is shorter than offset + length + 1 entries".into());
        }
        let read = |i: usize| -> i64 {
            let at = &offsets[i * width..(i + 1) * width];
            if large { i64::from_le_bytes(at.try_into().unwrap()) } else { i32::from_le_bytes(at.try_into().unwrap()) as i64 }
        };
        let raw: Vec<i64> = (offset..offset + length + 1).map(read).collect();
        if raw.iter().any(|&o| o < 0) || raw.windows(2).any(|w| w[0] > w[1]) || raw.last().is_some_and(|&end| end as usize > data_len) {
            return Err("offsets are not increasing or point past the data buffer".into());
        }
        let valid = match validity {
            None => None,
            Some(bits) => {
                if bits.len() * 8 < offset + length {
                    return Err("validity bitmap is shorter than offset + length bits".into());
                }
                Some((offset..offset + length).map(|i| bits[i / 8] & (1 << (i % 8)) != 0).collect())
            }
        };
        Ok(Self { offsets: raw.into_iter().map(|o| o as usize).collect(), valid })
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Value `i` of `data`, or None when it is null. `i` must be below `len()`.
    pub fn value<'a>(&self, data: &'a [u8], i: usize) -> Option<&'a [u8]> {
        if self.valid.as_ref().is_some_and(|v| !v[i]) {
            return None;
        }
        Some(&data[self.offsets[i]..self.offsets[i + 1]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le32(values: &[i32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn values_of_a_sliced_array_with_nulls() {
        let data = b"aabbbcd";
        // Values "aa", "bbb", "c", "d"; the array is sliced to start at value 1, three values long,
        // and value 2 ("c") is null.
        let offsets = le32(&[0, 2, 5, 6, 7]);
        let validity = [0b1011u8];
        let layout = BinaryLayout::parse(&offsets, Some(&validity), 1, 3, false, data.len()).unwrap();
        assert_eq!(layout.len(), 3);
        assert_eq!(layout.value(data, 0), Some(&b"bbb"[..]));
        assert_eq!(layout.value(data, 1), None);
        assert_eq!(layout.value(data, 2), Some(&b"d"[..]));
    }

    #[test]
    fn large_offsets_and_empty_values() {
        let offsets: Vec<u8> = [0i64, 0, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
        let layout = BinaryLayout::parse(&offsets, None, 0, 2, true, 3).unwrap();
        assert_eq!(layout.value(b"xyz", 0), Some(&b""[..]));
        assert_eq!(layout.value(b"xyz", 1), Some(&b"xyz"[..]));
    }

    #[test]
    fn refuses_buffers_that_do_not_add_up() {
        let too_short = BinaryLayout::parse(&le32(&[0, 1]), None, 0, 2, false, 10);
        assert!(too_short.unwrap_err().contains("shorter"));
        let past_end = BinaryLayout::parse(&le32(&[0, 11]), None, 0, 1, false, 10);
        assert!(past_end.unwrap_err().contains("past the data"));
        let decreasing = BinaryLayout::parse(&le32(&[5, 1]), None, 0, 1, false, 10);
        assert!(decreasing.is_err());
        let negative = BinaryLayout::parse(&le32(&[-1, 1]), None, 0, 1, false, 10);
        assert!(negative.is_err());
        let short_bitmap = BinaryLayout::parse(&le32(&[0; 10]), Some(&[0xff]), 0, 9, false, 10);
        assert!(short_bitmap.unwrap_err().contains("validity"));
        let overflow = BinaryLayout::parse(&le32(&[0, 1]), None, usize::MAX, 1, false, 10);
        assert!(overflow.is_err());
    }
}
