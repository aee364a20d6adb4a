//! Large values stored in pieces that fill redb's pages.
//!
//! redb keeps each value whole in one leaf page, and a page is 4 KiB times a power of two: a
//! value of exactly 1 MiB (plus its key and the leaf's header) takes a 2 MiB page, so a domain
//! of such values used twice its size on disk, and wrote (and fsynced, and shipped to a
//! resyncing standby's disk) twice its bytes. A value longer than [`PIECE_BYTES`] is therefore
//! stored as pieces of [`PIECE_BYTES`]: the first in its own table's row (`kv` or
//! `policy_content`), the rest in the `pieces` table under ([`Owner`], key, piece number).
//! Every piece but the last fills its page within 3 %.
//!
//! Reading a row: shorter than [`PIECE_BYTES`], it is the whole value; exactly
//! [`PIECE_BYTES`], the value continues in `pieces` when piece 1 exists; longer, it is a whole
//! value written before values were cut (store format 1), read as it is.
//!
//! | `pieces` key | value |
//! |---|---|
//! | owner (`0` kv, `1` policy content) ++ key length (u32 BE) ++ key ++ piece number (u32 BE, from 1) | the piece |

use redb::{ReadTransaction, ReadableTable, TableDefinition};

use super::error::{StorageResult, StoreError};
use domsync_proto::model::DomainId;

/// Pieces after the first of the values longer than [`PIECE_BYTES`].
pub(crate) const PIECES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pieces");

/// Bytes of a full piece: a 256 KiB page less room for the longest key (a policy name or a
/// user key of at most 1 KiB, the piece number) and the leaf header.
pub(crate) const PIECE_BYTES: usize = 248 * 1024;

/// The `pieces` table as a read transaction opens it.
pub(crate) type PiecesTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

/// Which table a piece continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// A user value of the `kv` table.
    Kv = 0,
    /// A policy package of the `policy_content` table.
    PolicyContent = 1,
}

/// The part of `value` kept in its own table's row.
pub(crate) fn first(value: &[u8]) -> &[u8] {
    &value[..value.len().min(PIECE_BYTES)]
}

fn piece_key(owner: Owner, key: &[u8], n: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 9);
    k.push(owner as u8);
    k.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes());
    k.extend_from_slice(key);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// Whether a row of `len` bytes may continue in `pieces`.
fn continues(len: usize) -> bool {
    len == PIECE_BYTES
}

/// Writes the pieces of `value` after its first (nothing for a value of one piece).
pub(crate) fn write_rest(
    domain: &DomainId,
    pieces: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    owner: Owner,
    key: &[u8],
    value: &[u8],
) -> Result<(), StoreError> {
    if value.len() <= PIECE_BYTES {
        return Ok(());
    }
    for (i, piece) in value[PIECE_BYTES..].chunks(PIECE_BYTES).enumerate() {
        let n = u32::try_from(i + 1).map_err(|_| StoreError::InvalidWrite {
            domain: domain.clone(),
            reason: format!("value of {} bytes has too many pieces", value.len()),
        })?;
        pieces
            .insert(piece_key(owner, key, n).as_slice(), piece)
            .or_storage(domain)?;
    }
    Ok(())
}

/// Removes the pieces continuing a row whose first piece was `first`. Returns the whole value
/// it held when the row continued into pieces; `None` when `first` was the whole value (no
/// copy is made on that, the common, path).
pub(crate) fn take_rest(
    domain: &DomainId,
    pieces: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    owner: Owner,
    key: &[u8],
    first: &[u8],
) -> Result<Option<Vec<u8>>, StoreError> {
    if !continues(first.len()) {
        return Ok(None);
    }
    let mut whole = first.to_vec();
    for n in 1u32.. {
        let Some(piece) = pieces
            .remove(piece_key(owner, key, n).as_slice())
            .or_storage(domain)?
        else {
            break;
        };
        whole.extend_from_slice(piece.value());
    }
    Ok(Some(whole))
}

/// The `pieces` table of a read transaction, `None` in a database that has none yet.
pub(crate) fn open(
    domain: &DomainId,
    txn: &ReadTransaction,
) -> Result<Option<PiecesTable>, StoreError> {
    match txn.open_table(PIECES) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e).or_storage(domain),
    }
}

