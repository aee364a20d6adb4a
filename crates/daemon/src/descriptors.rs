//! The descriptor budget: how many file descriptors the daemon needs for its domains,
//! listeners and bounded connections, against the process's open-file limit.
//!
//! At start the soft limit (`RLIMIT_NOFILE`) is raised to the hard limit, so that domains
//! added later (`domsync domain add`, a reload) find room without a restart, and a budget
//! the hard limit cannot hold refuses the start in one line naming the limit and the fix,
//! instead of domains failing one by one with "Too many open files" (EMFILE). Reloads and
//! domain adds are checked against the same limit.
//!
//! What is counted (QUIC connections, whatever their number, share their endpoint's one UDP
//! socket and cost no descriptor: gateway, remote admin and remote application connections
//! are free here):
//!
//! | what                                   | descriptors                      |
//! |----------------------------------------|----------------------------------|
//! | each domain                            | [`PER_DOMAIN`]: its database file and its current log segment (the store's lock is taken on the database file itself) |
//! | each QUIC endpoint (`listen`, `gateway_listen`) | 1                       |
//! | the admin socket                       | 1 + its connections ([`crate::admin_server::MAX_CONNECTIONS`]) |
//! | the application socket                 | 1 + its connections ([`crate::app_server::MAX_CONNECTIONS`]) |
//! | the metrics listener (`node.metrics`)  | 1 + its connections ([`crate::metrics::MAX_CONNECTIONS`]) |
//! | the process                            | [`PROCESS`]: stdio, the runtime's epoll and wakers, the signal pipe, notifications |
//! | margin                                 | [`MARGIN`]: files read on reload, directories synced, a database rebuilt aside by a resync, refused connections |

use crate::Config;

/// Descriptors each domain holds open: its database file and its current log segment.
pub const PER_DOMAIN: u64 = 2;

/// Descriptors of the process itself: stdin, stdout, stderr, the runtime's epoll and waker,
/// the signal pipe, the service manager's notification socket, with room to spare.
pub const PROCESS: u64 = 16;

/// Descriptors held for a short time: configuration and TLS files read on reload, directories
/// opened to be synced, a domain's database being rebuilt aside by a resync, connections
/// accepted only to be refused.
pub const MARGIN: u64 = 128;

/// What the daemon holds open, by kind (see the module's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Needs {
    /// Domains with a replica on this node.
    pub domains: u64,
    /// QUIC endpoints (one UDP socket each).
    pub endpoints: u64,
    /// Listening sockets on the local machine (admin, application, metrics).
    pub listeners: u64,
    /// Connections accepted at once on those listeners, all together.
    pub connections: u64,
}

impl Needs {
    /// The needs of `config` with `domains` domains here.
    pub(crate) fn of(config: &Config, domains: usize) -> Needs {
        let metrics = config.node.metrics.is_some();
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        Needs {
            domains: count(domains),
            endpoints: 1 + u64::from(config.node.gateway_listen.is_some()),
            listeners: 2 + u64::from(metrics),
            connections: count(crate::admin_server::MAX_CONNECTIONS)
                .saturating_add(count(crate::app_server::MAX_CONNECTIONS))
                .saturating_add(if metrics {
                    count(crate::metrics::MAX_CONNECTIONS)
                } else {
                    0
                }),
        }
    }

    /// Every descriptor needed, margin included; `None` when it does not fit a `u64`.
    pub(crate) fn total(&self) -> Option<u64> {
        self.domains
            .checked_mul(PER_DOMAIN)?
            .checked_add(self.endpoints)?
            .checked_add(self.listeners)?
            .checked_add(self.connections)?
            .checked_add(PROCESS)?
            .checked_add(MARGIN)
    }
}

/// The open-file limits of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit {
    /// The soft limit in force (`ulimit -n`).
    pub soft: u64,
    /// The hard limit (the most the soft limit may be raised to; `LimitNOFILE=` of the
    /// unit).
    pub hard: u64,
}

