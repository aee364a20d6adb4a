//! The text form of a position, `term@node:lsn:chain` (chain as 8 hex digits), as the CLI
//! prints it and reads it back (`domsync kv watch --from`).

use domsync_proto::model::{Epoch, Lsn, NodeId, Position};

/// `term@node:lsn:chain`, e.g. `3@a:1042:0badc0de`; read back by [`parse_position`].
///
/// ```
/// use domsync_client::app::{parse_position, position_text};
/// use domsync_proto::model::{Epoch, Lsn, NodeId, Position};
/// let p = Position { epoch: Epoch { term: 3, node: NodeId::new("a")? }, lsn: Lsn(1042), chain: 0xbadc0de };
/// assert_eq!(position_text(&p), "3@a:1042:0badc0de");
/// assert_eq!(parse_position("3@a:1042:0badc0de")?, p);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn position_text(p: &Position) -> String {
    format!(
        "{}@{}:{}:{:08x}",
        p.epoch.term, p.epoch.node, p.lsn, p.chain
    )
}

/// Reads a position written by [`position_text`].
///
/// # Errors
/// One line naming the text and the expected form.
pub fn parse_position(text: &str) -> Result<Position, String> {
    let bad = |why: &str| {
        format!(
            "position {text:?}: {why}; expected TERM@NODE:LSN:CHAIN as printed by `domsync kv watch`, e.g. 3@a:1042:0badc0de"
        )
    };
    let (term, rest) = text.split_once('@').ok_or_else(|| bad("no @"))?;
    let mut parts = rest.rsplitn(3, ':');
    let (Some(chain), Some(lsn), Some(node)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("expected two ':'"));
    };
    let term: u64 = term.parse().map_err(|_| bad("bad term"))?;
    let lsn: u64 = lsn.parse().map_err(|_| bad("bad lsn"))?;
    if chain.len() != 8 {
        return Err(bad("the chain is 8 hex digits"));
    }
    let chain = u32::from_str_radix(chain, 16).map_err(|_| bad("bad chain"))?;
    let node = NodeId::new(node).map_err(|e| bad(&e.to_string()))?;
    Ok(Position {
        epoch: Epoch { term, node },
        lsn: Lsn(lsn),
        chain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_bad_text_is_refused() {
        let p = Position {
            epoch: Epoch {
                term: 0,
                node: NodeId::new("node-1.x").unwrap(),
            },
            lsn: Lsn(0),
            chain: 0,
        };
        assert_eq!(parse_position(&position_text(&p)).unwrap(), p);
        for bad in [
            "",
            "1@a:2",
            "x@a:1:00000000",
            "1@a:1:0",
            "1@:1:00000000",
            "1a:1:00000000",
        ] {
            assert!(parse_position(bad).is_err(), "{bad}");
        }
    }
}