/// The whole value of the row `first` read in `txn`: the `pieces` table is opened only for a
/// row that may continue (a single read keeps its one table lookup otherwise).
pub(crate) fn whole_in(
    domain: &DomainId,
    txn: &ReadTransaction,
    owner: Owner,
    key: &[u8],
    first: Vec<u8>,
) -> Result<Vec<u8>, StoreError> {
    if !continues(first.len()) {
        return Ok(first);
    }
    let pieces = open(domain, txn)?;
    whole(domain, pieces.as_ref(), owner, key, &first)
}

/// The whole value of a row whose first piece is `first`.
pub(crate) fn whole<T: ReadableTable<&'static [u8], &'static [u8]>>(
    domain: &DomainId,
    pieces: Option<&T>,
    owner: Owner,
    key: &[u8],
    first: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let mut whole = first.to_vec();
    let Some(pieces) = pieces.filter(|_| continues(first.len())) else {
        return Ok(whole);
    };
    for n in 1u32.. {
        let Some(piece) = pieces
            .get(piece_key(owner, key, n).as_slice())
            .or_storage(domain)?
        else {
            break;
        };
        whole.extend_from_slice(piece.value());
    }
    Ok(whole)
}

/// Up to `len` bytes from `offset` of the value whose row is `first`, reading only the pieces
/// that hold them.
pub(crate) fn read_range<T: ReadableTable<&'static [u8], &'static [u8]>>(
    domain: &DomainId,
    pieces: Option<&T>,
    owner: Owner,
    key: &[u8],
    first: &[u8],
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, StoreError> {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let end = start.saturating_add(len);
    let mut out = Vec::new();
    if start < first.len() {
        out.extend_from_slice(&first[start..end.min(first.len())]);
    }
    let Some(pieces) = pieces.filter(|_| continues(first.len())) else {
        return Ok(out);
    };
    // Piece n (from 1) holds bytes [n * PIECE_BYTES, (n + 1) * PIECE_BYTES) of the value.
    let mut n = (start / PIECE_BYTES).max(1);
    while n.saturating_mul(PIECE_BYTES) < end {
        let Ok(number) = u32::try_from(n) else { break };
        let Some(piece) = pieces
            .get(piece_key(owner, key, number).as_slice())
            .or_storage(domain)?
        else {
            break;
        };
        let at = n * PIECE_BYTES;
        let bytes = piece.value();
        let from = start.saturating_sub(at).min(bytes.len());
        let to = (end - at).min(bytes.len());
        out.extend_from_slice(&bytes[from..to]);
        if bytes.len() < PIECE_BYTES {
            break;
        }
        n += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase as _, ReadableTableMetadata as _};

    fn db() -> (tempfile::TempDir, redb::Database) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = redb::Database::create(dir.path().join("t.redb")).expect("db");
        (dir, db)
    }

    const MAIN: TableDefinition<&[u8], &[u8]> = TableDefinition::new("main");

    fn put(db: &redb::Database, key: &[u8], value: &[u8]) -> Option<Vec<u8>> {
        let id: DomainId = "t".parse().expect("id");
        let txn = db.begin_write().expect("write");
        let old = {
            let mut main = txn.open_table(MAIN).expect("main");
            let mut pieces = txn.open_table(PIECES).expect("pieces");
            let old = main
                .insert(key, first(value))
                .expect("insert")
                .map(|g| g.value().to_vec());
            let old = old.map(|f| {
                take_rest(&id, &mut pieces, Owner::Kv, key, &f)
                    .expect("take")
                    .unwrap_or(f)
            });
            write_rest(&id, &mut pieces, Owner::Kv, key, value).expect("rest");
            old
        };
        txn.commit().expect("commit");
        old
    }

    fn get(db: &redb::Database, key: &[u8]) -> Option<Vec<u8>> {
        let id: DomainId = "t".parse().expect("id");
        let txn = db.begin_read().expect("read");
        let main = txn.open_table(MAIN).expect("main");
        let pieces = open(&id, &txn).expect("pieces");
        let first = main.get(key).expect("get")?.value().to_vec();
        Some(whole(&id, pieces.as_ref(), Owner::Kv, key, &first).expect("whole"))
    }

    fn value(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn values_of_every_length_around_a_piece_come_back_whole_and_replace_each_other() {
        let (_dir, db) = db();
        let lens = [
            0,
            1,
            PIECE_BYTES - 1,
            PIECE_BYTES,
            PIECE_BYTES + 1,
            2 * PIECE_BYTES,
            3 * PIECE_BYTES + 17,
            1 << 20,
        ];
        let mut previous: Option<Vec<u8>> = None;
        for len in lens.iter().chain(lens.iter().rev()) {
            let v = value(*len);
            let old = put(&db, b"k", &v);
            assert_eq!(old, previous, "the replaced value is returned whole");
            assert_eq!(get(&db, b"k").as_deref(), Some(v.as_slice()), "{len} bytes");
            previous = Some(v);
        }
        // A shorter value left no stale piece behind.
        put(&db, b"k", b"short");
        let txn = db.begin_read().expect("read");
        assert_eq!(
            txn.open_table(PIECES).expect("pieces").len().expect("len"),
            0
        );
    }

    #[test]
    fn keys_that_extend_each_other_keep_their_own_pieces() {
        let (_dir, db) = db();
        let a = value(2 * PIECE_BYTES + 5);
        let b: Vec<u8> = value(PIECE_BYTES + 9).iter().map(|x| x ^ 0xff).collect();
        put(&db, b"ab", &a);
        put(&db, b"ab\0\0\0\x01", &b);
        assert_eq!(get(&db, b"ab"), Some(a));
        assert_eq!(get(&db, b"ab\0\0\0\x01"), Some(b));
    }

    #[test]
    fn a_range_spanning_pieces_reads_the_same_bytes_as_the_whole_value() {
        let (_dir, db) = db();
        let id: DomainId = "t".parse().expect("id");
        let v = value(3 * PIECE_BYTES + 1000);
        put(&db, b"p", &v);
        let txn = db.begin_read().expect("read");
        let main = txn.open_table(MAIN).expect("main");
        let pieces = open(&id, &txn).expect("pieces");
        let first = main
            .get(&b"p"[..])
            .expect("get")
            .expect("row")
            .value()
            .to_vec();
        let len = v.len();
        for (offset, n) in [
            (0, 10),
            (PIECE_BYTES - 3, 7),
            (PIECE_BYTES, PIECE_BYTES),
            (100, 2 * PIECE_BYTES),
            (len - 5, 100),
            (len, 10),
            (len + 10, 10),
            (0, usize::MAX),
        ] {
            let got = read_range(
                &id,
                pieces.as_ref(),
                Owner::Kv,
                b"p",
                &first,
                offset as u64,
                n,
            )
            .expect("range");
            let from = offset.min(len);
            let to = offset.saturating_add(n).min(len);
            assert_eq!(got, v[from..to], "offset {offset} len {n}");
        }
    }

    #[test]
    fn a_value_written_whole_by_format_1_is_read_as_it_is() {
        let (_dir, db) = db();
        let id: DomainId = "t".parse().expect("id");
        let v = value(PIECE_BYTES + 100);
        let txn = db.begin_write().expect("write");
        txn.open_table(MAIN)
            .expect("main")
            .insert(&b"old"[..], v.as_slice())
            .expect("insert");
        txn.commit().expect("commit");
        assert_eq!(get(&db, b"old"), Some(v.clone()), "no pieces table at all");
        put(&db, b"other", &value(2 * PIECE_BYTES));
        assert_eq!(get(&db, b"old"), Some(v.clone()), "with a pieces table");
        // Replacing it returns it whole and writes the new value in pieces.
        assert_eq!(put(&db, b"old", b"new"), Some(v));
        let _ = id;
    }

    #[test]
    fn a_domain_of_one_mebibyte_values_takes_about_its_size_on_disk() {
        let (dir, db) = db();
        for i in 0..32u32 {
            put(&db, format!("blob-{i:04}").as_bytes(), &value(1 << 20));
        }
        drop(db);
        let size = std::fs::metadata(dir.path().join("t.redb"))
            .expect("meta")
            .len();
        // The same values whole, as store format 1 kept them: a 2 MiB page each.
        let whole = redb::Database::create(dir.path().join("whole.redb")).expect("db");
        for i in 0..32u32 {
            let txn = whole.begin_write().expect("write");
            txn.open_table(MAIN)
                .expect("main")
                .insert(format!("blob-{i:04}").as_bytes(), value(1 << 20).as_slice())
                .expect("insert");
            txn.commit().expect("commit");
        }
        drop(whole);
        let whole = std::fs::metadata(dir.path().join("whole.redb"))
            .expect("meta")
            .len();
        assert!(whole >= 64 << 20, "whole values took {whole} bytes");
        assert!(size < 40 << 20, "32 MiB of values took {size} bytes");
    }
}