/// A budget the limit does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("need {} file descriptors for {} domains ({PER_DOMAIN} each, plus {} for sockets, connections and margin) but the open-file limit is {}: raise LimitNOFILE= in the unit (systemctl edit domsyncd) or ulimit -n, or hold fewer domains on this node", group(*.needed), group(*.domains), group(.needed.saturating_sub(.domains.saturating_mul(PER_DOMAIN))), group(*.limit))]
pub struct Shortage {
    /// Descriptors needed (`u64::MAX` when beyond counting).
    pub needed: u64,
    /// Domains on this node.
    pub domains: u64,
    /// The open-file limit (the hard one, the soft one raised to it).
    pub limit: u64,
}

/// `n` with its thousands separated by commas (`10,240`).
pub(crate) fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Whether `needs` fit in `limit`.
///
/// # Errors
/// [`Shortage`] naming the numbers and the fix.
pub(crate) fn check(needs: &Needs, limit: u64) -> Result<u64, Shortage> {
    match needs.total() {
        Some(needed) if needed <= limit => Ok(needed),
        needed => Err(Shortage {
            needed: needed.unwrap_or(u64::MAX),
            domains: needs.domains,
            limit,
        }),
    }
}

/// The process's open-file limits now.
///
/// # Errors
/// What `getrlimit` said.
pub(crate) fn current() -> std::io::Result<Limit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a struct of the right type to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // `rlim_t` is `u64` on the targets served; the casts keep the others compiling.
    #[allow(clippy::unnecessary_cast)]
    let (soft, hard) = (lim.rlim_cur as u64, lim.rlim_max as u64);
    Ok(Limit { soft, hard })
}

/// Sets the soft limit to `soft`, the hard one unchanged.
fn set_soft(soft: u64, hard: u64) -> std::io::Result<()> {
    #[allow(clippy::unnecessary_cast)]
    let lim = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: a valid struct, read only.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the soft open-file limit to the hard one (at least to `needed` when the hard limit
/// is unlimited and the kernel refuses that); returns the limits then in force. A refusal is
/// logged and the limits left as they were: the budget check names the shortage.
pub(crate) fn raise(needed: u64) -> Limit {
    let now = match current() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit (getrlimit); assuming 1024");
            return Limit {
                soft: 1024,
                hard: 1024,
            };
        }
    };
    if now.soft >= now.hard {
        return now;
    }
    // An unlimited hard limit cannot be the soft one on Linux (fs.nr_open caps it): then
    // the budget is what is asked for.
    let tries = [now.hard, needed.max(now.soft)];
    for soft in tries {
        if soft <= now.soft {
            continue;
        }
        match set_soft(soft, now.hard) {
            Ok(()) => return current().unwrap_or(Limit { soft, ..now }),
            Err(e) => {
                tracing::debug!(soft, hard = now.hard, error = %e, "raising the open-file limit refused");
            }
        }
    }
    tracing::warn!(
        soft = now.soft,
        hard = now.hard,
        "cannot raise the open-file soft limit to the hard one; keeping {}",
        now.soft
    );
    now
}

/// The cause and fix of EMFILE.
const OUT_OF_DESCRIPTORS: &str = "the process is out of file descriptors: raise LimitNOFILE= in the unit (systemctl edit domsyncd) or ulimit -n, or hold fewer domains on this node";

/// The cause and fix of ENFILE.
const SYSTEM_OUT_OF_DESCRIPTORS: &str =
    "the system is out of file descriptors: raise fs.file-max (sysctl) or stop what holds them";

/// The fix to print after an I/O error creating a socket or opening a file: the descriptor
/// limit for EMFILE and ENFILE, `otherwise` for anything else.
pub(crate) fn advice<'a>(e: &std::io::Error, otherwise: &'a str) -> &'a str {
    match e.raw_os_error() {
        Some(libc::EMFILE) => OUT_OF_DESCRIPTORS,
        Some(libc::ENFILE) => SYSTEM_OUT_OF_DESCRIPTORS,
        _ => otherwise,
    }
}

