//! Result codes, the per-thread last error message, and the guard every entry point runs in
//! (no panic crosses into C).

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use ::domsync_client::app::ClientError;
use domsync_proto::app::AppError;

/// Success.
pub const DOMSYNC_OK: c_int = 0;
/// A bug in libdomsync (a panic caught at the boundary): the message says where; please report it.
pub const DOMSYNC_ERR_INTERNAL: c_int = -1;
/// A NULL pointer, text that is not UTF-8, a bad domain, key or policy name, a value too
/// large, or a request the node found malformed.
pub const DOMSYNC_ERR_INVALID_ARGUMENT: c_int = -2;
/// No such key (`domsync_get`), policy package or CRL; or no conflict to report.
pub const DOMSYNC_ERR_NOT_FOUND: c_int = -3;
/// The watch has no event queued now: wait for its file descriptor to become readable.
pub const DOMSYNC_AGAIN: c_int = -4;
/// No node could be reached (the socket is missing, nobody listens, TLS refused).
pub const DOMSYNC_ERR_CONNECT: c_int = -5;
/// The node answered something this library cannot read.
pub const DOMSYNC_ERR_PROTOCOL: c_int = -6;
/// The domain is not granted to this application there, or is granted read-only.
pub const DOMSYNC_ERR_FORBIDDEN: c_int = -7;
/// The transaction reached a node that is not the domain's active; nothing was written.
pub const DOMSYNC_ERR_NOT_ACTIVE: c_int = -8;
/// The node had not applied the lsn asked for (`at_least_lsn`) after waiting.
pub const DOMSYNC_ERR_BEHIND: c_int = -9;
/// A condition of the transaction failed; nothing was written (`domsync_txn_conflict`).
pub const DOMSYNC_ERR_CONFLICT: c_int = -10;
/// A watch cannot resume from its position: the node's log starts after it. Read again
/// (`domsync_scan`) and watch from the scan's position.
pub const DOMSYNC_ERR_COMPACTED: c_int = -11;
/// A watch cannot resume from its position: it was lost in a failover. Read again and watch
/// from the scan's position.
pub const DOMSYNC_ERR_DIVERGED: c_int = -12;
/// The write was refused by a check of the store (sizes, names, a CRL that does not verify).
pub const DOMSYNC_ERR_REFUSED: c_int = -13;
/// The write committed on the active (the position is filled in) but its standbys did not
/// confirm it in time.
pub const DOMSYNC_ERR_UNCONFIRMED: c_int = -14;
/// A limit of the node was reached (connections, watches): retry later.
pub const DOMSYNC_ERR_BUSY: c_int = -15;
/// The node failed to read or write its store.
pub const DOMSYNC_ERR_UNAVAILABLE: c_int = -16;
/// A scan could not be continued at one position (keys kept changing): start it again.
pub const DOMSYNC_ERR_CONTINUATION_GONE: c_int = -17;

/// Why a call failed: its code and one line saying what happened and what to do.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: c_int,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: c_int, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(DOMSYNC_ERR_INVALID_ARGUMENT, message)
    }
}

