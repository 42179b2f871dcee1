//! The frame format of segment files (see [`super::segment`] for the table): checking a frame read
//! back, decoding its body, and — for repair — a filler frame that stands in for damaged bytes.
//!
//! Invariants: a frame is believed only whole and with a matching CRC-32; a length above
//! [`MAX_FRAME_BODY`] is never believed; a filler frame has tenant serial 0, which no tenant has
//! (serials start at 1), and no items, so readers and replays pass over it.

use serde::de::DeserializeOwned;

use super::StoreError;

pub(super) const FRAME_HEADER: usize = 24;
pub(super) const BODY_VERSION: u8 = 1;
/// No frame is larger than this: a corrupt length is not believed.
pub(super) const MAX_FRAME_BODY: usize = 64 << 20;
/// In the length field: this frame ends its group.
pub(super) const ENDS_GROUP: u32 = 1 << 31;
/// The tenant serial of a filler frame.
pub(super) const FILLER_TENANT: u64 = 0;

/// The CRC of a frame: its length field and everything after the CRC field.
pub(super) fn crc(frame: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(frame.get(0..4).unwrap_or_default());
    h.update(frame.get(8..).unwrap_or_default());
    h.finalize()
}

/// The length of the frame `bytes` starts with, from its header (not yet checked).
pub(super) fn frame_len(bytes: &[u8]) -> Option<usize> {
    let body = (u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) & !ENDS_GROUP) as usize;
    (body <= MAX_FRAME_BODY).then_some(FRAME_HEADER + body)
}

/// Whether a (checked) frame ends its group.
pub(super) fn ends_group(frame: &[u8]) -> bool {
    frame.get(3).is_some_and(|b| b & 0x80 != 0)
}

/// Checks a whole frame: `((tenant, first id), body)`, or `None` when its length or CRC is wrong.
pub fn check_frame(frame: &[u8]) -> Option<((u64, u64), &[u8])> {
    let len = frame_len(frame)?;
    if frame.len() != len {
        return None;
    }
    let stored = u32::from_le_bytes(frame.get(4..8)?.try_into().ok()?);
    if crc(frame) != stored {
        return None;
    }
    let tenant = u64::from_le_bytes(frame.get(8..16)?.try_into().ok()?);
    let first = u64::from_le_bytes(frame.get(16..24)?.try_into().ok()?);
    Some(((tenant, first), frame.get(FRAME_HEADER..)?))
}

/// Decodes a body's items, or only item `only` (then the result holds it alone, or nothing when the
/// record has fewer items).
pub fn decode_body<T: DeserializeOwned>(body: &[u8], only: Option<usize>) -> Result<Vec<T>, StoreError> {
    let bad = || {
        StoreError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed segment record body"))
    };
    let (&version, rest) = body.split_first().ok_or_else(bad)?;
    if version != BODY_VERSION {
        return Err(StoreError::UnknownVersion { key: b"segment".to_vec(), version });
    }
    let count = u32::from_le_bytes(rest.get(0..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
    let mut at = 4usize;
    let mut out = Vec::with_capacity(if only.is_some() { 1 } else { count.min(4096) });
    for i in 0..count {
        let n =
            u32::from_le_bytes(rest.get(at..at + 4).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
        let bytes = rest.get(at + 4..at + 4 + n).ok_or_else(bad)?;
        at += 4 + n;
        match only {
            Some(j) if j != i => continue,
            _ => {}
        }
        let item: T = rmp_serde::from_slice(bytes)
            .map_err(|source| StoreError::Decode { key: b"segment".to_vec(), source })?;
        out.push(item);
        if only.is_some() {
            break;
        }
    }
    Ok(out)
}

/// A frame of exactly `size` bytes that holds nothing: written by repair over damaged bytes between
/// whole frames, so that offsets after it stay what the index says. `None` when `size` is smaller than
/// an empty frame or too large for one.
pub(super) fn filler(size: usize) -> Option<Vec<u8>> {
    let body = size.checked_sub(FRAME_HEADER).filter(|b| *b >= 5 && *b <= MAX_FRAME_BODY)?;
    let mut frame = vec![0u8; size];
    let field = u32::try_from(body).ok()? | ENDS_GROUP;
    frame[0..4].copy_from_slice(&field.to_le_bytes());
    frame[8..16].copy_from_slice(&FILLER_TENANT.to_le_bytes());
    frame[FRAME_HEADER] = BODY_VERSION; // then an item count of 0 and zeros
    let crc = crc(&frame);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    Some(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filler_frame_checks_holds_nothing_and_ends_its_group() {
        for size in [29, 30, 4_096] {
            let f = filler(size).unwrap_or_default();
            assert_eq!(f.len(), size);
            let ((tenant, _), body) = check_frame(&f).unwrap_or(((9, 9), &[]));
            assert_eq!(tenant, FILLER_TENANT);
            assert!(ends_group(&f));
            assert!(decode_body::<crate::model::EventRecord>(body, None).is_ok_and(|v| v.is_empty()));
        }
        assert_eq!(filler(28), None, "too small for a frame");
    }
}
