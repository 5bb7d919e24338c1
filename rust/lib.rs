//! fastwds core: ustar encoding, portable keys, shard rotation and sidecar indexes in plain Rust;
//! `bindings` is the thin PyO3 layer exposed to Python as `fastwds._core`.
pub mod arrow;
pub mod chat;
pub mod error;
pub mod files;
mod hashed_file;
pub mod index;
pub mod inflate;
pub mod key;
pub mod media;
pub mod pattern;
mod publish;
pub mod shard;
pub mod tar;

#[cfg(feature = "python")]
mod bindings;
