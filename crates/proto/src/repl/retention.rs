//! Log retention: how much of a domain's change log the active keeps (DESIGN.md §5).

use crate::model::Lsn;

/// Where the active's log stands, and what its standbys hold durably.
#[derive(Debug, Clone)]
pub struct RetentionInput<'a> {
    /// The active's last lsn.
    pub position: Lsn,
    /// First lsn held in the log.
    pub log_start: Lsn,
    /// Bytes of the records held.
    pub log_bytes: u64,
    /// Most bytes to keep.
    pub cap_bytes: u64,
    /// Each configured standby's durable lsn; empty on a standby replica or an active without
    /// standbys (then only the size cap applies).
    pub standby_durable: &'a [Lsn],
}

/// The lsn below which the log can be truncated, if any: records every standby holds
/// durably are not needed for it; beyond `cap_bytes` the oldest records go even if a standby
/// still needs them (it will be resynced by snapshot instead).
///
/// ```
/// use domsync_proto::model::Lsn;
/// use domsync_proto::repl::{retention_cut, RetentionInput};
/// let input = RetentionInput {
///     position: Lsn(1000), log_start: Lsn(1), log_bytes: 100_000, cap_bytes: 1 << 20,
///     standby_durable: &[Lsn(900), Lsn(950)],
/// };
/// assert_eq!(retention_cut(&input), Some(Lsn(901)));
/// // A lagging standby holds the log back...
/// let lagging = RetentionInput { standby_durable: &[Lsn(10), Lsn(950)], ..input.clone() };
/// assert_eq!(retention_cut(&lagging), Some(Lsn(11)));
/// // ...up to the size cap (5,000 bytes = the last 50 records here).
/// let capped = RetentionInput { cap_bytes: 5_000, ..lagging };
/// assert_eq!(retention_cut(&capped), Some(Lsn(951)));
/// // Without standbys (or on a standby) only the cap applies.
/// let alone = RetentionInput { standby_durable: &[], ..input.clone() };
/// assert_eq!(retention_cut(&alone), None);
/// assert_eq!(retention_cut(&RetentionInput { cap_bytes: 5_000, ..alone }), Some(Lsn(951)));
/// ```
pub fn retention_cut(input: &RetentionInput<'_>) -> Option<Lsn> {
    let end = input.position.next();
    let by_standbys = input
        .standby_durable
        .iter()
        .min()
        .map_or(Lsn::ZERO, |l| l.next())
        .min(end);
    let held = end.0.saturating_sub(input.log_start.0);
    let by_size = if input.log_bytes > input.cap_bytes && held > 0 {
        // Records of average size that fit under the cap (rounded down).
        let keep = u128::from(input.cap_bytes) * u128::from(held) / u128::from(input.log_bytes);
        Lsn(end
            .0
            .saturating_sub(u64::try_from(keep).unwrap_or(u64::MAX)))
    } else {
        Lsn::ZERO
    };
    let cut = by_standbys.max(by_size);
    (cut > input.log_start).then_some(cut)
}
