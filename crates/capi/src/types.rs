//! The plain structs C sees (`#[repr(C)]`): buffers, positions, who served a read.

use std::ffi::{c_char, c_int};

use domsync_proto::gateway::Served;
use domsync_proto::model::{Epoch, Lsn, NodeId, Position, Role};

use crate::error::{guard_void, Failure};

/// Bytes of a node name with its terminating NUL (names have at most 64 bytes).
pub const DOMSYNC_NAME_BYTES: usize = 65;

/// `domsync_served.role`: the node is the domain's active.
pub const DOMSYNC_ROLE_ACTIVE: c_int = 1;
/// `domsync_served.role`: the node is a standby of the domain.
pub const DOMSYNC_ROLE_STANDBY: c_int = 2;

/// Bytes owned by the caller once returned: free with `domsync_buf_free`. `data[len]` is
/// always 0 (not counted in `len`), so text can be used as a C string. A zeroed buffer
/// (`data` NULL) is empty and may be freed too.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct domsync_buf {
    /// The bytes, followed by one 0 byte; NULL when nothing was returned.
    pub data: *mut u8,
    /// How many bytes, the final 0 not counted.
    pub len: usize,
}

impl domsync_buf {
    /// An empty buffer (nothing to free).
    pub(crate) fn empty() -> domsync_buf {
        domsync_buf {
            data: std::ptr::null_mut(),
            len: 0,
        }
    }

    /// Hands `bytes` (and a final 0) over to C.
    pub(crate) fn from_vec(mut bytes: Vec<u8>) -> domsync_buf {
        let len = bytes.len();
        bytes.push(0);
        let boxed: Box<[u8]> = bytes.into_boxed_slice();
        domsync_buf {
            data: Box::into_raw(boxed).cast::<u8>(),
            len,
        }
    }

    /// Takes the bytes back and frees them; leaves the buffer zeroed.
    pub(crate) fn release(&mut self) {
        if !self.data.is_null() {
            let slice = std::ptr::slice_from_raw_parts_mut(self.data, self.len + 1);
            // SAFETY: `data` and `len + 1` are those of a `Box<[u8]>` made by `from_vec`,
            // not freed yet (the buffer is zeroed after freeing).
            drop(unsafe { Box::from_raw(slice) });
        }
        *self = domsync_buf::empty();
    }
}

/// Frees a buffer returned by the library and zeroes it (`data` NULL, `len` 0). NULL, and a
/// zeroed buffer, are ignored; freeing the same buffer twice is therefore safe, but a copy of
/// the struct must not be freed as well.
///
/// # Safety
/// `buf`: NULL or a buffer filled in by the library.
#[no_mangle]
pub unsafe extern "C" fn domsync_buf_free(buf: *mut domsync_buf) {
    guard_void(|| {
        // SAFETY: NULL or a buffer filled in by this library.
        if let Some(buf) = unsafe { buf.as_mut() } {
            buf.release();
        }
    });
}

/// Where a domain's replica stands: the lsn, epoch and chain of its last record. Pass it back
/// (`domsync_watch_start` `from`) to resume a watch there.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy)]
pub struct domsync_position {
    /// Lsn of the last record (0: none). The version of keys a transaction changed.
    pub lsn: u64,
    /// Promotion counter of the epoch of that record.
    pub epoch_term: u64,
    /// The node that was active in that epoch, NUL-terminated.
    pub epoch_node: [c_char; DOMSYNC_NAME_BYTES],
    /// Running checksum over every record up to `lsn`.
    pub chain: u32,
}

/// Who served a read: the node, its role, and the position it read at.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy)]
pub struct domsync_served {
    /// The node's name, NUL-terminated.
    pub node: [c_char; DOMSYNC_NAME_BYTES],
    /// `DOMSYNC_ROLE_ACTIVE` or `DOMSYNC_ROLE_STANDBY`.
    pub role: c_int,
    /// The position of the read.
    pub position: domsync_position,
}

/// A NUL-terminated copy of a name (names are at most 64 bytes; longer text is cut).
pub(crate) fn name_bytes(name: &str) -> [c_char; DOMSYNC_NAME_BYTES] {
    let mut out = [0 as c_char; DOMSYNC_NAME_BYTES];
    for (slot, b) in out
        .iter_mut()
        .zip(name.as_bytes().iter().take(DOMSYNC_NAME_BYTES - 1))
    {
        *slot = *b as c_char;
    }
    out
}

/// The text of a NUL-terminated name array.
fn name_text(name: &[c_char; DOMSYNC_NAME_BYTES], what: &str) -> Result<String, Failure> {
    let len = name.iter().position(|c| *c == 0).ok_or_else(|| {
        Failure::invalid(format!(
            "{what} is not NUL-terminated within {DOMSYNC_NAME_BYTES} bytes"
        ))
    })?;
    let bytes: Vec<u8> = name[..len].iter().map(|c| *c as u8).collect();
    String::from_utf8(bytes).map_err(|_| Failure::invalid(format!("{what} is not UTF-8")))
}

impl domsync_position {
    /// The zeroed position (nothing yet).
    pub(crate) fn zeroed() -> domsync_position {
        domsync_position {
            lsn: 0,
            epoch_term: 0,
            epoch_node: [0; DOMSYNC_NAME_BYTES],
            chain: 0,
        }
    }

    pub(crate) fn from_position(p: &Position) -> domsync_position {
        domsync_position {
            lsn: p.lsn.0,
            epoch_term: p.epoch.term,
            epoch_node: name_bytes(p.epoch.node.as_str()),
            chain: p.chain,
        }
    }

    /// The position it names.
    pub(crate) fn to_position(self) -> Result<Position, Failure> {
        let node = name_text(&self.epoch_node, "the position's epoch_node")?;
        let node = NodeId::new(node).map_err(|e| {
            Failure::invalid(format!(
                "the position's epoch_node: {e} (pass a position filled in by libdomsync)"
            ))
        })?;
        Ok(Position {
            epoch: Epoch {
                term: self.epoch_term,
                node,
            },
            lsn: Lsn(self.lsn),
            chain: self.chain,
        })
    }
}

impl domsync_served {
    pub(crate) fn zeroed() -> domsync_served {
        domsync_served {
            node: [0; DOMSYNC_NAME_BYTES],
            role: 0,
            position: domsync_position::zeroed(),
        }
    }

    pub(crate) fn from_served(s: &Served) -> domsync_served {
        domsync_served {
            node: name_bytes(s.node.as_str()),
            role: role_code(s.role),
            position: domsync_position::from_position(&s.position),
        }
    }
}

/// The C code of a role.
pub(crate) fn role_code(role: Role) -> c_int {
    match role {
        Role::Active => DOMSYNC_ROLE_ACTIVE,
        Role::Standby => DOMSYNC_ROLE_STANDBY,
    }
}
