//! Bounded waiting: every wait of a test polls a condition up to a deadline (a hang guard,
//! never a timing assertion), and free ports to listen on.

use std::time::{Duration, Instant};

/// Hang guard only: every wait polls a condition up to a deadline this far away.
pub const GUARD: Duration = Duration::from_secs(60);

/// A UDP port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Calls `attempt` every `every` until it gives `Ok`; past `guard`, panics with its last `Err`.
pub fn poll<T>(
    guard: Duration,
    every: Duration,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + guard;
    loop {
        match attempt() {
            Ok(v) => return v,
            Err(why) => assert!(Instant::now() < deadline, "{why}"),
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_returns_the_first_success() {
        let mut n = 0;
        let got = poll(GUARD, Duration::from_millis(1), || {
            n += 1;
            if n == 3 {
                Ok(n)
            } else {
                Err(format!("attempt {n}"))
            }
        });
        assert_eq!(got, 3);
    }

    #[test]
    #[should_panic(expected = "still failing")]
    fn poll_panics_with_the_last_error_past_the_guard() {
        poll::<()>(Duration::from_millis(20), Duration::from_millis(5), || {
            Err("still failing".into())
        });
    }

    #[test]
    fn free_ports_are_real_ports() {
        assert_ne!(free_port(), 0);
    }
}
