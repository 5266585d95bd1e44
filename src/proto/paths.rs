//! Paths travel as raw bytes: a Linux path need not be UTF-8.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

pub fn serialize<S: Serializer>(paths: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
    let raw: Vec<&[u8]> = paths.iter().map(|p| p.as_os_str().as_bytes()).collect();
    raw.serialize(s)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    let raw: Vec<Vec<u8>> = Vec::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|b| PathBuf::from(OsString::from_vec(b)))
        .collect())
}
