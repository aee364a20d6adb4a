//! Arguments from C, checked: NULL pointers, text that is not UTF-8, names, lengths.

use std::ffi::{c_char, CStr};

use domsync_proto::model::DomainId;

use crate::error::Failure;

/// A required handle or input struct.
pub(crate) fn handle<'a, T>(ptr: *const T, what: &str) -> Result<&'a T, Failure> {
    // SAFETY: the caller passes a pointer it got from this library (or to its own struct),
    // valid for the call; NULL is refused here.
    unsafe { ptr.as_ref() }.ok_or_else(|| Failure::invalid(format!("{what} is NULL")))
}

/// A required handle the call changes.
pub(crate) fn handle_mut<'a, T>(ptr: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: as `handle`; the handle is documented as used by one thread at a time.
    unsafe { ptr.as_mut() }.ok_or_else(|| Failure::invalid(format!("{what} is NULL")))
}

/// A required out parameter.
pub(crate) fn out<'a, T>(ptr: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: the caller passes storage for one `T`, valid for the call; NULL is refused.
    unsafe { ptr.as_mut() }.ok_or_else(|| Failure::invalid(format!("{what} is NULL")))
}

/// Writes `value` to an out parameter when it is not NULL (optional outputs).
pub(crate) fn set_optional<T>(ptr: *mut T, value: T) {
    // SAFETY: as `out`; NULL means the caller does not want it.
    if let Some(slot) = unsafe { ptr.as_mut() } {
        *slot = value;
    }
}

/// Text: not NULL, UTF-8.
pub(crate) fn text<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::invalid(format!("{what} is NULL")));
    }
    // SAFETY: a non-NULL pointer to a NUL-terminated string, valid for the call.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    std::str::from_utf8(bytes).map_err(|e| {
        Failure::invalid(format!(
            "{what} is not UTF-8 (byte {} is not): pass UTF-8 text",
            e.valid_up_to()
        ))
    })
}

/// Raw bytes of a NUL-terminated string (paths): not NULL.
pub(crate) fn c_bytes<'a>(ptr: *const c_char, what: &str) -> Result<&'a [u8], Failure> {
    if ptr.is_null() {
        return Err(Failure::invalid(format!("{what} is NULL")));
    }
    // SAFETY: as `text`.
    Ok(unsafe { CStr::from_ptr(ptr) }.to_bytes())
}

/// A domain name.
pub(crate) fn domain(ptr: *const c_char) -> Result<DomainId, Failure> {
    let name = text(ptr, "domain")?;
    DomainId::new(name).map_err(|e| Failure::invalid(e.to_string()))
}

/// `len` bytes at `ptr`; NULL is allowed for an empty buffer only.
pub(crate) fn bytes<'a>(ptr: *const u8, len: usize, what: &str) -> Result<&'a [u8], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Failure::invalid(format!(
            "{what} is NULL but its length is {len}"
        )));
    }
    if len > isize::MAX as usize {
        return Err(Failure::invalid(format!(
            "{what} length {len} is not a buffer length"
        )));
    }
    // SAFETY: the caller passes `len` readable bytes at a non-NULL `ptr`, valid for the call.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// A key: 1 byte at least (the node checks the upper bound).
pub(crate) fn key<'a>(ptr: *const u8, len: usize) -> Result<&'a [u8], Failure> {
    let key = bytes(ptr, len, "key")?;
    if key.is_empty() {
        return Err(Failure::invalid(
            "the key is empty: keys have 1 byte at least",
        ));
    }
    Ok(key)
}
