//! The content digest of a domain's state.
//!
//! A multiset hash: the SHA-256 of every row (table, key, stored value) is added modulo 2^256.
//! Adding and removing rows updates it in O(1), so every commit keeps it current, and `verify`
//! recomputes it from the tables to catch data damaged at rest. Equal digests at the same lsn
//! mean identical state. (It detects accidents, not a forger who controls many rows.)

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Content digest of a domain's tables (`kv`, `policy`, `crl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct StateDigest(pub [u8; 32]);

/// Which table a row belongs to, as hashed into the digest.
#[derive(Debug, Clone, Copy)]
pub enum DigestTable {
    /// The `kv` table.
    Kv,
    /// The `policy` table.
    Policy,
    /// The legacy `crl` table (CRLs stored before issuer verification).
    Crl,
    /// The `issuer` table.
    Issuer,
    /// The `crls` table (held CRLs, bases and deltas).
    HeldCrl,
}

impl DigestTable {
    fn bytes(self) -> &'static [u8] {
        match self {
            DigestTable::Kv => b"kv\0",
            DigestTable::Policy => b"policy\0",
            DigestTable::Crl => b"crl\0",
            DigestTable::Issuer => b"issuer\0",
            DigestTable::HeldCrl => b"crls\0",
        }
    }
}

fn row_hash(tag: DigestTable, key: &[u8], value: &[u8]) -> [u64; 4] {
    let mut h = Sha256::new();
    h.update(tag.bytes());
    h.update((key.len() as u64).to_le_bytes());
    h.update(key);
    h.update(value);
    let out = h.finalize();
    let mut limbs = [0u64; 4];
    for (limb, chunk) in limbs.iter_mut().zip(out.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *limb = u64::from_le_bytes(b);
    }
    limbs
}

impl StateDigest {
    fn limbs(self) -> [u64; 4] {
        let mut limbs = [0u64; 4];
        for (limb, chunk) in limbs.iter_mut().zip(self.0.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *limb = u64::from_le_bytes(b);
        }
        limbs
    }

    fn set(&mut self, limbs: [u64; 4]) {
        for (chunk, limb) in self.0.chunks_exact_mut(8).zip(limbs) {
            chunk.copy_from_slice(&limb.to_le_bytes());
        }
    }

    /// Adds a row.
    /// Adds the row `(tag, key, value)`.
    pub fn add(&mut self, tag: DigestTable, key: &[u8], value: &[u8]) {
        let (a, b) = (self.limbs(), row_hash(tag, key, value));
        let mut out = [0u64; 4];
        let mut carry = false;
        for i in 0..4 {
            let (s1, c1) = a[i].overflowing_add(b[i]);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            out[i] = s2;
            carry = c1 || c2;
        }
        self.set(out);
    }

    /// Removes a row previously added.
    /// Removes the row `(tag, key, value)` (undoes [`StateDigest::add`]).
    pub fn remove(&mut self, tag: DigestTable, key: &[u8], value: &[u8]) {
        let (a, b) = (self.limbs(), row_hash(tag, key, value));
        let mut out = [0u64; 4];
        let mut borrow = false;
        for i in 0..4 {
            let (d1, b1) = a[i].overflowing_sub(b[i]);
            let (d2, b2) = d1.overflowing_sub(u64::from(borrow));
            out[i] = d2;
            borrow = b1 || b2;
        }
        self.set(out);
    }
}

impl fmt::Display for StateDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_does_not_matter_and_removal_undoes() {
        let mut a = StateDigest::default();
        a.add(DigestTable::Kv, b"k1", b"v1");
        a.add(DigestTable::Kv, b"k2", b"v2");
        let mut b = StateDigest::default();
        b.add(DigestTable::Kv, b"k2", b"v2");
        b.add(DigestTable::Policy, b"p", b"x");
        b.add(DigestTable::Kv, b"k1", b"v1");
        assert_ne!(a, b);
        b.remove(DigestTable::Policy, b"p", b"x");
        assert_eq!(a, b);
        a.remove(DigestTable::Kv, b"k1", b"v1");
        a.remove(DigestTable::Kv, b"k2", b"v2");
        assert_eq!(a, StateDigest::default());
    }

    #[test]
    fn tables_and_splits_are_told_apart() {
        let mut a = StateDigest::default();
        a.add(DigestTable::Kv, b"ab", b"c");
        let mut b = StateDigest::default();
        b.add(DigestTable::Kv, b"a", b"bc");
        let mut c = StateDigest::default();
        c.add(DigestTable::Crl, b"ab", b"c");
        assert_ne!(a, b);
        assert_ne!(a, c);
    }
}