/// The code of an application error.
pub(crate) fn app_code(e: &AppError) -> c_int {
    match e {
        AppError::Forbidden { .. } | AppError::ReadOnly { .. } => DOMSYNC_ERR_FORBIDDEN,
        AppError::NotActive { .. } => DOMSYNC_ERR_NOT_ACTIVE,
        AppError::Behind { .. } => DOMSYNC_ERR_BEHIND,
        AppError::Conflict { .. } => DOMSYNC_ERR_CONFLICT,
        AppError::ContinuationGone { .. } => DOMSYNC_ERR_CONTINUATION_GONE,
        AppError::Compacted { .. } => DOMSYNC_ERR_COMPACTED,
        AppError::Diverged { .. } => DOMSYNC_ERR_DIVERGED,
        AppError::Refused(_) => DOMSYNC_ERR_REFUSED,
        AppError::Unconfirmed { .. } => DOMSYNC_ERR_UNCONFIRMED,
        AppError::NoSuchPolicy { .. } => DOMSYNC_ERR_NOT_FOUND,
        AppError::BadRequest(_) => DOMSYNC_ERR_INVALID_ARGUMENT,
        AppError::Busy(_) => DOMSYNC_ERR_BUSY,
        AppError::Unavailable(_) => DOMSYNC_ERR_UNAVAILABLE,
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        let code = match &e {
            ClientError::App(app) => app_code(app),
            ClientError::Connect(_) => DOMSYNC_ERR_CONNECT,
            ClientError::Protocol(_) => DOMSYNC_ERR_PROTOCOL,
            ClientError::Usage(_) => DOMSYNC_ERR_INVALID_ARGUMENT,
        };
        Failure::new(code, e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `message` as this thread's last error (NUL bytes, which cannot be in a C string,
/// become spaces).
pub(crate) fn set_last_error(message: &str) {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|last| *last.borrow_mut() = text);
}

fn clear_last_error() {
    LAST_ERROR.with(|last| *last.borrow_mut() = CString::default());
}

/// Runs the body of an entry point: its `Ok` is [`DOMSYNC_OK`], its `Err` the failure's code
/// with the message kept for [`domsync_last_error`], a panic [`DOMSYNC_ERR_INTERNAL`].
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Failure>) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            clear_last_error();
            DOMSYNC_OK
        }
        Ok(Err(failure)) => {
            set_last_error(&failure.message);
            failure.code
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            set_last_error(&format!(
                "internal error in libdomsync ({what}); please report it with what the program was doing"
            ));
            DOMSYNC_ERR_INTERNAL
        }
    }
}

/// Runs a function that returns nothing (the free functions): a panic is swallowed, never
/// unwound into C.
pub(crate) fn guard_void(body: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(body));
}

/// The message of the last failed call on this thread, as one line of UTF-8 text; `""` when
/// the last call succeeded. Never NULL. The text belongs to the library and stays valid until
/// the next `domsync_` call on the same thread: copy it to keep it.
#[no_mangle]
pub extern "C" fn domsync_last_error() -> *const c_char {
    let mut out: *const c_char = c"".as_ptr();
    guard_void(|| {
        out = LAST_ERROR.with(|last| last.borrow().as_ptr());
    });
    out
}

/// The name of a result code (`"DOMSYNC_ERR_CONFLICT"`), a static string; `"DOMSYNC_UNKNOWN"`
/// for a code this library does not return.
#[no_mangle]
pub extern "C" fn domsync_code_name(code: c_int) -> *const c_char {
    let name: &'static std::ffi::CStr = match code {
        DOMSYNC_OK => c"DOMSYNC_OK",
        DOMSYNC_ERR_INTERNAL => c"DOMSYNC_ERR_INTERNAL",
        DOMSYNC_ERR_INVALID_ARGUMENT => c"DOMSYNC_ERR_INVALID_ARGUMENT",
        DOMSYNC_ERR_NOT_FOUND => c"DOMSYNC_ERR_NOT_FOUND",
        DOMSYNC_AGAIN => c"DOMSYNC_AGAIN",
        DOMSYNC_ERR_CONNECT => c"DOMSYNC_ERR_CONNECT",
        DOMSYNC_ERR_PROTOCOL => c"DOMSYNC_ERR_PROTOCOL",
        DOMSYNC_ERR_FORBIDDEN => c"DOMSYNC_ERR_FORBIDDEN",
        DOMSYNC_ERR_NOT_ACTIVE => c"DOMSYNC_ERR_NOT_ACTIVE",
        DOMSYNC_ERR_BEHIND => c"DOMSYNC_ERR_BEHIND",
        DOMSYNC_ERR_CONFLICT => c"DOMSYNC_ERR_CONFLICT",
        DOMSYNC_ERR_COMPACTED => c"DOMSYNC_ERR_COMPACTED",
        DOMSYNC_ERR_DIVERGED => c"DOMSYNC_ERR_DIVERGED",
        DOMSYNC_ERR_REFUSED => c"DOMSYNC_ERR_REFUSED",
        DOMSYNC_ERR_UNCONFIRMED => c"DOMSYNC_ERR_UNCONFIRMED",
        DOMSYNC_ERR_BUSY => c"DOMSYNC_ERR_BUSY",
        DOMSYNC_ERR_UNAVAILABLE => c"DOMSYNC_ERR_UNAVAILABLE",
        DOMSYNC_ERR_CONTINUATION_GONE => c"DOMSYNC_ERR_CONTINUATION_GONE",
        _ => c"DOMSYNC_UNKNOWN",
    };
    name.as_ptr()
}