/// The fix to add to an error whose system message (`... (os error N)`, as std formats it)
/// says the process ran out of a resource: descriptors, threads or memory. `None` for any
/// other error.
pub(crate) fn resource_advice(message: &str) -> Option<&'static str> {
    let code = |n: i32| message.contains(&format!("(os error {n})"));
    if code(libc::EMFILE) {
        Some(OUT_OF_DESCRIPTORS)
    } else if code(libc::ENFILE) {
        Some(SYSTEM_OUT_OF_DESCRIPTORS)
    } else if code(libc::EAGAIN) && message.contains("thread") {
        Some("the process may not start more threads: raise TasksMax= in the unit (systemctl edit domsyncd) or kernel.threads-max, or free memory")
    } else if code(libc::ENOMEM) {
        Some("out of memory: free memory or raise MemoryMax= of the unit, or hold fewer domains on this node")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(domains: u64) -> Needs {
        Needs {
            domains,
            endpoints: 1,
            listeners: 2,
            connections: 64 + 256,
        }
    }

    #[test]
    fn a_budget_counts_two_descriptors_a_domain_and_every_socket() {
        let fixed = 1 + 2 + 64 + 256 + PROCESS + MARGIN;
        assert_eq!(needs(0).total(), Some(fixed));
        assert_eq!(needs(1_000).total(), Some(2_000 + fixed));
        assert_eq!(needs(5_000).total(), Some(10_000 + fixed));
    }

    #[test]
    fn a_budget_beyond_counting_is_refused_not_wrapped() {
        assert_eq!(needs(u64::MAX / 2 + 1).total(), None);
        assert_eq!(needs(u64::MAX).total(), None);
        let huge = Needs {
            domains: 0,
            endpoints: u64::MAX,
            listeners: 1,
            connections: 0,
        };
        assert_eq!(huge.total(), None);
        let e = check(&needs(u64::MAX), u64::MAX).unwrap_err();
        assert_eq!(e.needed, u64::MAX);
    }

    #[test]
    fn a_shortage_names_the_numbers_the_limit_and_the_fix_in_one_line() {
        assert_eq!(check(&needs(100), 1_024), Ok(200 + 467));
        let e = check(&needs(5_000), 1_024).unwrap_err();
        let text = e.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(
            text.starts_with("need 10,467 file descriptors for 5,000 domains (2 each, plus 467 for sockets, connections and margin) but the open-file limit is 1,024: raise LimitNOFILE="),
            "{text}"
        );
        assert!(text.contains("ulimit -n"), "{text}");
    }

    #[test]
    fn a_domain_failing_for_want_of_a_resource_names_it() {
        let io = |n: i32, action: &str| {
            format!(
                "cannot {action} /var/lib/domsync/domains/t1.redb: {}",
                std::io::Error::from_raw_os_error(n)
            )
        };
        let emfile = resource_advice(&io(libc::EMFILE, "open")).unwrap();
        assert!(emfile.contains("LimitNOFILE="), "{emfile}");
        let threads = resource_advice(&io(libc::EAGAIN, "start the writer thread for")).unwrap();
        assert!(threads.contains("TasksMax="), "{threads}");
        let memory = resource_advice(&io(libc::ENOMEM, "open")).unwrap();
        assert!(memory.contains("out of memory"), "{memory}");
        assert_eq!(resource_advice(&io(libc::EACCES, "open")), None);
        assert_eq!(resource_advice("metadata row is missing"), None);
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1_000), "1,000");
        assert_eq!(group(10_240), "10,240");
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(group(u64::MAX), "18,446,744,073,709,551,615");
    }

    #[test]
    fn out_of_descriptors_is_named_and_other_errors_keep_their_advice() {
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(advice(&emfile, "check permissions").contains("LimitNOFILE"));
        let enfile = std::io::Error::from_raw_os_error(libc::ENFILE);
        assert!(advice(&enfile, "check permissions").contains("fs.file-max"));
        let eacces = std::io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(advice(&eacces, "check permissions"), "check permissions");
        // The admin socket's error names the descriptors, not the directory's permissions.
        let admin = crate::AdminServerError::Io {
            path: "/run/domsync/admin.sock".into(),
            source: emfile,
        }
        .to_string();
        assert!(admin.contains("out of file descriptors"), "{admin}");
        assert!(!admin.contains("permissions"), "{admin}");
    }
}
