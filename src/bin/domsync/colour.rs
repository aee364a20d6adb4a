//! Colour for tables read by people: only when stdout is a terminal, `NO_COLOR` is unset or
//! empty (<https://no-color.org>) and `TERM` is not `dumb`. Piped or redirected output never
//! carries escape codes.

use std::io::IsTerminal as _;

const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";

/// Whether to colour what goes to stdout now.
pub fn stdout_wants_colour() -> bool {
    wants_colour(
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
        std::env::var_os("TERM").as_deref(),
    )
}

fn wants_colour(
    terminal: bool,
    no_color: Option<&std::ffi::OsStr>,
    term: Option<&std::ffi::OsStr>,
) -> bool {
    terminal
        && no_color.is_none_or(|v| v.is_empty())
        && term.is_none_or(|t| t != std::ffi::OsStr::new("dumb"))
}

/// The status table coloured: headings bold, `serving` green, `waiting` and warnings
/// yellow, failures red. The text is unchanged apart from the escape codes.
pub fn paint_status(table: &str) -> String {
    let mut out = String::with_capacity(table.len() + 64);
    for line in table.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        let painted = if body.starts_with("DOMAIN ") || body.starts_with("node ") {
            format!("{BOLD}{body}{RESET}")
        } else if body.starts_with("WARNING:") {
            format!("{YELLOW}{body}{RESET}")
        } else if let Some(at) = body.find("FAILED") {
            format!("{}{RED}{}{RESET}", &body[..at], &body[at..])
        } else if let Some(at) = body.find("  waiting") {
            format!("{}{YELLOW}{}{RESET}", &body[..at], &body[at..])
        } else if let Some(at) = body.find("  serving") {
            format!("{}{GREEN}{}{RESET}", &body[..at], &body[at..])
        } else {
            body.to_owned()
        };
        out.push_str(&painted);
        out.push_str(nl);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(wants_colour(true, None, Some(OsStr::new("xterm"))));
        assert!(wants_colour(true, Some(OsStr::new("")), None));
        assert!(!wants_colour(false, None, Some(OsStr::new("xterm"))));
        assert!(!wants_colour(true, Some(OsStr::new("1")), None));
        assert!(!wants_colour(true, None, Some(OsStr::new("dumb"))));
    }

    #[test]
    fn painting_only_adds_escape_codes() {
        let table = "node a\nDOMAIN  ROLE\nt1  active  1  0  serving\nt2  -  waiting: x\nt3  FAILED: y\nWARNING: z\n";
        let painted = paint_status(table);
        assert!(painted.contains("\x1b[32m  serving"), "{painted:?}");
        let stripped = painted
            .replace(RESET, "")
            .replace(BOLD, "")
            .replace(RED, "")
            .replace(GREEN, "")
            .replace(YELLOW, "");
        assert_eq!(stripped, table);
    }
}
