//! Per-shard sidecar indexes, computed from the offsets recorded while writing (no re-read).
use std::path::{Path, PathBuf};

use crate::shard::ShardRecord;

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Energon looks for `X.tar.idx` beside `X.tar`.
pub fn energon_index_path(shard: &Path) -> PathBuf {
    with_suffix(shard, ".idx")
}

/// DALI takes index paths explicitly; `X.tar` -> `X.idx` is the convention of its docs, and keeps
/// clear of Energon's `X.tar.idx`.
pub fn dali_index_path(shard: &Path) -> PathBuf {
    shard.with_extension("idx")
}

/// Energon's `X.tar.idx`: native-endian u64 offsets of every sample's first header block, then
/// the end of the last member (where the end-of-archive blocks start). N samples, N + 1 entries.
pub fn energon_tar_idx(shard: &ShardRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 * (shard.samples.len() + 1));
    for sample in &shard.samples {
        out.extend_from_slice(&sample.offset.to_ne_bytes());
    }
    out.extend_from_slice(&shard.data_end.to_ne_bytes());
    out
}

/// DALI's wds2idx v1.2 text index: `v1.2 <N>`, then per sample the groups
/// `<ext> <data offset> <size> <member name>`, space-separated.
pub fn dali_idx(shard: &ShardRecord) -> String {
    let mut out = format!("v1.2 {}\n", shard.samples.len());
    for sample in &shard.samples {
        let groups: Vec<String> = sample
            .members
            .iter()
            .map(|m| format!("{} {} {} {}.{}", m.ext, m.data_offset, m.size, sample.key, m.ext))
            .collect();
        out.push_str(&groups.join(" "));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::{MemberRecord, SampleRecord};

    fn record() -> ShardRecord {
        let sample = |key: &str, offset| SampleRecord {
            key: key.into(),
            offset,
            members: vec![
                MemberRecord { ext: "jpg".into(), data_offset: offset + 512, size: 600 },
                MemberRecord { ext: "json".into(), data_offset: offset + 512 * 4, size: 2 },
            ],
        };
        ShardRecord {
            index: 0,
            path: PathBuf::from("d/s-000.tar"),
            samples: vec![sample("a", 0), sample("b", 2560)],
            data_end: 5120,
            size: 6144,
            sha256: [0; 32],
            oversized: false,
        }
    }

    #[test]
    fn energon_idx_has_n_plus_one_offsets() {
        let bytes = energon_tar_idx(&record());
        let offsets: Vec<u64> = bytes.chunks(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap())).collect();
        assert_eq!(offsets, vec![0, 2560, 5120]);
        assert_eq!(energon_index_path(Path::new("d/s-000.tar")), PathBuf::from("d/s-000.tar.idx"));
    }

    #[test]
    fn dali_idx_lines() {
        let text = dali_idx(&record());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "v1.2 2");
        assert_eq!(lines[2], "jpg 3072 600 b.jpg json 4608 2 b.json");
        assert_eq!(dali_index_path(Path::new("d/s-000.tar")), PathBuf::from("d/s-000.idx"));
    }
}
